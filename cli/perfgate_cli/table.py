"""The check table people read in a terminal: the CLI, and on the server `manage.py evaluate` and the demo.

Pure code on plain dicts in the API's shape (``rule, observed, baseline, changePct, limit,
verdict, reason``) and the validation's ``notices`` (lines shown above the checks, e.g. "relative
rules are not active: …"), so every caller prints the same table. It lives in the CLI's
distribution because the CLI installs without the server; the server imports it from here.
"""

from __future__ import annotations

from perfgate_cli.numbers import NONE, format_change, format_measure, format_p

COLUMNS = (
    ("rule", "rule"),
    ("observed", "observed"),
    ("baseline", "baseline"),
    ("changePct", "change"),
    ("limit", "limit"),
    ("pValue", "p"),
    ("verdict", "verdict"),
    ("reason", "reason"),
)
MAX_WIDTH = {"rule": 48, "reason": 90}
MEASURED = ("observed", "baseline", "limit")


def columns(checks: list[dict]) -> tuple:
    """The columns a table of ``checks`` shows: the p column only when a test ran for one of them."""
    if any(check.get("pValue") is not None for check in checks):
        return COLUMNS
    return tuple(column for column in COLUMNS if column[0] != "pValue")


def format_cell(key: str, value, check: dict | None = None) -> str:
    """One value as the table shows it: measured values rounded and with the unit of the check's
    metric (``341.0 ms``, ``0.20 %``), changes signed, long rules and reasons cut with an ellipsis,
    one en dash for none."""
    check = check or {}
    if key in MEASURED:
        return format_measure(value, check.get("metric"), check.get("aggregation"))
    if key == "changePct":
        return format_change(value)
    if key == "pValue":
        return format_p(value)[2:] or NONE
    if value is None or value == "":
        return NONE
    text = " ".join(str(value).split())
    width = MAX_WIDTH.get(key)
    return text if width is None or len(text) <= width else text[: width - 1] + "…"


def notice_lines(notices) -> list[str]:
    """Each notice as the line shown above a check table: ``! relative rules are not active: …``."""
    return [f"! {' '.join(str(notice).split())}" for notice in notices or ()]


def check_table(checks: list[dict], notices=()) -> str:
    """An aligned text table, one row per check, with the notices above it: a gate that checks
    less than it seems to (relative rules without a baseline) says so where the checks are read."""
    shown = columns(checks)
    rows = [[title for _, title in shown]]
    rows += [[format_cell(key, check.get(key), check) for key, _ in shown] for check in checks]
    widths = [max(len(row[i]) for row in rows) for i in range(len(shown))]
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
        f"status {validation.get('status')}, verdict {validation.get('verdict') or NONE} → {allowed}"
    )
    if validation.get("status") == "bypassed":
        # A bypass keeps would-block (the gate did block): it is no shadow-mode figure.
        line += " (bypassed: the gate blocked it; an approved bypass let it through)"
    elif validation.get("wouldBlock") and validation.get("deploymentAllowed"):
        line += " (shadow mode: enforcement would have blocked)"
    return line
