"""Integrations in the admin. API tokens: made through the service (the token is shown once),
revoked by an action, never edited; each user sees the tokens of the projects they may see.
GitHub and Vercel connections and notification channels: secrets are write-only (never shown
again, kept when left empty), every edit audited without them. The outbox, webhook deliveries,
Vercel checks and notifications: read-only records."""

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db import transaction
from django.urls import reverse
from django.utils.html import format_html

from gates.admin.base import ProjectScopedMixin, ReadOnlyAdminMixin, ServiceFormMixin, titled_filter
from gates.audit import Actor, audit_record
from gates.errors import ServiceError
from gates.models import Environment
from gates.permissions import projects_where
from integrations.models import (
    ApiToken,
    GitHubConnection,
    Notification,
    NotificationChannel,
    OutboundCall,
    VercelCheck,
    VercelConnection,
    WebhookDelivery,
)
from integrations.services import token_create, token_revoke


class ApiTokenCreationForm(forms.ModelForm):
    environments = forms.MultipleChoiceField(
        choices=Environment.Name.choices,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="None ticked: every environment of the project.",
    )
    expires_days = forms.IntegerField(
        min_value=1, max_value=3650, required=False, help_text="Days until it stops working; empty: never."
    )

    class Meta:
        model = ApiToken
        fields = ("name", "project", "role", "environments", "can_block", "owner")


@admin.register(ApiToken)
class ApiTokenAdmin(ServiceFormMixin, ProjectScopedMixin, admin.ModelAdmin):
    """Tokens of the projects a user may see. Making and revoking one takes ``change_thresholds``
    on its project (see ``integrations.services``), so auditors, who hold no right, only read."""

    change_right = "change_thresholds"
    list_display = (
        "name",
        "token_prefix",
        "project",
        "role",
        "environments",
        "can_block",
        "owner",
        "expires_at",
        "revoked_at",
        "last_used_at",
    )
    list_filter = ("role", ("project", admin.RelatedOnlyFieldListFilter))
    list_select_related = ("project", "owner")
    search_fields = ("name", "token_prefix")
    actions = ["revoke"]
    readonly_fields = (
        "name",
        "token_prefix",
        "project",
        "role",
        "environments",
        "can_block",
        "owner",
        "created_by",
        "created_at",
        "expires_at",
        "revoked_at",
        "last_used_at",
    )

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = ApiTokenCreationForm
        return super().get_form(request, obj, **kwargs)

    def get_readonly_fields(self, request, obj=None):
        return self.readonly_fields if obj is not None else ()

    def get_fields(self, request, obj=None):
        if obj is None:
            return ("name", "project", "role", "environments", "can_block", "owner", "expires_days")
        return self.readonly_fields

    def has_change_permission(self, request, obj=None):
        return False

    def _manages_tokens_somewhere(self, request) -> bool:
        return projects_where(request.user, self.change_right).exists()

    def has_add_permission(self, request):
        return super().has_add_permission(request) and self._manages_tokens_somewhere(request)

    def has_revoke_permission(self, request):
        return self._manages_tokens_somewhere(request)

    def save_model(self, request, obj, form, change):
        token, plaintext = token_create(
            project=form.cleaned_data["project"],
            role=form.cleaned_data["role"],
            name=form.cleaned_data["name"],
            actor=Actor.for_user(request.user),
            environments=form.cleaned_data["environments"],
            expires_days=form.cleaned_data.get("expires_days"),
            owner=form.cleaned_data["owner"],
            can_block=form.cleaned_data["can_block"],
        )
        # The admin goes on with `obj` (its message, its redirect): make it the row just created.
        obj.pk, obj.token_prefix, obj.created_by = token.pk, token.token_prefix, token.created_by
        obj._state.adding = False
        messages.warning(
            request, f"New token for {token.project}: {plaintext} — copy it now, it will not be shown again."
        )

    def has_delete_permission(self, request, obj=None):
        # A token is revoked, never deleted: the audit log keeps pointing at it.
        return False

    @admin.action(description="Revoke the selected tokens", permissions=["revoke"])
    def revoke(self, request, queryset):
        """Needs ``change_thresholds`` on each token's project, which the service checks: the
        right that guards the rest of a project's configuration, held by its ops and by
        superusers, never by auditors. A right of its own for tokens would be one more box to
        tick on every project for no difference in who holds it."""
        for token in queryset.filter(revoked_at__isnull=True).select_related("project"):
            try:
                token_revoke(token=token, actor=Actor.for_user(request.user), reason="revoked in the admin")
            except ServiceError as exc:
                self.message_user(request, exc.detail, messages.ERROR)
                continue
            self.message_user(request, f"{token.name} ({token.token_prefix}…) of {token.project} is revoked.")


