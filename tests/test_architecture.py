"""The import directions of docs/architecture.md, checked on the source: a forbidden import, a
function-level import of the project's own code, or an import cycle fails here."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
APPS = ("gates", "baselines", "integrations", "perfgate_site")
PROJECT = (*APPS, "perfgate_cli")

# What the gate's core is: everything in gates but its HTTP edge, its admin and its commands.
GATE_EDGE = ("gates.api", "gates.views", "gates.urls", "gates.admin", "gates.management")
# The one door through which gates reaches integrations: API token authentication, and the demo,
# which makes a CI token to call the API as CI would.
GATE_TO_INTEGRATIONS = {
    "gates.api": ("integrations.auth", "integrations.models", "integrations.alerts"),
    "gates.views": ("integrations.auth",),
    # The demo connects its project to its local stand-in of Vercel's API.
    "gates.management.commands.demo": ("integrations.services", "integrations.models"),
}
# Baselines belong to the gate domain; the core reads them, and only the edge asks them to change.
CORE_TO_BASELINES = ("baselines.models", "baselines.selectors", "baselines.stats")
PURE = (
    "gates.rules",
    "gates.results",
    "gates.loadtest",
    "gates.targets",
    "gates.units",
    "gates.charts",
    "baselines.stats",
)
SHARED_SITE = ("perfgate_site.api", "perfgate_site.limits")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the imported module (or module.name)
    line: int
    in_function: bool


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[0] == "cli":
        parts = parts[1:]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(module: str, source: str) -> list[Import]:
    """Every import in a module's source, with whether it sits inside a function. Imports under
    ``if TYPE_CHECKING:`` are for annotations only and are left out; so is ``AppConfig.ready``,
    where Django wants the wiring done."""
    found: list[Import] = []
    package = module if module.endswith("__init__") else module.rsplit(".", 1)[0]

    def visit(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if child.name == "ready":
                    continue
                visit(child, True)
            elif isinstance(child, ast.Import):
                found.extend(Import(module, alias.name, child.lineno, in_function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*anchor, base]) if base else ".".join(anchor)
                for alias in child.names:
                    found.append(Import(module, f"{base}.{alias.name}", child.lineno, in_function))
            else:
                visit(child, in_function)

    visit(ast.parse(source), False)
    return found


def project_imports() -> list[Import]:
    result = []
    for app in (*APPS, "cli/perfgate_cli"):
        for path in sorted((ROOT / app).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            result.extend(imports_of(_module_name(path, ROOT), path.read_text()))
    return result


def _within(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def violations(imports: list[Import], known_modules: set[str]) -> list[str]:
    """Every import that breaks a rule of docs/architecture.md, as a sentence."""
    problems = []
    for item in imports:
        module, target = item.module, item.target
        where = f"{module}:{item.line} imports {target}"
        if item.in_function and _within(target, PROJECT):
            problems.append(f"{where} inside a function (a hidden cycle?)")
        if _within(module, ("gates",)) and _within(target, ("integrations",)):
            allowed = next((v for k, v in GATE_TO_INTEGRATIONS.items() if _within(module, (k,))), ())
            if not _within(target, allowed):
                problems.append(f"{where}: the gate reaches integrations only through gates.registry")
        if _within(module, ("baselines",)) and _within(target, ("integrations",)):
            problems.append(f"{where}: baselines never import integrations")
        core = _within(module, ("gates",)) and not _within(module, GATE_EDGE)
        if core and _within(target, ("baselines",)) and not _within(target, CORE_TO_BASELINES):
            problems.append(f"{where}: the gate's core only reads baselines (models, selectors, stats)")
        admin_base = _within(module, ("baselines.admin",)) and _within(target, ("gates.admin.base",))
        if _within(module, ("baselines",)) and _within(target, GATE_EDGE) and not admin_base:
            problems.append(f"{where}: baselines do not import the gate's HTTP edge or admin")
        impure = _within(target, ("django", "rest_framework")) or (
            _within(target, APPS) and not _within(target, PURE)
        )
        if _within(module, PURE) and impure:
            problems.append(f"{where}: a pure module imports no Django and no app code")
        site = _within(target, ("perfgate_site",)) and not _within(target, SHARED_SITE)
        if _within(module, APPS) and not _within(module, ("perfgate_site",)) and site:
            problems.append(f"{where}: apps use only perfgate_site.api and perfgate_site.limits")
        if _within(module, ("perfgate_cli",)) and _within(target, APPS):
            problems.append(f"{where}: the CLI installs without the server and imports none of it")
    graph: dict[str, set[str]] = {}
    for item in imports:
        if item.in_function:
            continue
        target = item.target if item.target in known_modules else item.target.rsplit(".", 1)[0]
        if target in known_modules and target != item.module:
            graph.setdefault(item.module, set()).add(target)
    problems.extend(f"import cycle: {' → '.join(cycle)}" for cycle in _cycles(graph))
    return problems


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected group of modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def connect(node: str):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [[*group, group[0]] for group in groups]


def known_modules() -> set[str]:
    names = set()
    for app in (*APPS, "cli/perfgate_cli"):
        for path in (ROOT / app).rglob("*.py"):
            if "migrations" not in path.parts:
                names.add(_module_name(path, ROOT))
    return names


def test_the_project_keeps_the_import_directions_of_the_architecture_document():
    problems = violations(project_imports(), known_modules())
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("module", "source", "complaint"),
    [
        ("gates.services.runs", "from integrations.github import report", "only through gates.registry"),
        ("gates.execution", "def run():\n    from integrations import workflows\n", "inside a function"),
        ("gates.selectors", "from baselines.services import baseline_promote", "only reads baselines"),
        ("gates.rules.grammar", "from django.db import models", "pure module"),
        ("baselines.services", "from integrations.outbox import queue_delivery", "never import integrations"),
        ("perfgate_cli.cli", "from gates.report import check_table", "imports none of it"),
        ("gates.models", "from perfgate_site.settings import DEBUG", "perfgate_site.api"),
        ("baselines.services", "from gates.api import scope", "HTTP edge or admin"),
    ],
)
def test_a_forbidden_import_is_reported(module, source, complaint):
    problems = violations(imports_of(module, source), known_modules())
    assert any(complaint in problem for problem in problems), problems


def test_an_import_cycle_is_reported():
    imports = [
        *imports_of("integrations.outbox", "from integrations.github import delivery"),
        *imports_of("integrations.github.delivery", "from integrations.outbox import queue_delivery"),
    ]
    problems = violations(imports, known_modules())
    assert any("import cycle" in problem and "integrations.outbox" in problem for problem in problems)


def test_type_checking_imports_and_app_wiring_are_not_dependencies():
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from integrations.models import OutboundCall\n"
        "class Config:\n    def ready(self):\n        from integrations import outbox\n"
    )
    assert violations(imports_of("gates.registry", source), known_modules()) == []


def test_integrations_plug_into_the_gate_at_start_up():
    from gates import registry
    from integrations import outbox

    assert list(registry.listeners()) == ["baselines", "github", "vercel", "notify"]
    assert set(registry.runners()) == {"k6", "locust", "github"}
    assert list(registry.header_sources()) == ["vercel"]
    assert list(registry.notifiers()) == ["notify"]
    assert list(registry.config_sections()) == ["notify"]
    assert list(registry.problem_sources()) == ["integrations"]
    assert set(outbox.deliverers()) == {"github", "vercel", "slack", "email"}
