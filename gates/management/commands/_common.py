"""What the gate's commands share: who is acting, and how a validation is printed."""

import getpass
import os

from django.core.management.base import CommandError

from gates.audit import Actor
from gates.models import Environment, Project
from gates.report import check_table, summary_line

USAGE_ERROR = 2


def cli_actor() -> Actor:
    """Commands act as the operating-system user who ran them."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = os.environ.get("USER", "manage.py")
    return Actor("cli", name)


def project_and_environment(slug: str, name: str) -> tuple[Project, Environment]:
    project = Project.objects.filter(slug=slug).first()
    if project is None:
        raise CommandError(
            f"No project {slug!r}. Create it with `manage.py apply_config perfgate.yaml`.",
            returncode=USAGE_ERROR,
        )
    environment = project.environments.filter(name=name).first()
    if environment is None:
        names = ", ".join(project.environments.values_list("name", flat=True)) or "none"
        raise CommandError(
            f"Project {slug} has no environment {name!r} (it has: {names}).", returncode=USAGE_ERROR
        )
    return project, environment


def render_validation(validation) -> str:
    """The check table and the one-line outcome."""
    data = {
        "project": validation.project.slug,
        "environment": validation.environment.name,
        "buildId": validation.build_id,
        "status": validation.status,
        "verdict": validation.verdict,
        "deploymentAllowed": validation.deployment_allowed,
        "wouldBlock": validation.would_block,
    }
    report = validation.report or {}
    lines = [check_table(report.get("checks", []), report.get("notices", ())), "", summary_line(data)]
    if validation.status_reason:
        lines.append(validation.status_reason)
    return "\n".join(lines)