class GitHubConnectionForm(forms.ModelForm):
    private_key = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "autocomplete": "off"}),
        help_text="The App's private key (PEM). Write-only: leave empty to keep the stored one.",
    )
    token = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text="A fine-grained personal access token. Write-only: leave empty to keep the stored one.",
    )

    class Meta:
        model = GitHubConnection
        fields = (
            "project",
            "auth",
            "app_id",
            "installation_id",
            "private_key",
            "token",
            "api_url",
            "report_checks",
            "report_comments",
            "performance_workflow",
            "workflow_ref",
            "workflow_environment",
            "artifact_name",
        )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Never send a stored secret back to the browser.
        self.initial["private_key"] = ""
        self.initial["token"] = ""

    def clean(self):
        data = super().clean()
        for name in ("private_key", "token"):
            if not data.get(name) and self.instance.pk:
                data[name] = getattr(self.instance, name)
        if data.get("auth") == GitHubConnection.Auth.APP:
            missing = [f for f in ("app_id", "installation_id", "private_key") if not data.get(f)]
            if missing:
                raise ValidationError(f"A GitHub App connection needs: {', '.join(missing)}.")
            if "PRIVATE KEY" not in data["private_key"]:
                raise ValidationError({"private_key": "Not a PEM private key."})
        elif not data.get("token"):
            raise ValidationError({"token": "A token connection needs a token."})
        return data


SECRET_FIELDS = ("private_key", "token")


def _connection_snapshot(connection: GitHubConnection) -> dict:
    """Every setting of a connection for the audit log; of a secret, only whether it is set."""
    snapshot = {
        field.name: getattr(connection, field.attname)
        for field in GitHubConnection._meta.concrete_fields
        if field.name not in (*SECRET_FIELDS, "id", "updated_at", "bot_login")
    }
    snapshot.update({f"{name}_set": bool(getattr(connection, name)) for name in SECRET_FIELDS})
    return snapshot


@admin.register(GitHubConnection)
class GitHubConnectionAdmin(ProjectScopedMixin, admin.ModelAdmin):
    form = GitHubConnectionForm
    list_display = ("project", "auth", "app_id", "installation_id", "performance_workflow", "bot_login")
    list_select_related = ("project",)
    readonly_fields = ("bot_login", "updated_at")

    def save_model(self, request, obj, form, change):
        before = _connection_snapshot(GitHubConnection.objects.get(pk=obj.pk)) if change else None
        secrets_changed = [
            name for name in SECRET_FIELDS if form.cleaned_data.get(name) and name in form.changed_data
        ]
        if change and {"auth", "app_id", "installation_id", "api_url", *secrets_changed} & set(
            form.changed_data
        ):
            obj.bot_login = ""  # who perfgate is may have changed
        with transaction.atomic():
            super().save_model(request, obj, form, change)
            audit_record(
                action=f"config.githubconnection.{'updated' if change else 'created'}",
                actor=Actor.for_user(request.user),
                target=obj,
                project=obj.project.slug,
                reason="edited in the admin",
                data={
                    "before": before,
                    "after": _connection_snapshot(obj),
                    "secrets_replaced": secrets_changed,
                },
            )


class VercelConnectionForm(forms.ModelForm):
    token = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text="The integration's access token (checks and rollbacks need it; without one, perfgate "
        "still validates each deployment and reports to GitHub). Write-only: leave empty to keep the "
        "stored one.",
    )
    protection_bypass_secret = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text="Protection Bypass for Automation, sent as x-vercel-protection-bypass to the "
        "deployments perfgate tests. Write-only: leave empty to keep the stored one.",
    )
    clear_protection_bypass_secret = forms.BooleanField(
        required=False, help_text="Forget the stored protection-bypass secret."
    )

    class Meta:
        model = VercelConnection
        fields = (
            "project",
            "team_id",
            "token",
            "protection_bypass_secret",
            "clear_protection_bypass_secret",
            "checks_api",
            "production_environment",
            "preview_environment",
            "scenario",
            "api_url",
        )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Never send a stored secret back to the browser.
        self.initial["token"] = ""
        self.initial["protection_bypass_secret"] = ""

    def clean(self):
        data = super().clean()
        for name in VERCEL_SECRET_FIELDS:
            if not data.get(name) and self.instance.pk:
                data[name] = getattr(self.instance, name)
        if data.get("clear_protection_bypass_secret"):
            data["protection_bypass_secret"] = ""
        project = data.get("project")
        if project is not None and not project.vercel_project_id:
            raise ValidationError({"project": "Set the project's Vercel project id first."})
        if project is not None:
            names = set(project.environments.values_list("name", flat=True))
            for field in ("production_environment", "preview_environment"):
                if data.get(field) and data[field] not in names:
                    self.add_error(field, f"{project.slug} has no environment {data[field]!r}.")
        return data


