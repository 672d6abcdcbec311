"""Load tests that run in the project's performance workflow on GitHub Actions.

A scenario with the tool "GitHub workflow" is run by a perfgate worker like any other, through
``workflow_runner`` (registered with the gate as that tool's runner): it dispatches the workflow
(inputs: ``correlation_id``, ``environment``, ``git_hash``, ``build_id``), finds the run (GitHub
returns its id with ``return_run_details``; otherwise the run whose title carries the
correlation id), follows it while renewing its lease, downloads the results artifact and hands
them to the gate. A ``workflow_run`` webhook for a run perfgate did not start is evaluated
directly.
"""

from __future__ import annotations

import logging
import stat
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from django.conf import settings

from gates.audit import Actor
from gates.errors import ServiceError
from gates.execution import RunFailed, ScenarioRun, Stopped
from gates.models import Validation
from gates.results import parse_results
from gates.results.base import ParseError, ResultSet
from gates.services import validation_request
from integrations import http
from integrations.github.client import GitHubClient
from integrations.models import GitHubConnection

logger = logging.getLogger(__name__)
MAX_ARTIFACT_FILES = 100
RESULT_SUFFIXES = (".ndjson", ".json", ".csv", ".jtl")
FIND_RUN_SECONDS = 60


class WorkflowFailed(Exception):
    """The workflow gave no results; the message is the reason CI reads."""


def poll_seconds() -> float:
    return settings.PERFGATE_WORKFLOW_POLL_SECONDS


def extract_artifact(archive: Path, destination: Path) -> list[Path]:
    """Unpack a results artifact safely: no absolute paths, no ``..``, no links, at most
    ``MAX_ARTIFACT_FILES`` files and ``PERFGATE_ARTIFACT_MAX_UNPACKED_BYTES`` bytes (counted as
    written, not as the archive claims)."""
    budget = settings.PERFGATE_ARTIFACT_MAX_UNPACKED_BYTES
    destination.mkdir(parents=True, exist_ok=True)
    root = destination.resolve()
    files: list[Path] = []
    try:
        archive_file = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        raise WorkflowFailed("The results artifact is not a zip archive.") from None
    with archive_file:
        members = [m for m in archive_file.infolist() if not m.is_dir()]
        if len(members) > MAX_ARTIFACT_FILES:
            raise WorkflowFailed(
                f"The results artifact holds {len(members)} files; at most {MAX_ARTIFACT_FILES}."
            )
        for member in members:
            name = member.filename
            parts = PurePosixPath(name).parts
            mode = member.external_attr >> 16
            if name.startswith(("/", "\\")) or "\\" in name or ".." in parts or ":" in parts[0]:
                raise WorkflowFailed(f"The results artifact holds an unsafe path: {name!r}.")
            if stat.S_ISLNK(mode):
                raise WorkflowFailed(f"The results artifact holds a symbolic link: {name!r}.")
            target = (root / name).resolve()
            if not target.is_relative_to(root):
                raise WorkflowFailed(f"The results artifact holds an unsafe path: {name!r}.")
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive_file.open(member) as source, open(target, "wb") as out:
                while chunk := source.read(1 << 20):
                    budget -= len(chunk)
                    if budget < 0:
                        raise WorkflowFailed(
                            "The results artifact unpacks to more than PERFGATE_ARTIFACT_MAX_UNPACKED_BYTES."
                        )
                    out.write(chunk)
            files.append(target)
    return files


def results_file(files: list[Path]) -> Path:
    """The file to evaluate: the only one, else the first by kind (raw k6 NDJSON first)."""
    if len(files) == 1:
        return files[0]
    for suffix in RESULT_SUFFIXES:
        for path in sorted(files):
            if path.suffix.lower() == suffix:
                return path
    raise WorkflowFailed(
        "The results artifact holds no results file (.ndjson, .json, .csv or .jtl): "
        + ", ".join(p.name for p in files[:10])
    )


