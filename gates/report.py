"""The check table people read in a terminal: `manage.py evaluate`, the demo and the CLI.

Pure code on plain dicts in the API's shape (``rule, observed, baseline, changePct, limit,
verdict, reason``), so every caller prints the same table.
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


def _cell(key: str, value) -> str:
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


def check_table(checks: list[dict]) -> str:
    """An aligned text table, one row per check."""
    rows = [[title for _, title in COLUMNS]]
    rows += [[_cell(key, check.get(key)) for key, _ in COLUMNS] for check in checks]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


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


def _markdown_cell(key: str, value) -> str:
    text = _cell(key, value) if key not in MAX_WIDTH else ("—" if value is None else str(value))
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def markdown_table(checks: list[dict], *, max_bytes: int) -> str:
    """The check table as GitHub Markdown, at most ``max_bytes`` (rows that do not fit are
    counted in a last line instead of being cut in half)."""
    header = "| " + " | ".join(title for _, title in COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"
    rows = [
        "| " + " | ".join(_markdown_cell(key, check.get(key)) for key, _ in COLUMNS) + " |\n"
        for check in checks
    ]
    table, size = header, len(header.encode())
    for shown, row in enumerate(rows):
        rest = f"\n… and {len(rows) - shown} more checks (see perfgate).\n"
        if size + len(row.encode()) + len(rest.encode()) > max_bytes:
            return table + rest
        table += row
        size += len(row.encode())
    return table