VERCEL_SECRET_FIELDS = ("token", "protection_bypass_secret")


def _vercel_snapshot(connection: VercelConnection) -> dict:
    """Every setting of a connection for the audit log; of a secret, only whether it is set."""
    snapshot = {
        field.name: getattr(connection, field.attname)
        for field in VercelConnection._meta.concrete_fields
        if field.name not in (*VERCEL_SECRET_FIELDS, "id", "updated_at")
    }
    snapshot.update({f"{name}_set": bool(getattr(connection, name)) for name in VERCEL_SECRET_FIELDS})
    return snapshot


@admin.register(VercelConnection)
class VercelConnectionAdmin(ProjectScopedMixin, admin.ModelAdmin):
    form = VercelConnectionForm
    list_display = ("project", "team_id", "checks_api", "production_environment", "preview_environment")
    list_select_related = ("project",)
    readonly_fields = ("check_id", "updated_at")

    def save_model(self, request, obj, form, change):
        before = _vercel_snapshot(VercelConnection.objects.get(pk=obj.pk)) if change else None
        replaced = [
            name for name in VERCEL_SECRET_FIELDS if form.cleaned_data.get(name) and name in form.changed_data
        ]
        if form.cleaned_data.get("clear_protection_bypass_secret"):
            replaced.append("protection_bypass_secret")
        if change and {"api_url", "team_id", "token"} & set(form.changed_data):
            obj.check_id = ""  # another account or team: perfgate's check there is made anew
        with transaction.atomic():
            super().save_model(request, obj, form, change)
            audit_record(
                action=f"config.vercelconnection.{'updated' if change else 'created'}",
                actor=Actor.for_user(request.user),
                target=obj,
                project=obj.project.slug,
                reason="edited in the admin",
                data={"before": before, "after": _vercel_snapshot(obj), "secrets_replaced": replaced},
            )


@admin.register(VercelCheck)
class VercelCheckAdmin(ReadOnlyAdminMixin, ProjectScopedMixin, admin.ModelAdmin):
    project_path = "validation__project"
    list_display = ("deployment_id", "validation", "api", "vercel_id", "created_at")
    list_filter = (titled_filter("api", "checks API"),)
    list_select_related = ("validation__project", "validation__environment")
    search_fields = ("deployment_id", "vercel_id")
    show_full_result_count = False


@admin.register(OutboundCall)
class OutboundCallAdmin(ReadOnlyAdminMixin, ProjectScopedMixin, admin.ModelAdmin):
    list_display = (
        "id",
        "project",
        "kind",
        "ordering_key",
        "state",
        "attempts",
        "next_attempt_at",
        "last_error",
    )
    list_filter = ("state", "kind", "project")
    list_select_related = ("project",)
    search_fields = ("ordering_key",)
    show_full_result_count = False


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("delivery_id", "provider", "event", "action", "state", "received_at", "result")
    list_filter = ("provider", "event", "state")
    search_fields = ("delivery_id",)
    show_full_result_count = False


class NotificationChannelForm(forms.ModelForm):
    slack_webhook_url = forms.URLField(
        required=False,
        assume_scheme="https",
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text="The incoming webhook URL (https://hooks.slack.com/services/…). Write-only: leave "
        "empty to keep the stored one. A new URL mends a broken channel.",
    )
    recipients = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Email addresses, separated by commas or new lines.",
    )
    events = forms.MultipleChoiceField(
        required=False,
        choices=NotificationChannel.Event.choices,
        widget=forms.CheckboxSelectMultiple,
        help_text="None ticked: every event.",
    )
    environments = forms.MultipleChoiceField(
        required=False,
        choices=Environment.Name.choices,
        widget=forms.CheckboxSelectMultiple,
        help_text="None ticked: every environment.",
    )

    class Meta:
        model = NotificationChannel
        fields = (
            "project",
            "name",
            "kind",
            "slack_webhook_url",
            "recipients",
            "events",
            "environments",
            "enabled",
        )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Never send a stored secret back to the browser.
        self.initial["slack_webhook_url"] = ""
        self.initial["recipients"] = ", ".join(self.instance.recipients or [])

    def clean_recipients(self):
        addresses = [a.strip() for a in self.cleaned_data["recipients"].replace("\n", ",").split(",")]
        addresses = [a for a in addresses if a]
        validate = forms.EmailField().clean
        for address in addresses:
            validate(address)
        return addresses

    def clean(self):
        data = super().clean()
        if not data.get("slack_webhook_url") and self.instance.pk:
            data["slack_webhook_url"] = self.instance.slack_webhook_url
        kind = data.get("kind")
        if kind == NotificationChannel.Kind.EMAIL and not data.get("recipients"):
            self.add_error("recipients", "An email channel needs at least one address.")
        if kind == NotificationChannel.Kind.SLACK and not (
            data.get("slack_webhook_url") or self.instance.webhook_secret_env
        ):
            self.add_error("slack_webhook_url", "A Slack channel needs its incoming webhook URL.")
        return data


