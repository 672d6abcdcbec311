"""GitHub connections in the admin: secrets go in and never come out, and every edit is audited
without them."""

from gates.models import AuditEvent
from integrations.models import GitHubConnection

FORM = {
    "auth": "app",
    "app_id": "4242",
    "installation_id": "777",
    "token": "",
    "api_url": "",
    "report_checks": "on",
    "report_comments": "on",
    "performance_workflow": "performance.yml",
    "workflow_ref": "main",
    "workflow_environment": "staging",
    "artifact_name": "perfgate-results",
}


def test_a_private_key_is_write_only_and_never_in_the_audit_log(client, admin_user, project, app_key):
    client.force_login(admin_user)
    response = client.post(
        "/admin/integrations/githubconnection/add/", {**FORM, "project": project.pk, "private_key": app_key}
    )
    assert response.status_code == 302, response.content[:2000]
    connection = GitHubConnection.objects.get()
    assert connection.private_key == app_key.strip()

    page = client.get(f"/admin/integrations/githubconnection/{connection.pk}/change/")
    secret_line = app_key.splitlines()[1]
    assert secret_line not in page.content.decode()

    response = client.post(
        f"/admin/integrations/githubconnection/{connection.pk}/change/",
        {**FORM, "project": project.pk, "private_key": "", "workflow_ref": "release"},
    )
    assert response.status_code == 302
    connection.refresh_from_db()
    assert connection.private_key == app_key.strip(), "an empty field keeps the stored key"
    assert connection.workflow_ref == "release"

    events = AuditEvent.objects.filter(action__startswith="config.githubconnection")
    assert [e.action for e in events.order_by("id")] == [
        "config.githubconnection.created",
        "config.githubconnection.updated",
    ]
    for event in events:
        assert secret_line not in str(event.data)
        assert event.data["after"]["private_key_set"] is True
    assert events.order_by("id").last().data["before"]["workflow_ref"] == "main"


def test_an_app_connection_without_a_key_is_refused_with_a_reason(client, admin_user, project):
    client.force_login(admin_user)
    response = client.post(
        "/admin/integrations/githubconnection/add/", {**FORM, "project": project.pk, "private_key": ""}
    )
    assert response.status_code == 200
    assert "needs: private_key" in response.content.decode()
    assert GitHubConnection.objects.count() == 0
