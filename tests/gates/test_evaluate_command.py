"""manage.py evaluate on the output of a real k6 run: the table, and the exit status CI acts on."""

from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from gates.models import Validation


def run_evaluate(path, build="b-1", *extra):
    out, err = StringIO(), StringIO()
    args = [
        "evaluate",
        str(path),
        "--project",
        "wedsync-web",
        "--environment",
        "staging",
        "--build",
        build,
        "--git-hash",
        "d" * 40,
        *extra,
    ]
    try:
        call_command(*args, stdout=out, stderr=err)
    except SystemExit as exit_:
        return exit_.code, out.getvalue(), err.getvalue()
    return 0, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("output", ["summary_export", "handle_summary", "ndjson"])
def test_a_build_within_its_limits_is_allowed_and_exits_zero(k6_outputs, add_rule, output):
    add_rule("http_req_duration", threshold="p(95)<2000")
    code, out, _ = run_evaluate(getattr(k6_outputs, output))

    assert code == 0
    assert "rule" in out and "observed" in out and "verdict" in out and "reason" in out
    assert "http_req_duration: p(95)<2000" in out
    assert "deployment allowed" in out
    assert Validation.objects.get().status == "passed"


@pytest.mark.parametrize("output", ["summary_export", "handle_summary", "ndjson"])
def test_a_build_over_its_limit_is_blocked_and_exits_one(k6_outputs, add_rule, output):
    add_rule("http_req_duration", threshold="p(95)<1")
    code, out, _ = run_evaluate(getattr(k6_outputs, output))

    assert code == 1
    assert "deployment BLOCKED" in out and "above the limit 1 ms" in out


def test_a_submetric_the_summary_does_not_contain_is_an_error_not_a_pass(k6_outputs, add_rule, production):
    # The script declares no threshold on http_req_duration{name:rsvp}, so k6's summary has no
    # such submetric; the raw points do. Production is here for its fail-closed policy; its
    # staging-pass requirement (which `evaluate` obeys like every way in) is beside the point.
    production.require_staging_pass = False
    production.save(update_fields=["require_staging_pass"])
    add_rule("http_req_duration{name:rsvp}", threshold="p(95)<2000")
    code, out, _ = run_evaluate(k6_outputs.summary_export, "from-summary", "--environment", "production")
    assert code == 1 and "error" in out and "rsvp" in out

    code, out, _ = run_evaluate(k6_outputs.ndjson, "from-ndjson", "--environment", "production")
    assert code == 0


def test_repeating_a_build_prints_its_recorded_outcome(k6_outputs, add_rule):
    add_rule("http_req_duration", threshold="p(95)<1")
    run_evaluate(k6_outputs.ndjson)
    code, _, err = run_evaluate(k6_outputs.summary_export)
    assert code == 1 and "already evaluated" in err
    assert Validation.objects.count() == 1


def test_unreadable_results_are_a_usage_error_that_names_the_file(project, tmp_path):
    bad = tmp_path / "k6.ndjson"
    bad.write_text(
        '{"type":"Point","metric":"http_reqs","data":{"time":"2026-01-01T00:00:00Z","value":1}}\n{oops\n'
    )
    with pytest.raises(CommandError) as error:
        run_evaluate(bad)
    assert error.value.returncode == 2
    assert "k6.ndjson" in str(error.value) and "line 2" in str(error.value)
    assert not Validation.objects.exists()


def test_an_unknown_project_is_a_usage_error(db, tmp_path):
    with pytest.raises(CommandError) as error:
        run_evaluate(tmp_path / "missing.json")
    assert error.value.returncode == 2 and "wedsync-web" in str(error.value)


def test_production_without_a_staging_pass_is_refused_from_the_command_line_too(k6_outputs, production):
    code, out, _ = run_evaluate(k6_outputs.ndjson, "prod-1", "--environment", "production")
    assert code == 1 and "requires a passed staging validation" in out
