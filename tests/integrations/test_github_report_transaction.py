"""GitHub hears about a validation through the gate's registry, in the transaction of the
change: the report and the change commit together or not at all."""

from __future__ import annotations

import pytest
from django.db import transaction

from gates.audit import Actor
from gates.models import Validation
from gates.services import validation_block
from integrations.models import OutboundCall
from tests.factories import make_validation

ACTOR = Actor("user", "olivia-ops")
SHA = "3f4a1c2b9d8e7f60123456789abcdef012345678"


def test_the_outbox_rows_of_a_change_commit_with_it_and_vanish_with_its_rollback(
    project, staging, app_connection
):
    validation, _ = make_validation(
        project=project, environment=staging, build_id="b-1", git_hash=SHA, actor=ACTOR
    )
    before = OutboundCall.objects.count()
    with pytest.raises(ZeroDivisionError), transaction.atomic():
        validation_block(validation=validation, reason="Freeze.", actor=ACTOR)
        assert OutboundCall.objects.count() > before  # recorded inside the change's transaction
        1 / 0  # noqa: B018 - the process dies before the change commits
    assert OutboundCall.objects.count() == before
    assert Validation.objects.get(pk=validation.pk).status == Validation.Status.QUEUED

    validation_block(validation=validation, reason="Freeze.", actor=ACTOR)
    statuses = OutboundCall.objects.filter(kind="status").order_by("id")
    assert [call.payload["body"]["state"] for call in statuses] == ["pending", "failure"]