def fetch_results(client, repository: str, run_id: int, artifact_name: str, workdir: Path) -> Path:
    archive = workdir / "artifact.zip"
    try:
        with open(archive, "wb") as out:
            client.download_artifact(repository, run_id, artifact_name, out)
    except http.CallFailed as exc:
        raise WorkflowFailed(f"The results artifact could not be downloaded: {exc}") from None
    return results_file(extract_artifact(archive, workdir / "artifact"))


def _connection(validation: Validation) -> GitHubConnection:
    connection = GitHubConnection.objects.filter(project_id=validation.project_id).first()
    if connection is None or not connection.performance_workflow or not validation.project.repository:
        raise WorkflowFailed(
            f"Project {validation.project.slug} has no GitHub connection with a performance workflow."
        )
    return connection


def run_workflow(validation: Validation, workdir: Path, *, keep_going: Callable[[float], bool]) -> Path:
    """Dispatch the performance workflow for this validation, follow the run to its end and
    return the path of its results. ``keep_going(elapsed)`` renews the lease; False stops."""
    connection = _connection(validation)
    client = GitHubClient(connection)
    repository = validation.project.repository
    correlation = str(validation.pk)
    started = time.monotonic()
    deadline = started + settings.PERFGATE_WORKFLOW_TIMEOUT_MINUTES * 60
    inputs = {
        "correlation_id": correlation,
        "environment": validation.environment.name,
        "git_hash": validation.git_hash,
        "build_id": validation.build_id,
    }
    run_id = _with_retries(
        lambda: client.dispatch_workflow(
            repository, connection.performance_workflow, ref=connection.workflow_ref, inputs=inputs
        ),
        deadline,
        keep_going,
        started,
    )
    while run_id is None:
        found = _with_retries(
            lambda: client.find_dispatched_run(repository, correlation), deadline, keep_going, started
        )
        if found is not None:
            run_id = int(found["id"])
            break
        if time.monotonic() - started > FIND_RUN_SECONDS:
            raise WorkflowFailed(
                f"The dispatched workflow run was not found within {FIND_RUN_SECONDS} s; does the workflow's "
                "run-name include inputs.correlation_id?"
            )
        _pause(keep_going, started)
    context = {**validation.deployment_context, "workflowRunId": run_id}
    Validation.objects.filter(pk=validation.pk).update(deployment_context=context)
    while True:
        run = _with_retries(lambda: client.run(repository, run_id), deadline, keep_going, started)
        if run.get("status") == "completed":
            break
        if time.monotonic() > deadline:
            raise WorkflowFailed(
                f"The performance workflow run {run.get('html_url', run_id)} did not finish within "
                f"{settings.PERFGATE_WORKFLOW_TIMEOUT_MINUTES} minutes."
            )
        _pause(keep_going, started)
    if run.get("conclusion") != "success":
        raise WorkflowFailed(
            f"The performance workflow run {run.get('html_url', run_id)} ended {run.get('conclusion')}: "
            "no results."
        )
    return fetch_results(client, repository, run_id, connection.artifact_name, workdir)


def workflow_runner(run: ScenarioRun) -> ResultSet:
    """The runner of the "GitHub workflow" tool: the test runs in the project's performance
    workflow on GitHub Actions; this worker follows it, holding the lease, and evaluates its
    results artifact."""

    def keep_going(elapsed: float) -> bool:
        run.tick(elapsed, 0)
        return not run.should_stop()

    submetrics, percentiles = run.parser_needs
    with tempfile.TemporaryDirectory(prefix="perfgate-workflow-") as workdir:
        try:
            path = run_workflow(run.validation, Path(workdir), keep_going=keep_going)
        except WorkflowFailed as exc:
            raise RunFailed(str(exc)) from None
        try:
            return parse_results(path, name=path.name, submetrics=submetrics, percentiles=percentiles)
        except ParseError as exc:
            raise RunFailed(f"The workflow's results could not be read: {exc}") from None


