"""What a notification says: a Slack message (Block Kit, for an incoming webhook) and an email.

Pure code on plain data. A notification is a list of items (the dicts that
``integrations.notify.events`` stores and delivery renders), one per event; a burst coalesced for one
channel is one list and becomes one message. Every piece of item text is user text (titles carry
commit messages, reasons carry rule expressions, builds are whatever CI sent), so it is escaped for
where it lands and cut to Slack's limits: Slack refuses a payload over any limit whole, and then the
people it was for hear nothing.

Lengths are counted in UTF-16 code units, never fewer than Python's characters: an emoji in a commit
message must not push a block over a limit that Slack measures differently from ``len``.
"""

from __future__ import annotations

import html
import unicodedata
from dataclasses import dataclass
from urllib.parse import urlsplit

from perfgate_cli.numbers import format_change, format_value
from perfgate_cli.numbers import format_p as _format_p

__all__ = [
    "BUTTON_TEXT",
    "FIELD_TEXT",
    "HEADER_TEXT",
    "MAX_BLOCKS",
    "MAX_FIELDS",
    "SECTION_TEXT",
    "URL",
    "EmailContent",
    "email_message",
    "format_change",
    "format_value",
    "headline",
    "safe_subject",
    "slack_message",
]

# Slack's Block Kit limits: https://api.slack.com/reference/block-kit/blocks
MAX_BLOCKS = 50
SECTION_TEXT = 3000
HEADER_TEXT = 150
FIELD_TEXT = 2000
MAX_FIELDS = 10
BUTTON_TEXT = 75
URL = 3000
MAX_ACTIONS = 25
FALLBACK_TEXT = 3000

SUBJECT_TEXT = 200
EMAIL_MAX_ITEMS = 500
# A list of several items shows this many checks of each: 500 items of 200 checks would be megabytes.
EMAIL_CHECKS_PER_ITEM = 20

RULE_WIDTH = 40
TITLE_WIDTH = 150
REASON_WIDTH = 200
PEOPLE_WIDTH = 100

BULLET = "• "

# event: (what one is called, how it is counted, what several of one project are called)
EVENTS = {
    "blocked": ("Blocked", "blocked", "builds blocked"),
    "bypass_requested": ("Bypass requested", "bypass requested", "bypass requests"),
    "bypass_approved": ("Bypass approved", "bypass approved", "bypasses approved"),
    "bypass_rejected": ("Bypass rejected", "bypass rejected", "bypasses rejected"),
    "degraded": ("Production degraded", "degraded", "degradations"),
    "rollback": ("Rollback", "rollback", "rollbacks"),
    "blind": ("Gate blind", "blind", "blind gates"),
}
VERDICT_IN_HEADLINE = {"blocked", "blind"}
COLUMNS = ("rule", "verdict", "observed", "baseline", "change", "limit", "")
NUMERIC = {"observed", "baseline", "change", "limit", ""}


@dataclass(frozen=True)
class EmailContent:
    """An email ready for ``EmailMultiAlternatives``: one-line subject, text body, HTML body."""

    subject: str
    text: str
    html: str


# --- numbers --------------------------------------------------------------------------------------


# --- text -----------------------------------------------------------------------------------------


