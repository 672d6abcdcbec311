"""Who may see and do what, per project: the one rule the admin, the services and the API ask.

Rights on a project are django-guardian object permissions given in the project's admin page:
``approve_bypass``, ``block_deployment``, ``change_thresholds``, ``trigger_rollback``. A
model-wide permission of the same name applies to every project; an active superuser holds every
right. Holding any right on a project makes it visible to an ops user. Auditors
(``view_every_project``) see every project and hold no right, so they change nothing.

``may`` answers for one project and ``projects_where`` for all of them, with the same answer
for every (user, right, project), so the admin offers an action exactly where the service behind
it accepts. Services enforce the rule (the admin only hides what a user may not do): those
given a user ask ``may``, those given an ``Actor`` call ``require_right``. API tokens are
authorised by their role in the API layer; the command line, workers and perfgate itself act
with the machine's authority.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db.models import Q
from guardian.shortcuts import get_objects_for_user, get_users_with_perms

from gates.errors import NotPermitted
from gates.models import Project

PROJECT_RIGHTS = ("approve_bypass", "block_deployment", "change_thresholds", "trigger_rollback")


def _known(right: str) -> None:
    # A misspelt right would be refused to everyone but superusers: a bug no one would notice.
    if right not in PROJECT_RIGHTS:
        raise ValueError(f"Unknown project right {right!r}; the rights are {', '.join(PROJECT_RIGHTS)}.")


def sees_every_project(user) -> bool:
    return user.is_active and (user.is_superuser or user.has_perm("gates.view_every_project"))


def visible_projects(user):
    """The projects a user may see in the admin."""
    if not user.is_active:
        return Project.objects.none()
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
    """Whether ``user`` holds ``right`` on ``project`` (on it, or on every project).

    Guardian's object check ignores model-wide permissions, so both are asked: a model-wide
    ``approve_bypass`` counts on every project, here and in every service that asks this.
    """
    _known(right)
    return user.is_active and (user.has_perm(f"gates.{right}") or user.has_perm(f"gates.{right}", project))


def projects_where(user, right: str):
    """The projects on which ``user`` holds ``right``: exactly those where ``may`` says yes."""
    _known(right)
    if not user.is_active:
        return Project.objects.none()
    if user.is_superuser or user.has_perm(f"gates.{right}"):
        return Project.objects.all()
    return get_objects_for_user(
        user, f"gates.{right}", klass=Project, with_superuser=False, accept_global_perms=False
    )


def users_with_right(right: str, project: Project) -> list:
    """The active users who hold ``right`` on ``project``, exactly those ``may`` says yes for
    (the approvers a bypass request names), ordered by username."""
    _known(right)
    model_wide = Q(user_permissions__codename=right) | Q(groups__permissions__codename=right)
    candidates = set(
        get_user_model().objects.filter(Q(is_superuser=True) | model_wide, is_active=True).distinct()
    )
    candidates |= set(
        get_users_with_perms(
            project, only_with_perms_in=[right], with_group_users=True, with_superusers=False
        )
    )
    return sorted((u for u in candidates if may(u, right, project)), key=lambda u: u.get_username())


def require_right(actor, right: str, project: Project, *, to: str) -> None:
    """Refuse a person who lacks ``right`` on ``project`` with ``NotPermitted``; ``to`` says what
    they tried ("revoke tokens"). A person's actor is made by ``Actor.for_user`` and carries
    their id; an id that names no user any more is refused too.

    Anyone else is let through: API tokens were authorised by their role before the service was
    called, and the command line, workers and perfgate itself act with the machine's authority.
    An ``Actor("user", name)`` made without an id (a test's shorthand) names nobody to check.
    """
    if actor.kind != "user" or actor.user_id is None:
        return
    person = get_user_model().objects.filter(pk=actor.user_id).first()
    if person is None or not may(person, right, project):
        raise NotPermitted(
            f"{actor.name} may not {to} of {project.slug}: that needs the {right} right on the project."
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
        "view_watch",
        "view_probe",
        "view_rollback",
        "view_notice",
    ],
    "baselines": ["view_baseline", "view_baselinemetric"],
    # Ops manage their projects' CI tokens in the admin; making or revoking one still takes
    # change_thresholds on the token's project (integrations.services).
    # Notification channels too, with change_thresholds on the channel's project.
    "integrations": [
        "view_apitoken",
        "add_apitoken",
        "view_notificationchannel",
        "add_notificationchannel",
        "change_notificationchannel",
        "delete_notificationchannel",
        "view_notification",
    ],
}
AUDITOR_APPS = ("gates", "baselines", "integrations", "django_q")


def ensure_groups(apps) -> None:
    """The two groups the admin is organised around (``apps``: the app registry, or a
    migration's historical one).

    - ops: edit scenarios, rules and environments, see validations and baselines, manage CI
      tokens, ask for bypasses; what they may do on which project is granted per project.
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