def _pause(keep_going, started: float) -> None:
    time.sleep(poll_seconds())
    if not keep_going(time.monotonic() - started):
        raise Stopped


def _with_retries(action, deadline: float, keep_going, started: float):
    """GitHub being briefly down does not end a test that is running fine: retry until the
    deadline, waiting as long as GitHub asks."""
    attempt = 0
    while True:
        try:
            return action()
        except http.TryLater as exc:
            attempt += 1
            wait = max(exc.retry_after or 0.0, min(60.0, 2.0**attempt))
            if time.monotonic() + wait > deadline:
                raise WorkflowFailed(f"GitHub did not answer in time: {exc}") from None
            logger.info("GitHub: %s; trying again in %.0f s", exc, wait)
            time.sleep(wait)
            if not keep_going(time.monotonic() - started):
                raise Stopped from None
        except http.Refused as exc:
            raise WorkflowFailed(f"GitHub refused: {exc}") from None


def workflow_run_results(*, connection: GitHubConnection, run: dict, workdir: Path) -> Path | str:
    """A ``workflow_run`` of the performance workflow completed; step one, outside any
    transaction because it downloads: the results of a run perfgate did not start (a run it
    dispatched is followed by its worker), or a sentence saying why there is nothing to evaluate."""
    project = connection.project
    run_id = int(run["id"])
    followed = Validation.objects.filter(project=project, deployment_context__workflowRunId=run_id).first()
    if followed is not None:
        return f"run {run_id} belongs to validation {followed.pk}, followed by its worker"
    if not project.environments.filter(name=connection.workflow_environment).exists():
        return f"the project has no environment {connection.workflow_environment!r}"
    if run.get("conclusion") != "success":
        return f"run {run_id} ended {run.get('conclusion')}; nothing to evaluate"
    try:
        return fetch_results(
            GitHubClient(connection), project.repository, run_id, connection.artifact_name, workdir
        )
    except WorkflowFailed as exc:
        return f"run {run_id}: {exc}"


def workflow_run_evaluate(*, connection: GitHubConnection, run: dict, results: Path, actor: Actor) -> str:
    """Step two, in the caller's transaction: evaluate the downloaded results as a validation of
    ``workflow_environment`` (build ``workflow-run-<id>``)."""
    project = connection.project
    run_id = int(run["id"])
    try:
        validation, _ = validation_request(
            project=project,
            environment=project.environments.get(name=connection.workflow_environment),
            build_id=f"workflow-run-{run_id}",
            git_hash=str(run.get("head_sha", "")),
            results=results,
            results_name=results.name,
            actor=actor,
            deployment_context={
                "provider": "github",
                "repository": project.repository,
                "ref": run.get("head_branch") or "",
                "pullRequest": next((pr.get("number") for pr in run.get("pull_requests") or []), None),
                "runUrl": run.get("html_url"),
                "workflowRunId": run_id,
            },
        )
    except ServiceError as exc:
        return f"run {run_id}: {exc}"
    return f"run {run_id} evaluated: validation {validation.pk} {validation.status}"


def validation_rerun(*, original: Validation, actor: Actor, delivery_id: str) -> str:
    """``check_run`` rerequested: validate the same build again (a new validation, so the first
    outcome stays on record). The same delivery twice gives the same rerun."""
    build_id = f"{original.build_id[:150]}~rerun-{delivery_id[:12]}"
    try:
        validation, created = validation_request(
            project=original.project,
            environment=original.environment,
            build_id=build_id,
            git_hash=original.git_hash,
            actor=actor,
            test_config={k: v for k, v in original.test_config.items() if k != "capped"},
            deployment_context={k: v for k, v in original.deployment_context.items() if k != "workflowRunId"},
        )
    except ServiceError as exc:
        return f"rerun refused: {exc}"
    return f"rerun {'queued' if created else 'exists'}: validation {validation.pk}"
