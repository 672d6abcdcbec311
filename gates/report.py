"""The check table, as text for terminals and as Markdown for GitHub, and the one number formatter.

The text table, the summary line and the number formatter (``format_value``, ``format_change``,
``format_p``, ``unit_of``: rounded values with their units, one en dash for none) come from
:mod:`perfgate_cli`: the CLI installs without the server, so the shared rendering lives in its
distribution and the server imports it from here. The API keeps full precision.
"""

from __future__ import annotations

from perfgate_cli.numbers import NONE, format_change, format_measure, format_p, format_value, unit_of
from perfgate_cli.table import MAX_WIDTH, check_table, columns, format_cell, summary_line

__all__ = [
    "NONE",
    "check_table",
    "format_change",
    "format_measure",
    "format_p",
    "format_value",
    "markdown_notices",
    "markdown_table",
    "markdown_text",
    "summary_line",
    "unit_of",
]


def _markdown_cell(key: str, check: dict) -> str:
    # Markdown wraps: rules and reasons are shown whole.
    text = (
        format_cell(key, check.get(key), check)
        if key not in MAX_WIDTH
        else " ".join(str(check.get(key) or NONE).split())
    )
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def markdown_text(text: str) -> str:
    """Plain text that Markdown shows as it is: one line, no markup (a notice is no HTML)."""
    text = " ".join(str(text).split())
    for char in "\\`*_[]<>#|":
        text = text.replace(char, "\\" + char)
    return text


def markdown_notices(notices) -> str:
    """The notices shown above a check table, one bold warning paragraph each."""
    return "".join(f"**⚠ {markdown_text(notice)}**\n\n" for notice in notices or ())


def markdown_table(checks: list[dict], *, max_bytes: int, notices=()) -> str:
    """The check table as GitHub Markdown with the notices above it, at most ``max_bytes`` (rows
    that do not fit are counted in a last line instead of being cut in half; notices always show)."""
    shown = columns(checks)
    header = (
        markdown_notices(notices)
        + "| "
        + " | ".join(title for _, title in shown)
        + " |\n|"
        + "---|" * len(shown)
        + "\n"
    )
    rows = ["| " + " | ".join(_markdown_cell(key, check) for key, _ in shown) + " |\n" for check in checks]
    table, size = header, len(header.encode())
    for shown, row in enumerate(rows):
        rest = f"\n… and {len(rows) - shown} more checks (see perfgate).\n"
        if size + len(row.encode()) + len(rest.encode()) > max_bytes:
            return table + rest
        table += row
        size += len(row.encode())
    return table
