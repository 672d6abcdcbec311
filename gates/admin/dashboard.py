"""The admin's index as a dashboard, above the list of apps: per project and environment a user may
see, the newest validations with their verdicts and a small chart of p(95) against the baseline,
pending bypass requests with who may still approve them, active watches, recent rollbacks, and
anything blind or broken. It only reads; every row links to its page, when the user may open it.

The gate's admin does not import the integrations: what they report as broken (a notification
channel Slack refused, an outbox call given up) comes from the problem sources integrations
register (``gates.registry.register_problem_source``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from django.urls import reverse

from gates import registry, selectors
from gates.admin.base import badge

TEMPLATE = "admin/gates/dashboard.html"
NONE = "\N{EN DASH}"  # one dash for none, as everywhere people read numbers
CHART_WIDTH, CHART_HEIGHT = 540, 225  # the history chart (720 by 300) at 75 %


@dataclass(frozen=True)
class Problem:
    """Something that leaves the gate blind or a message unsent: what it is, why, since when,
    and the page where it is fixed (empty when the user may not open it)."""

    project_id: int
    what: str
    detail: str = ""
    url: str = ""
    since: datetime | None = None


ProblemSource = Callable[..., list[Problem]]  # (user=, projects=) -> problems of those projects


def dashboard_index(site):
    """The admin's index view of ``site`` with the dashboard above the app list, behind the
    admin's own login check. Mount it at the admin's index URL, before the admin's URLs."""

    def index(request):
        sources = registry.problem_sources().values()
        response = site.index(request, extra_context={"dashboard": dashboard_panels(request.user, sources)})
        response.template_name = TEMPLATE
        return response

    return site.admin_view(index)


def dashboard_panels(user, problem_sources: Iterable[ProblemSource] = ()) -> list[dict]:
    """What the template shows: one panel per project, its numbers already written for people."""
    boards = selectors.dashboard_of(user)
    projects = [board.project for board in boards]
    problems: dict[int, list[Problem]] = {}
    for source in problem_sources:
        for problem in source(user=user, projects=projects):
            problems.setdefault(problem.project_id, []).append(problem)
    return [
        {
            "project": board.project,
            "url": admin_url(user, "gates", "project", board.project.pk),
            "environments": [_environment_panel(user, env) for env in board.environments],
            "problems": [
                *(_blind_rule(user, env, rule) for env in board.environments for rule in env.blind_rules),
                *problems.get(board.project.pk, []),
            ],
        }
        for board in boards
    ]


def _environment_panel(user, board: selectors.EnvironmentBoard) -> dict:
    environment = board.environment
    newest = board.validations[0] if board.validations else None
    return {
        "environment": environment,
        "url": admin_url(user, "gates", "environment", environment.pk),
        "policy": " · ".join(
            (
                "shadow mode" if environment.mode == environment.Mode.SHADOW else "enforced",
                "fail-closed" if environment.fail_closed else "fail-open",
            )
        ),
        "validations": [
            {
                "url": admin_url(user, "gates", "validation", v.pk),
                "build": v.build_id,
                "scenario": v.scenario.name if v.scenario else NONE,
                "status": badge(v.status),
                "verdict": badge(v.verdict),
                "key_value": milliseconds(v.key_value),
                "created_at": v.created_at,
                "reason": v.status_reason,
            }
            for v in board.validations
        ],
        "chart": None
        if newest is None
        else {
            "src": reverse("validation-chart", args=[newest.pk]),
            "url": admin_url(user, "gates", "validation", newest.pk),
            "alt": chart_text(board),
            "width": CHART_WIDTH,
            "height": CHART_HEIGHT,
        },
        "baseline": baseline_text(board),
        "bypasses": [
            {
                "url": admin_url(user, "gates", "bypassrequest", b.pk),
                "build": b.build_id,
                "requested_by": b.requested_by or NONE,
                "approvals": f"{len(b.approvals.all())} of {b.required_approvals}",
                "approvers": b.approvers,
                "expires_at": b.expires_at,
            }
            for b in board.bypasses
        ],
        "watches": [
            {
                "url": admin_url(user, "gates", "watch", w.pk),
                "build": w.validation.build_id,
                "state": w.get_state_display(),
                "probes": f"{w.probes_run} run, {w.failures} failed, {w.errors} errors",
                "ends_at": w.ends_at,
            }
            for w in board.watches
        ],
        "rollbacks": [
            {
                "url": admin_url(user, "gates", "rollback", r.pk),
                "build": r.validation.build_id,
                "state": badge(r.state),
                "trigger": r.get_trigger_display(),
                "created_at": r.created_at,
            }
            for r in board.rollbacks
        ],
    }


def milliseconds(value: float | None) -> str:
    """A latency as people read it: 900 ms, 42.5 ms, 3.25 ms; one dash for none."""
    if value is None:
        return NONE
    if abs(value) >= 100:
        return f"{value:,.0f} ms"
    return f"{value:.1f} ms" if abs(value) >= 10 else f"{value:.2f} ms"


def baseline_text(board: selectors.EnvironmentBoard) -> str:
    """The active baseline's p(95) and the spread of its runs, the noise the chart draws."""
    number = board.baseline
    if number is None:
        return "No baseline yet: relative rules cannot decide."
    runs = len(number.run_values)
    return (
        f"Baseline v{number.baseline.version}: p(95) {milliseconds(number.value)}, runs from "
        f"{milliseconds(number.minimum)} to {milliseconds(number.maximum)} ({runs} run{'s' * (runs != 1)})."
    )


def chart_text(board: selectors.EnvironmentBoard) -> str:
    """The chart in words (its text alternative): the builds shown here with their p(95), and the
    baseline."""
    builds = "; ".join(f"{v.build_id} {milliseconds(v.key_value)} ({v.status})" for v in board.validations)
    return (
        f"p(95) of http_req_duration in {board.environment.name}, newest first: {builds}. "
        f"{baseline_text(board)}"
    )


def _blind_rule(user, board: selectors.EnvironmentBoard, rule) -> Problem:
    return Problem(
        project_id=board.environment.project_id,
        what=f"{rule.label} ({rule.scenario.name}) has no baseline in {board.environment.name}",
        detail="The rule decides nothing until a passing build of the scenario becomes the baseline.",
        url=admin_url(user, "gates", "thresholdrule", rule.pk),
    )


def admin_url(user, app: str, model: str, pk) -> str:
    """The admin page of a row, or "" when the user may not open it (a link would end in a 403);
    problem sources outside the gate link the same way."""
    if not (user.has_perm(f"{app}.view_{model}") or user.has_perm(f"{app}.change_{model}")):
        return ""
    return reverse(f"admin:{app}_{model}_change", args=[pk])
