"""The one door out of the gate: what other code plugs into, filled at start-up.

The gate's core (models, services, selectors, execution, rules) imports nothing that talks to the
outside world. Instead, apps register here in their ``AppConfig.ready()``:

- **listeners** hear every state change of a validation, inside the transaction that made it, so
  what they record (an integration's outbox rows, a new baseline version) commits or rolls back
  with the change itself. A listener must only write to the database: it never calls out.
- **runners** run a scenario's tool for the worker (k6 and Locust are the gate's own; a GitHub
  workflow is registered by ``integrations``). A runner gets a ``gates.execution.ScenarioRun`` and
  returns a ``ResultSet``.

This is an explicit registry, not Django signals: ``docs/architecture.md`` lists every
registration, and ``tests/test_architecture.py`` checks them.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gates.models import Validation
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


Listener = Callable[["Validation", Change], None]
Runner = Callable[..., "ResultSet"]

_listeners: dict[str, Listener] = {}
_runners: dict[str, Runner] = {}


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
