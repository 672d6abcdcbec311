"""Calibration: storing what ``manage.py calibrate`` measured on its scenario."""

from __future__ import annotations

from django.db import transaction

from gates.audit import Actor, audit_record
from gates.errors import ServiceError
from gates.models import Environment, Scenario


@transaction.atomic
def scenario_calibrate(
    *, scenario: Scenario, environment: Environment, calibration: dict, actor: Actor
) -> Scenario:
    """Replace the scenario's calibration with a new one (``gates.calibration.calibration_document``)
    and audit it, the previous one included, in the same transaction.

    A calibration is a measurement, not a configuration edit: the scenario's ``updated_at`` and
    its config source are left alone, and apply_config never overwrites it.
    """
    if environment.project_id != scenario.project_id:
        raise ServiceError(f"Environment {environment} is not an environment of {scenario}.")
    if calibration.get("environment") != environment.name:
        raise ServiceError(
            f"The calibration was measured in {calibration.get('environment')!r}, not {environment.name!r}."
        )
    scenario = (
        Scenario.objects.select_for_update(no_key=True, of=("self",))
        .select_related("project")
        .get(pk=scenario.pk)
    )
    previous = scenario.calibration
    scenario.calibration = calibration
    scenario.save(update_fields=["calibration"])
    audit_record(
        action="scenario.calibrated",
        actor=actor,
        target=scenario,
        project=scenario.project.slug,
        environment=environment.name,
        reason=f"calibrate: {calibration.get('runs')} A/A runs",
        data={"before": previous or None, "after": calibration},
    )
    return scenario