def _length(text: str) -> int:
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def _cut(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` UTF-16 units, ending with "…" when it was cut."""
    if _length(text) <= limit:
        return text
    kept = text[: limit - 1]
    if _length(kept) == len(kept):
        return kept + "…"
    kept, used = [], 0
    for char in text[:limit]:
        width = 2 if ord(char) > 0xFFFF else 1
        if used + width > limit - 1:
            break
        kept.append(char)
        used += width
    return "".join(kept) + "…"


def _is_control(char: str) -> bool:
    # Cc: C0/C1 controls (CR, LF, ESC…); Cf: invisible format characters (bidi overrides);
    # Zl/Zp: Unicode line and paragraph separators; Cs: lone surrogates.
    return unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp", "Cs")


def _without_controls(text: str) -> str:
    for char in set(text):
        if not char.isprintable() and _is_control(char):
            text = text.replace(char, " ")
    return text


def _one_line(value) -> str:
    """User text on one line: controls become spaces, whitespace collapses."""
    if value is None:
        return ""
    # Only words that are not printable are looked at character by character: most never are.
    words = [word if word.isprintable() else _without_controls(word) for word in str(value).split()]
    return " ".join(" ".join(words).split())


def _lines(value) -> str:
    """User text that keeps its line breaks; every other control becomes a space."""
    if value is None:
        return ""
    lines = str(value).replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "\n".join(_one_line(line) for line in lines).strip("\n")


def _first_line(value) -> str:
    return next((line for line in _lines(value).split("\n") if line), "")


def safe_subject(text) -> str:
    """A mail subject that cannot carry a header: CR, LF and every other control become spaces,
    whitespace collapses, at most 200 characters."""
    return _cut(_one_line(text), SUBJECT_TEXT)


def safe_url(url) -> str | None:
    """``url`` when it is an absolute http(s) URL that fits Slack's limit, else None: anything else
    (``javascript:``, a relative path, whitespace) is shown as text, never as a link."""
    if not isinstance(url, str):
        return None
    url = url.strip()
    # isprintable() is False for every control, separator and unassigned character but the space.
    if not url or _length(url) > URL or not url.isprintable() or " " in url:
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return None
    return url


# --- items ----------------------------------------------------------------------------------------


def _get(item: dict, key: str) -> str:
    return _one_line(item.get(key))


def _checks(item: dict) -> list[dict]:
    checks = item.get("checks")
    return [check for check in checks if isinstance(check, dict)] if isinstance(checks, list) else []


def _people(item: dict) -> list[str]:
    people = item.get("people")
    if not isinstance(people, list):
        return []
    return [name for name in (_one_line(person) for person in people) if name]


def _links(item: dict) -> list[tuple[str, str]]:
    """(text, url) of every link, as given (the URL may be unsafe: see ``safe_url``)."""
    links = item.get("links")
    if not isinstance(links, list):
        return []
    return [
        (_one_line(link.get("text")) or "Open", _one_line(link.get("url")))
        for link in links
        if isinstance(link, dict) and _one_line(link.get("url"))
    ]


def _event(item: dict) -> str:
    return _get(item, "event")


def _event_counted(event: str) -> str:
    return EVENTS[event][1] if event in EVENTS else (event.replace("_", " ") or "other")


def _where(project: str, environment: str) -> str:
    return "/".join(part for part in (project, environment) if part)


def _what(item: dict) -> str:
    event = _event(item)
    label = EVENTS[event][0] if event in EVENTS else (event.replace("_", " ").capitalize() or "Notification")
    # A rollback or a bypass carries the verdict of the build it is about, which would mislead here.
    verdict = _get(item, "verdict") if event in VERDICT_IN_HEADLINE else ""
    return f"{label} ({verdict})" if verdict else label


def headline(items: list[dict]) -> str:
    """What the message is about, on one line and uncut: ``Blocked (fail) · wedsync-web/production ·
    gha-1`` for one item, ``20 builds blocked · wedsync-web/production`` for several."""
    if not items:
        raise ValueError("a notification needs at least one item")
    if len(items) == 1:
        item = items[0]
        where = _where(_get(item, "project"), _get(item, "environment"))
        parts = [_what(item), where, _get(item, "build")]
        if not where and not parts[2]:
            parts.append(_get(item, "title"))
        return " · ".join(part for part in parts if part)
    events = {_event(item) for item in items}
    projects = {_get(item, "project") for item in items}
    environments = {_get(item, "environment") for item in items}
    (event,) = events if len(events) == 1 else ("",)
    what = f"{len(items)} {EVENTS[event][2]}" if event in EVENTS else f"{len(items)} notifications"
    where = ""
    if len(projects) == 1:
        (project,) = projects
        (environment,) = environments if len(environments) == 1 else ("",)
        where = _where(project, environment) if project else ""
    return f"{what} · {where}" if where else what


def _counts(items: list[dict]) -> str:
    """``3 blocked · 2 bypass requested``, in the order of ``EVENTS``, then others as they come."""
    counts: dict[str, int] = {}
    for item in items:
        counts[_event(item)] = counts.get(_event(item), 0) + 1
    order = [event for event in EVENTS if event in counts] + [e for e in counts if e not in EVENTS]
    return " · ".join(f"{counts[event]} {_event_counted(event)}" for event in order)


def _table_rows(checks: list[dict], rule_width: int) -> list[list[str]]:
    """The header and one row of cells per check; the p column only when a check has a p value."""
    rows = [list(COLUMNS)]
    for check in checks:
        unit = check.get("unit")
        rows.append(
            [
                _cut(_one_line(check.get("rule")), rule_width),
                _cut(_one_line(check.get("verdict")), 16),
                format_value(check.get("observed"), unit),
                format_value(check.get("baseline"), unit),
                format_change(check.get("changePct")),
                format_value(check.get("limit"), unit),
                _format_p(check.get("pValue")),
            ]
        )
    if not any(row[-1] for row in rows[1:]):
        rows = [row[:-1] for row in rows]
    return rows


def _aligned(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            cell.rjust(width) if title in NUMERIC else cell.ljust(width)
            for cell, width, title in zip(row, widths, COLUMNS, strict=False)
        ).rstrip()
        for row in rows
    ]


def _more(count: int, what: str) -> str:
    return f"…and {count} more {what}"


# --- Slack ----------------------------------------------------------------------------------------


def _escape(text: str) -> str:
    """Slack's three control characters, so user text never becomes a mention or a link."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _mrkdwn(text: str, limit: int) -> str:
    """User text escaped for mrkdwn, in at most ``limit`` units, never ending in half an entity."""
    escaped = _escape(text)
    if _length(escaped) <= limit:
        return escaped
    kept = _cut(escaped, limit)[:-1]
    amp = kept.rfind("&")
    if amp != -1 and ";" not in kept[amp:]:
        kept = kept[:amp]
    return kept + "…"


def _slack_link(url: str, text: str) -> str:
    url = url.replace("&", "&amp;").replace("<", "%3C").replace(">", "%3E").replace("|", "%7C")
    return f"<{url}|{_escape(_one_line(text.replace('|', ' ').replace('>', ' ')))}>"


def _section(text: str) -> dict:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def _slack_table(checks: list[dict]) -> str:
    """The checks as a code block of at most ``SECTION_TEXT``; rows that do not fit are counted in
    a last line. A backtick in a rule becomes a quote: user text never closes the block."""
    lines = [_escape(line.replace("`", "'")) for line in _aligned(_table_rows(checks, RULE_WIDTH))]
    header, rows = lines[0], lines[1:]
    fences = _length("```\n") + _length("\n```")
    size = fences + _length(header)
    shown = 0
    for row in rows:
        left_after = len(rows) - shown - 1
        tail = _length("\n" + _more(left_after, "checks")) if left_after else 0
        if size + 1 + _length(row) + tail > SECTION_TEXT:
            break
        size += 1 + _length(row)
        shown += 1
    text = "```\n" + "\n".join([header, *rows[:shown]]) + "\n```"
    if shown < len(rows):
        text += "\n" + _more(len(rows) - shown, "checks")
    return text


def _slack_field(name: str, value: str) -> dict:
    prefix = f"*{name}*\n"
    return {"type": "mrkdwn", "text": prefix + _mrkdwn(value, FIELD_TEXT - _length(prefix))}


def _slack_buttons(item: dict) -> list[dict]:
    buttons = []
    for text, url in _links(item):
        url = safe_url(url)
        if url is None:
            continue
        button = {
            "type": "button",
            "action_id": f"perfgate-link-{len(buttons)}",
            "text": {"type": "plain_text", "text": _cut(text, BUTTON_TEXT), "emoji": True},
            "url": url,
        }
        if text.lower() == "approve":
            button["style"] = "primary"
        buttons.append(button)
    return buttons[:MAX_ACTIONS]


def _slack_one(item: dict) -> list[dict]:
    blocks = [{"type": "header", "text": {"type": "plain_text", "text": _cut(headline([item]), HEADER_TEXT)}}]
    verdict_status = " · ".join(part for part in (_get(item, "verdict"), _get(item, "status")) if part)
    facts = [
        ("Project", _get(item, "project")),
        ("Environment", _get(item, "environment")),
        ("Build", _get(item, "build")),
        ("Verdict / status", verdict_status),
        ("At", _get(item, "at")),
    ]
    fields = [_slack_field(name, value) for name, value in facts if value]
    if fields:
        blocks.append({"type": "section", "fields": fields[:MAX_FIELDS]})
    checks = _checks(item)
    if checks:
        blocks.append(_section(_slack_table(checks)))
    reason = _lines(item.get("reason"))
    if reason:
        blocks.append(_section("*Reason*\n" + _mrkdwn(reason, SECTION_TEXT - _length("*Reason*\n"))))
    people = _people(item)
    if people:
        blocks.append(_section(_mrkdwn("May approve: " + ", ".join(people), SECTION_TEXT)))
    buttons = _slack_buttons(item)
    if buttons:
        blocks.append({"type": "actions", "elements": buttons})
    return blocks


def _slack_line(item: dict, room: int) -> str:
    """One item on one line: its title (a link to its first link) and the first line of its reason."""
    title = _cut(_get(item, "title") or headline([item]), TITLE_WIDTH)
    tail = ""
    reason = _cut(_one_line(_first_line(item.get("reason"))), REASON_WIDTH)
    if reason:
        tail += " — " + _escape(reason)
    people = _people(item)
    if people:
        tail += " (may approve: " + _escape(_cut(", ".join(people), PEOPLE_WIDTH)) + ")"
    urls = [url for url in (safe_url(url) for _, url in _links(item)) if url]
    if urls:
        linked = BULLET + _slack_link(urls[0], title) + tail
        if _length(linked) <= room:
            return linked
    return BULLET + _escape(title) + tail


def _slack_several(items: list[dict]) -> list[dict]:
    """A header, the counts per event, and one line per item packed into sections; what does not
    fit in ``MAX_BLOCKS`` is counted in the last section."""
    blocks = [
        {"type": "header", "text": {"type": "plain_text", "text": _cut(headline(items), HEADER_TEXT)}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": _mrkdwn(_counts(items), SECTION_TEXT)}]},
    ]
    budget = MAX_BLOCKS - len(blocks)
    reserve = _length("\n" + _more(len(items), "notifications"))
    room = SECTION_TEXT - reserve
    sections: list[list[str]] = []
    current: list[str] = []
    size = 0
    shown = len(items)
    for index, item in enumerate(items):
        line = _slack_line(item, room)
        added = _length(line) + (1 if current else 0)
        if size + added > room:
            if len(sections) + 1 == budget:
                shown = index
                break
            sections.append(current)
            current, size = [line], _length(line)
            continue
        current.append(line)
        size += added
    if shown < len(items):
        current.append(_more(len(items) - shown, "notifications"))
    sections.append(current)
    return blocks + [_section("\n".join(lines)) for lines in sections]


def slack_message(items: list[dict]) -> dict:
    """An incoming-webhook payload for one item or a coalesced burst of them, within every Block Kit
    limit; ``text`` is the fallback notifications and old clients show."""
    fallback = headline(items)
    blocks = _slack_one(items[0]) if len(items) == 1 else _slack_several(items)
    reason = _first_line(items[0].get("reason"))
    if reason:
        fallback += "\n" + reason
    return {"text": _mrkdwn(fallback, FALLBACK_TEXT), "blocks": blocks}


# --- email ----------------------------------------------------------------------------------------


def _text_item(item: dict, *, max_checks: int | None, indent: str = "") -> list[str]:
    lines = []
    verdict_status = " · ".join(part for part in (_get(item, "verdict"), _get(item, "status")) if part)
    for name, value in (
        ("Project", _get(item, "project")),
        ("Environment", _get(item, "environment")),
        ("Build", _get(item, "build")),
        ("Verdict / status", verdict_status),
        ("At", _get(item, "at")),
    ):
        if value:
            lines.append(f"{name}: {value}")
    reason = _lines(item.get("reason"))
    if reason:
        lines += ["", "Reason:", *reason.split("\n")]
    checks = _checks(item)
    if checks:
        shown = checks if max_checks is None else checks[:max_checks]
        lines += ["", "Checks:", *_aligned(_table_rows(shown, 80))]
        if len(shown) < len(checks):
            lines.append(_more(len(checks) - len(shown), "checks"))
    people = _people(item)
    if people:
        lines += ["", "May approve: " + ", ".join(people)]
    links = _links(item)
    if links:
        lines += ["", *(f"{text}: {url}" for text, url in links)]
    return [indent + line if line else "" for line in lines]


def _html_table(checks: list[dict]) -> str:
    rows = _table_rows(checks, 120)

    def cells(tag: str, row: list[str]) -> str:
        return "".join(
            f'<{tag} style="text-align:{"right" if title in NUMERIC else "left"};padding:2px 8px">'
            f"{html.escape(cell)}</{tag}>"
            for cell, title in zip(row, COLUMNS, strict=False)
        )

    head = cells("th", rows[0])
    body = "".join(f"<tr>{cells('td', row)}</tr>\n" for row in rows[1:])
    return (
        '<table style="border-collapse:collapse;font-family:monospace;font-size:13px" border="1">\n'
        f"<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>\n"
    )


def _html_link(text: str, url: str) -> str:
    safe = safe_url(url)
    if safe is None:
        return f"{html.escape(text)}: {html.escape(url)}"
    return f'<a href="{html.escape(safe)}">{html.escape(text)}</a>'


def _html_item(item: dict, *, max_checks: int | None) -> str:
    parts = []
    verdict_status = " · ".join(part for part in (_get(item, "verdict"), _get(item, "status")) if part)
    facts = [
        f"<strong>{name}</strong>: {html.escape(value)}"
        for name, value in (
            ("Project", _get(item, "project")),
            ("Environment", _get(item, "environment")),
            ("Build", _get(item, "build")),
            ("Verdict / status", verdict_status),
            ("At", _get(item, "at")),
        )
        if value
    ]
    if facts:
        parts.append("<p>" + "<br>\n".join(facts) + "</p>\n")
    reason = _lines(item.get("reason"))
    if reason:
        parts.append(f'<p style="white-space:pre-wrap">{html.escape(reason)}</p>\n')
    checks = _checks(item)
    if checks:
        shown = checks if max_checks is None else checks[:max_checks]
        parts.append(_html_table(shown))
        if len(shown) < len(checks):
            parts.append(f"<p>{html.escape(_more(len(checks) - len(shown), 'checks'))}</p>\n")
    people = _people(item)
    if people:
        parts.append(f"<p>May approve: {html.escape(', '.join(people))}</p>\n")
    links = _links(item)
    if links:
        parts.append("<p>" + " · ".join(_html_link(text, url) for text, url in links) + "</p>\n")
    return "".join(parts)


def email_message(items: list[dict]) -> EmailContent:
    """The same notification as an email: one item in full; several as a list (at most
    ``EMAIL_MAX_ITEMS``, each with at most ``EMAIL_CHECKS_PER_ITEM`` checks), the rest counted."""
    title = headline(items)
    subject = safe_subject(f"[perfgate] {title}")
    if len(items) == 1:
        text_lines = [title, "", *_text_item(items[0], max_checks=None)]
        body = _html_item(items[0], max_checks=None)
    else:
        shown = items[:EMAIL_MAX_ITEMS]
        text_lines = [title, _counts(items)]
        entries = []
        for number, item in enumerate(shown, start=1):
            item_title = _get(item, "title") or headline([item])
            text_lines += ["", f"{number}. {item_title}"]
            text_lines += _text_item(item, max_checks=EMAIL_CHECKS_PER_ITEM, indent="   ")
            entries.append(
                f"<li><h3>{html.escape(item_title)}</h3>\n"
                f"{_html_item(item, max_checks=EMAIL_CHECKS_PER_ITEM)}</li>\n"
            )
        body = f"<p>{html.escape(_counts(items))}</p>\n<ol>\n{''.join(entries)}</ol>\n"
        if len(shown) < len(items):
            more = _more(len(items) - len(shown), "notifications")
            text_lines += ["", more]
            body += f"<p>{html.escape(more)}</p>\n"
    document = (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{html.escape(subject)}</title></head>\n"
        '<body style="font-family:sans-serif;font-size:14px">\n'
        f"<h2>{html.escape(title)}</h2>\n{body}</body></html>\n"
    )
    return EmailContent(subject=subject, text="\n".join(text_lines) + "\n", html=document)
