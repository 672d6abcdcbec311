"""The check table people read in a terminal: the CLI, and on the server `manage.py evaluate` and the demo.

Pure code on plain dicts in the API's shape (``rule, observed, baseline, changePct, limit,
verdict, reason``) and the validation's ``notices`` (lines shown above the checks, e.g. "relative
rules are not active: …"), so every caller prints the same table. It lives in the CLI's
distribution because the CLI installs without the server; the server imports it from here.
"""

from __future__ import annotations

COLUMNS = (
    ("rule", "rule"),
    ("observed", "observed"),
    ("baseline", "baseline"),
    ("changePct", "change"),
    ("limit", "limit"),
    ("verdict", "verdict"),
    ("reason", "reason"),
)
MAX_WIDTH = {"rule": 48, "reason": 90}


def format_cell(key: str, value) -> str:
    """One value as the table shows it: numbers rounded, long rules and reasons cut with an ellipsis."""
    if value is None:
        return "—"
    if key == "changePct":
        return f"{value:+.1f}%"
    if isinstance(value, float):
        if value.is_integer() and key in ("observed", "baseline", "limit"):
            return f"{value:,.0f}"
        return f"{value:.4g}" if abs(value) < 1 else f"{value:,.1f}"
    text = str(value)
    width = MAX_WIDTH.get(key)
    return text if width is None or len(text) <= width else text[: width - 1] + "…"


def notice_lines(notices) -> list[str]:
    """Each notice as the line shown above a check table: ``! relative rules are not active: …``."""
    return [f"! {' '.join(str(notice).split())}" for notice in notices or ()]


def check_table(checks: list[dict], notices=()) -> str:
    """An aligned text table, one row per check, with the notices above it: a gate that checks
    less than it seems to (relative rules without a baseline) says so where the checks are read."""
    rows = [[title for _, title in COLUMNS]]
    rows += [[format_cell(key, check.get(key)) for key, _ in COLUMNS] for check in checks]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join([*notice_lines(notices), *lines])


def summary_line(validation: dict) -> str:
    """One line CI logs can be grepped for."""
    allowed = {True: "deployment allowed", False: "deployment BLOCKED", None: "pending"}[
        validation.get("deploymentAllowed")
    ]
    line = (
        f"{validation.get('project')}/{validation.get('environment')} build {validation.get('buildId')}: "
        f"status {validation.get('status')}, verdict {validation.get('verdict') or '—'} → {allowed}"
    )
    if validation.get("wouldBlock") and validation.get("deploymentAllowed"):
        line += " (shadow mode: enforcement would have blocked)"
    return line
