"""API tokens in the admin: made through the service (the token is shown once), revoked by an
action, never edited."""

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError

from gates.audit import Actor
from gates.errors import ServiceError
from gates.models import Environment
from integrations.models import ApiToken
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
class ApiTokenAdmin(admin.ModelAdmin):
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
    list_filter = ("role", "project")
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

    def save_model(self, request, obj, form, change):
        try:
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
        except ServiceError as exc:
            raise ValidationError(exc.detail) from exc
        # The admin goes on with `obj` (its message, its redirect): make it the row just created.
        obj.pk, obj.token_prefix, obj.created_by = token.pk, token.token_prefix, token.created_by
        obj._state.adding = False
        messages.warning(
            request, f"New token for {token.project}: {plaintext} — copy it now, it will not be shown again."
        )

    def has_delete_permission(self, request, obj=None):
        # A token is revoked, never deleted: the audit log keeps pointing at it.
        return False

    @admin.action(description="Revoke the selected tokens")
    def revoke(self, request, queryset):
        for token in queryset.filter(revoked_at__isnull=True):
            token_revoke(token=token, actor=Actor.for_user(request.user), reason="revoked in the admin")
        self.message_user(request, "Revoked.")
