"""django-q2's task records in the admin, as django-q2 shows them but for one thing: resubmitting
a task runs it again (a validation's load test, a delivery to GitHub), so only superusers may.
django-q2 offers that action to anyone who may view the list, auditors included."""

from django.contrib import admin
from django_q import admin as q_admin
from django_q.models import Failure, Success


@admin.action(description="Resubmit the selected tasks to the queue", permissions=["resubmit"])
def resubmit(model_admin, request, queryset):
    q_admin.resubmit_task(model_admin, request, queryset)


class SuperuserResubmitMixin:
    actions = [resubmit]

    def has_resubmit_permission(self, request):
        # Tasks belong to no project: no project right can stand for "may run this again".
        return request.user.is_active and request.user.is_superuser


class SuccessAdmin(SuperuserResubmitMixin, q_admin.TaskAdmin):
    pass


class FailureAdmin(SuperuserResubmitMixin, q_admin.FailAdmin):
    pass


for model, model_admin in ((Success, SuccessAdmin), (Failure, FailureAdmin)):
    admin.site.unregister(model)
    admin.site.register(model, model_admin)
