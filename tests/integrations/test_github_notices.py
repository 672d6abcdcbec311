"""The GitHub check run summary shows the validation's notices above its check table."""

from gates.models import Validation
from gates.services import validation_evaluate
from integrations.github.report import summary_markdown
from tests.factories import make_results, make_validation

NOTICE = "relative rules are not active: no baseline since 2026-11-02 14:03 UTC"


def test_the_check_run_summary_puts_the_notices_above_the_table(project, staging, actor, add_rule):
    add_rule("http_req_duration", aggregation="p(95)", warn_pct=5, fail_pct=10, floor=5)
    validation, _ = make_validation(
        project=project, environment=staging, build_id="b-1", git_hash="a" * 40, actor=actor
    )
    validation = validation_evaluate(validation=validation, results=make_results(p95=200.0), actor=actor)
    report = {**validation.report, "notices": [NOTICE]}
    Validation.objects.filter(pk=validation.pk).update(report=report)
    validation.refresh_from_db()

    summary = summary_markdown(validation, max_bytes=65_000)
    assert f"**⚠ {NOTICE}**" in summary
    assert summary.index(NOTICE) < summary.index("| rule |")