def _channel_snapshot(channel: NotificationChannel) -> dict:
    """A channel's settings for the audit log; of its webhook URL, only whether it is set."""
    return {
        "name": channel.name,
        "kind": channel.kind,
        "recipients": channel.recipients,
        "events": channel.events,
        "environments": channel.environments,
        "enabled": channel.enabled,
        "webhook_url_set": bool(channel.slack_webhook_url),
    }


@admin.register(NotificationChannel)
class NotificationChannelAdmin(ProjectScopedMixin, admin.ModelAdmin):
    form = NotificationChannelForm
    list_display = ("name", "project", "kind", "wants", "covers", "health", "enabled")
    list_filter = (("project", admin.RelatedOnlyFieldListFilter), "kind", "enabled")
    list_select_related = ("project",)
    readonly_fields = ("webhook_secret_env", "health", "config_source", "updated_at")

    @admin.display(description="Events")
    def wants(self, channel):
        return ", ".join(channel.events) if channel.events else "every event"

    @admin.display(description="Environments")
    def covers(self, channel):
        return ", ".join(channel.environments) if channel.environments else "every environment"

    @admin.display(description="Health")
    def health(self, channel):
        if channel.is_broken:
            return format_html(
                '<strong style="color:#ba2121">Broken since {}:</strong> {}',
                f"{channel.broken_at:%Y-%m-%d %H:%M} UTC",
                channel.broken_reason,
            )
        if channel.kind == NotificationChannel.Kind.SLACK and not channel.slack_webhook_url:
            return format_html('<strong style="color:#ba2121">{}</strong>', "No webhook URL")
        return "Working"

    def save_model(self, request, obj, form, change):
        before = _channel_snapshot(NotificationChannel.objects.get(pk=obj.pk)) if change else None
        replaced = (
            bool(form.cleaned_data.get("slack_webhook_url")) and "slack_webhook_url" in form.changed_data
        )
        if replaced:
            obj.broken_at, obj.broken_reason = None, ""
        with transaction.atomic():
            super().save_model(request, obj, form, change)
            audit_record(
                action=f"config.channel.{'updated' if change else 'created'}",
                actor=Actor.for_user(request.user),
                target=obj,
                project=obj.project.slug,
                reason="edited in the admin",
                data={"before": before, "after": _channel_snapshot(obj), "webhook_url_replaced": replaced},
            )


@admin.register(Notification)
class NotificationAdmin(ReadOnlyAdminMixin, ProjectScopedMixin, admin.ModelAdmin):
    list_display = ("created_at", "event", "title", "to", "state", "attempts", "sent_at", "error")
    list_filter = ("event", ("project", admin.RelatedOnlyFieldListFilter))
    list_select_related = ("project", "channel", "call")
    search_fields = ("title",)
    show_full_result_count = False
    fields = (
        "title",
        "event",
        "project",
        "environment",
        "validation",
        "to",
        "state",
        "attempts",
        "sent_at",
        "error",
        "message_call",
        "created_at",
    )
    readonly_fields = fields

    @admin.display(description="To")
    def to(self, notification):
        if notification.channel_id:
            return str(notification.channel.name)
        return ", ".join(notification.recipients) or None

    @admin.display(description="State")
    def state(self, notification):
        if notification.call is None:
            return None
        return notification.call.get_state_display().capitalize()

    @admin.display(description="Attempts")
    def attempts(self, notification):
        return notification.call.attempts if notification.call else None

    @admin.display(description="Sent")
    def sent_at(self, notification):
        return notification.call.delivered_at if notification.call else None

    @admin.display(description="Last error")
    def error(self, notification):
        return (notification.call.last_error if notification.call else "") or None

    @admin.display(description="Message (outbound call)")
    def message_call(self, notification):
        if notification.call is None:
            return None
        url = reverse("admin:integrations_outboundcall_change", args=[notification.call_id])
        others = notification.call.notifications.count() - 1
        return format_html('<a href="{}">#{}</a> (with {} other event(s))', url, notification.call_id, others)
