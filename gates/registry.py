"""The one door out of the gate: what other code plugs into, filled at start-up.

The gate's core (models, services, selectors, execution, rules) imports nothing that talks to the
outside world. Instead, apps register here in their ``AppConfig.ready()``:

- **listeners** hear every state change of a validation, inside the transaction that made it, so
  what they record (an integration's outbox rows, a new baseline version) commits or rolls back
  with the change itself. A listener must only write to the database: it never calls out.
- **runners** run a scenario's tool for the worker (k6 and Locust are the gate's own; a GitHub
  workflow is registered by ``integrations``). A runner gets a ``gates.execution.ScenarioRun`` and
  returns a ``ResultSet``.
- **notifiers** hear every ``gates.models.Notice`` (a watch that keeps erroring, a rollback
  proposed, done or failed), inside the transaction that made it; like listeners they only
  record what they will send.
- **header sources** add HTTP headers to every request a load test or a probe sends to a
  validation's target (Vercel's protection bypass for protected previews). A source reads the
  database only; its values are secrets and go nowhere but the tool's requests.

- **problem sources** tell the admin's dashboard what is broken outside the gate (a notification
  channel Slack closed, outbox calls given up): ``source(user=, projects=)`` returns
  ``gates.admin.dashboard.Problem`` rows; it reads the database only.
- **config sections** apply a section of perfgate.yaml that belongs to an integration (``notify``:
  notification channels); the gate checks the section's shape and calls the section's applier
  inside ``apply_config``'s transaction.

This is an explicit registry, not Django signals: ``docs/architecture.md`` lists every
registration, and ``tests/test_architecture.py`` checks them.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gates.models import Notice, Validation
    from gates.results.base import ResultSet


class Change(StrEnum):
    """What just happened to a validation."""

    QUEUED = "queued"  # accepted, waiting for a worker
    RUNNING = "running"  # a worker claimed it
    FINISHED = "finished"  # it has its outcome: a verdict, an error, or a refusal before any test
    BLOCKED = "blocked"  # ops closed the gate by hand
    BYPASSED = "bypassed"  # an approved bypass lets it through
    CANCELLED = "cancelled"  # ops stopped it before it finished
    ROLLBACK = "rollback"  # a rollback of its deployment was decided after it passed


# What people can be told about: the ``events`` of a notification channel (perfgate.yaml
# ``notify[].events``).
NOTIFICATION_EVENTS = (
    "blocked",
    "bypass_requested",
    "bypass_approved",
    "bypass_rejected",
    "degraded",
    "rollback",
    "blind",
)

Listener = Callable[["Validation", Change], None]
Runner = Callable[..., "ResultSet"]

HeaderSource = Callable[["Validation"], dict[str, str]]
Notifier = Callable[["Notice"], None]

_listeners: dict[str, Listener] = {}
_runners: dict[str, Runner] = {}
_header_sources: dict[str, HeaderSource] = {}
_notifiers: dict[str, Notifier] = {}
_config_sections: dict[str, Callable[..., None]] = {}
_problem_sources: dict[str, Callable[..., list]] = {}


def listen(name: str, listener: Listener) -> None:
    """Register ``listener`` under ``name`` (registering the same name again replaces it, so a
    reloaded app does not hear every change twice)."""
    _listeners[name] = listener


def listeners() -> dict[str, Listener]:
    return dict(_listeners)


def announce(validation: Validation, change: Change) -> None:
    """Tell every listener, in registration order, in the caller's transaction."""
    for listener in _listeners.values():
        listener(validation, change)


def register_runner(tool: str, runner: Runner) -> None:
    _runners[tool] = runner


def runner_for(tool: str) -> Runner | None:
    return _runners.get(tool)


def runners() -> dict[str, Runner]:
    return dict(_runners)


def register_headers(name: str, source: HeaderSource) -> None:
    _header_sources[name] = source


def headers_for(validation: Validation) -> dict[str, str]:
    """The extra request headers every registered source gives for ``validation``'s target."""
    headers: dict[str, str] = {}
    for source in _header_sources.values():
        headers.update(source(validation))
    return headers


def header_sources() -> dict[str, HeaderSource]:
    return dict(_header_sources)


def register_notifier(name: str, notifier: Notifier) -> None:
    _notifiers[name] = notifier


def notifiers() -> dict[str, Notifier]:
    return dict(_notifiers)


def notify(notice: Notice) -> None:
    """Tell every notifier about ``notice``, in the caller's transaction."""
    for notifier in _notifiers.values():
        notifier(notice)


def register_config_section(key: str, apply: Callable[..., None]) -> None:
    """``apply(project=, specs=, applier=)`` applies perfgate.yaml's ``key`` section of one
    project: it reports each change on ``applier`` (``gates.config``) and audits it."""
    _config_sections[key] = apply


def config_sections() -> dict[str, Callable[..., None]]:
    return dict(_config_sections)


def register_problem_source(name: str, source: Callable[..., list]) -> None:
    _problem_sources[name] = source


def problem_sources() -> dict[str, Callable[..., list]]:
    return dict(_problem_sources)
