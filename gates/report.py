"""The check table, as text for terminals and as Markdown for GitHub.

The text table and the summary line come from :mod:`perfgate_cli.table`: the CLI installs without
the server, so the shared rendering lives in its distribution and the server imports it from there.
"""

from __future__ import annotations

from perfgate_cli.table import COLUMNS, MAX_WIDTH, check_table, format_cell, summary_line

__all__ = ["check_table", "markdown_notices", "markdown_table", "markdown_text", "summary_line"]


def _markdown_cell(key: str, value) -> str:
    text = format_cell(key, value) if key not in MAX_WIDTH else ("—" if value is None else str(value))
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
    header = (
        markdown_notices(notices)
        + "| "
        + " | ".join(title for _, title in COLUMNS)
        + " |\n|"
        + "---|" * len(COLUMNS)
        + "\n"
    )
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
