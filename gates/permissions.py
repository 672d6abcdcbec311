"""Who may see and do what, per project.

Rights on a project are django-guardian object permissions given in the project's admin page:
``approve_bypass``, ``block_deployment``, ``change_thresholds``, ``trigger_rollback``. Holding any
of them makes the project visible to an ops user; a model-wide permission of the same name
applies to every project. Auditors (``view_every_project``) see every project and change nothing.
"""

from __future__ import annotations

from guardian.shortcuts import get_objects_for_user

from gates.models import Project

PROJECT_RIGHTS = ("approve_bypass", "block_deployment", "change_thresholds", "trigger_rollback")


def sees_every_project(user) -> bool:
    return user.is_superuser or user.has_perm("gates.view_every_project")


def visible_projects(user):
    """The projects a user may see in the admin."""
    if sees_every_project(user) or any(user.has_perm(f"gates.{right}") for right in PROJECT_RIGHTS):
        return Project.objects.all()
    return get_objects_for_user(
        user,
        [f"gates.{right}" for right in PROJECT_RIGHTS],
        klass=Project,
        any_perm=True,
        with_superuser=False,
        accept_global_perms=False,
    )


def may(user, right: str, project: Project) -> bool:
    """Whether ``user`` holds ``right`` on ``project`` (on it, or on every project)."""
    return user.is_active and (user.has_perm(f"gates.{right}") or user.has_perm(f"gates.{right}", project))


def projects_where(user, right: str):
    """The projects on which ``user`` holds ``right``."""
    if user.is_superuser or user.has_perm(f"gates.{right}"):
        return Project.objects.all()
    return get_objects_for_user(
        user, f"gates.{right}", klass=Project, with_superuser=False, accept_global_perms=False
    )


OPS_PERMISSIONS = {
    "gates": [
        "view_project",
        "view_environment",
        "change_environment",
        "view_scenario",
        "add_scenario",
        "change_scenario",
        "view_thresholdrule",
        "add_thresholdrule",
        "change_thresholdrule",
        "delete_thresholdrule",
        "view_validation",
        "view_checkresult",
        "view_bypassrequest",
        "add_bypassrequest",
        "view_bypassapproval",
        "view_auditevent",
    ],
    "baselines": ["view_baseline", "view_baselinemetric"],
}
AUDITOR_APPS = ("gates", "baselines", "integrations", "django_q")


def ensure_groups(apps) -> None:
    """The two groups the admin is organised around (``apps``: the app registry, or a
    migration's historical one).

    - ops: edit scenarios, rules and environments, see validations and baselines, ask for
      bypasses; what they may do on which project is granted per project.
    - auditors: view everything, change nothing.
    """
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    ops, _ = Group.objects.get_or_create(name="ops")
    for app, codenames in OPS_PERMISSIONS.items():
        ops.permissions.add(*Permission.objects.filter(content_type__app_label=app, codename__in=codenames))
    auditors, _ = Group.objects.get_or_create(name="auditors")
    auditors.permissions.add(
        *Permission.objects.filter(content_type__app_label__in=AUDITOR_APPS, codename__startswith="view_")
    )
