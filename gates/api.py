"""The CI API: one view per endpoint, each with its own input and output serializers.

Views authenticate (API tokens), validate input strictly, call one service or selector and
render. Paths and field names are the contract in PRODUCT.md.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import re
from dataclasses import dataclass

import orjson
from asgiref.sync import AsyncToSync, SyncToAsync, sync_to_async
from django.db import connection
from django.http import JsonResponse, QueryDict
from django.urls import reverse
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
    extend_schema_serializer,
)
from rest_framework import exceptions, serializers, status
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from baselines.services import baseline_request
from gates import selectors, waiting
from gates.documents import public_url, summary_metrics, validation_links, watch_document
from gates.errors import NotFound, NotPermitted, ServiceError
from gates.models import (
    BypassRequest,
    Environment,
    Notice,
    Probe,
    Project,
    Rollback,
    Severity,
    Validation,
    Verdict,
    Watch,
)
from gates.results import FORMATS
from gates.results.common import MAX_JSON_DEPTH, holds_nul, nested_too_deep
from gates.services import bypass_request, validation_block, validation_cancel, validation_request
from gates.services.watches import watch_start
from integrations.alerts import ALERT_OUTCOMES, alerts_receive
from integrations.auth import CanBlock, IsMonitoringToken, IsOpsToken
from integrations.models import ApiToken
from perfgate_site.api import StrictSerializer, error_body, json_object
from perfgate_site.limits import LimitedJSONParser

logger = logging.getLogger(__name__)

SLUG = r"^[a-z0-9][a-z0-9-]{0,99}$"
BUILD_ID = r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,199}$"
GIT_HASH = r"^[0-9a-fA-F]{7,64}$"
MAX_WAIT_SECONDS = 30
_BUILD_ID_PATH = re.compile(BUILD_ID)


@extend_schema_serializer(component_name="Error")
class ErrorSerializer(serializers.Serializer):
    """The one error shape of every 4xx."""

    error = serializers.CharField()
    detail = serializers.CharField()
    fields = serializers.DictField(child=serializers.ListField(child=serializers.CharField()))


def errors(*codes: int) -> dict:
    return {code: OpenApiResponse(ErrorSerializer) for code in (401, 429, *codes)}


class OptionalChoiceField(serializers.ChoiceField):
    """A choice that is blank until it is made, shown as null."""

    def to_representation(self, value):
        return super().to_representation(value) or None


class StoredList(serializers.ListSerializer):
    """A list the gate stored in this very shape when it decided (``gates.documents.report_of``):
    shown as stored, not rebuilt item by item on every poll. The schema still describes it."""

    def to_representation(self, data):
        return data


class StoredDict(serializers.DictField):
    """A mapping stored in this very shape when the validation was decided; shown as stored."""

    def to_representation(self, value):
        return value


@extend_schema_serializer(component_name="Check")
class CheckSerializer(serializers.Serializer):
    """One explained check, as ``gates.documents.report_of`` stores it."""

    class Meta:
        list_serializer_class = StoredList

    rule = serializers.CharField()
    kind = serializers.ChoiceField(["absolute", "relative", "load"])
    severity = serializers.ChoiceField(Severity.values)
    metric = serializers.CharField()
    aggregation = serializers.CharField()
    verdict = serializers.ChoiceField(Verdict.values)
    observed = serializers.FloatField(allow_null=True)
    baseline = serializers.FloatField(allow_null=True)
    limit = serializers.FloatField(allow_null=True)
    changePct = serializers.FloatField(allow_null=True)
    pValue = serializers.FloatField(allow_null=True)
    reason = serializers.CharField()


@extend_schema_serializer(component_name="Watch")
class WatchSerializer(serializers.Serializer):
    """A watch of a deployment after it reached production: its state, policy, probe counters,
    last probe, rollback and latest notices. The one definition of the watch document (built by
    ``gates.documents.watch_document``): ``POST …/watch`` answers with it and ``status`` shows it
    as ``watch``."""

    @extend_schema_serializer(component_name="WatchPolicy")
    class Policy(serializers.Serializer):
        """The environment's watch policy when the watch began (perfgate.yaml's names)."""

        scenario = serializers.CharField(allow_null=True, help_text="The probe scenario.")
        initialDelay = serializers.IntegerField(help_text="Seconds from the start to the first probe.")
        interval = serializers.IntegerField(help_text="Seconds between probes.")
        window = serializers.IntegerField(help_text="Seconds watched, from the first probe.")
        failureLimit = serializers.IntegerField(help_text="More failed probes than this: degraded.")
        consecutive = serializers.BooleanField(help_text="Only failures in a row count.")
        inconclusiveLimit = serializers.IntegerField(
            help_text="More inconclusive probes than this: a person decides."
        )
        consecutiveErrorLimit = serializers.IntegerField(
            help_text="More probes in a row that cannot run than this: the watch stops (never a rollback)."
        )
        dryRun = serializers.BooleanField(help_text="Record what would be done; never roll back.")
        autoRollback = serializers.BooleanField(
            help_text="A degraded deployment is rolled back at once; otherwise a person approves."
        )

    @extend_schema_serializer(component_name="WatchProbeCounts")
    class Probes(serializers.Serializer):
        run = serializers.IntegerField()
        failures = serializers.IntegerField()
        consecutiveFailures = serializers.IntegerField()
        inconclusive = serializers.IntegerField()
        errors = serializers.IntegerField(help_text="Probes that could not run or measured nothing.")
        consecutiveErrors = serializers.IntegerField()

    @extend_schema_serializer(component_name="WatchProbe")
    class LastProbe(serializers.Serializer):
        number = serializers.IntegerField()
        trigger = serializers.ChoiceField(Probe.Trigger.values)
        outcome = serializers.ChoiceField(Probe.Outcome.values)
        reason = serializers.CharField(allow_blank=True)
        finishedAt = serializers.DateTimeField()

    @extend_schema_serializer(component_name="WatchRollback")
    class RollbackDocument(serializers.Serializer):
        state = serializers.ChoiceField(Rollback.State.values)
        trigger = serializers.ChoiceField(Rollback.Trigger.values)
        via = serializers.CharField(allow_blank=True, help_text='"vercel" or "github" once one took it.')
        targetBuildId = serializers.CharField(
            allow_null=True, help_text="The earlier passed production build it goes back to."
        )
        reason = serializers.CharField(allow_blank=True)
        detail = serializers.CharField(allow_blank=True)
        decidedBy = serializers.CharField(allow_blank=True)
        finishedAt = serializers.DateTimeField(allow_null=True)

    @extend_schema_serializer(component_name="WatchNotice")
    class NoticeDocument(serializers.Serializer):
        level = serializers.ChoiceField(Notice.Level.values)
        title = serializers.CharField()
        createdAt = serializers.DateTimeField()

    watchId = serializers.IntegerField()
    validationId = serializers.UUIDField()
    project = serializers.CharField()
    environment = serializers.CharField()
    buildId = serializers.CharField()
    state = serializers.ChoiceField(Watch.State.values)
    stateReason = serializers.CharField(allow_blank=True)
    source = serializers.ChoiceField(Watch.Source.values)
    deploymentId = serializers.CharField(allow_blank=True)
    targetUrl = serializers.CharField(help_text="What the probes hit.")
    startedAt = serializers.DateTimeField()
    nextProbeAt = serializers.DateTimeField(allow_null=True, help_text="Null once the watch has ended.")
    endsAt = serializers.DateTimeField(help_text="The window's end: no scheduled probe starts later.")
    finishedAt = serializers.DateTimeField(allow_null=True)
    dryRun = serializers.BooleanField()
    wouldRollBack = serializers.BooleanField(help_text="Dry run: a real watch would have rolled back.")
    policy = Policy()
    probes = Probes()
    baseline = serializers.CharField(help_text="Where the probe baseline comes from.")
    lastProbe = LastProbe(allow_null=True)
    rollback = RollbackDocument(allow_null=True)
    notices = NoticeDocument(many=True, help_text="The latest notices, newest first (at most 5).")

    def to_representation(self, watch):
        return super().to_representation(watch_document(watch))


_WATCH_DOCUMENT = WatchSerializer()


def _watch_of(validation: Validation) -> Watch | None:
    """The watch of a validation's deployment, if it has one: one query, and none at all while
    the validation is pending (a deployment is watched only once it was let out)."""
    if validation.is_pending:
        return None
    watch = (
        Watch.objects.filter(validation_id=validation.pk)
        .select_related("rollback__target_validation")
        .order_by("-created_at")
        .first()
    )
    if watch is not None:
        # The validation as the caller read it, with what it already knows of its relations.
        watch.validation, watch.project, watch.environment = (
            validation,
            validation.project,
            validation.environment,
        )
    return watch


@extend_schema_serializer(component_name="Validation")
class ValidationSerializer(serializers.Serializer):
    """A validation as CI sees it (status, verdict, deploymentAllowed) with its explained checks.

    The one definition of the validation document: every endpoint that shows a validation
    renders it with this serializer, and the OpenAPI schema is generated from it. A new field is
    one line here.
    """

    @extend_schema_serializer(component_name="ValidationLinks")
    class Links(serializers.Serializer):
        """Absolute under PERFGATE_BASE_URL when that is set; paths otherwise."""

        status = serializers.CharField()
        regression = serializers.CharField()
        admin = serializers.CharField()
        chart = serializers.CharField()

        def to_representation(self, validation):
            return validation_links(validation, public=True)

    @extend_schema_serializer(component_name="ValidationProgress")
    class Progress(serializers.Serializer):
        @extend_schema_serializer(component_name="ABTestProgress")
        class ABTest(serializers.Serializer):
            """Gate-run mode: the A/B loop so far (``gates.loadtest.ab.ABLoop.progress``)."""

            @extend_schema_serializer(component_name="ABTestCheckProgress")
            class Check(serializers.Serializer):
                metric = serializers.CharField(help_text='The rule\'s key, e.g. "http_req_duration p(95)".')
                estimatePct = serializers.FloatField(help_text="The change over the reference so far, in %.")
                intervalPct = serializers.ListField(
                    child=serializers.FloatField(allow_null=True),
                    min_length=2,
                    max_length=2,
                    help_text="Its interval [low, high] in %; null where too few pairs bound it.",
                )

            pairs = serializers.IntegerField(help_text="Pairs of repetitions done.")
            maxPairs = serializers.IntegerField(help_text="The most pairs the loop may run.")
            checks = Check(many=True, help_text="Per key relative rule, from the second pair on.")

        elapsedSeconds = serializers.FloatField()
        requests = serializers.IntegerField()
        requestRate = serializers.FloatField()
        leaseExpired = serializers.BooleanField(
            help_text="True when the worker stopped renewing its lease: it is lost, and the validation "
            "is about to be ended as an error (statusReason says so)."
        )
        abTest = ABTest(required=False, help_text="Only in gate-run mode, while the A/B loop runs.")

    @extend_schema_serializer(component_name="ABComparison")
    class Comparison(serializers.Serializer):
        """Gate-run mode's outcome: how the A/B loop ended and what it cost (``report.comparison``)."""

        verdict = serializers.ChoiceField(["pass", "warn", "fail", "inconclusive"])
        pairs = serializers.IntegerField(help_text="Pairs of repetitions run (ABBA order).")
        stoppedBy = serializers.CharField(
            allow_blank=True, help_text='Empty when decided; "max pairs" or "load-time limit" otherwise.'
        )
        loadSeconds = serializers.FloatField(help_text="Seconds of load on both sides, warm-ups included.")
        repetitionSeconds = serializers.FloatField(help_text="Length of one repetition.")

    validationId = serializers.UUIDField(source="pk")
    project = serializers.CharField(source="project.slug")
    buildId = serializers.CharField(source="build_id")
    environment = serializers.CharField(source="environment.name")
    gitHash = serializers.CharField(source="git_hash")
    scenario = serializers.CharField(source="scenario.name", allow_null=True)
    status = serializers.ChoiceField(Validation.Status.values)
    verdict = OptionalChoiceField(Verdict.values, allow_null=True)
    deploymentAllowed = serializers.BooleanField(source="deployment_allowed", allow_null=True)
    wouldBlock = serializers.BooleanField(source="would_block")
    statusReason = serializers.CharField(source="live_status_reason", allow_blank=True)
    metrics = StoredDict(
        source="report.metrics", default=dict, child=serializers.DictField(child=serializers.FloatField())
    )
    checks = CheckSerializer(source="report.checks", default=list, many=True)
    blockingReasons = serializers.ListField(source="blocking_reasons", child=serializers.CharField())
    notices = serializers.ListField(
        source="report.notices",
        default=list,
        child=serializers.CharField(),
        help_text='What every check table shows above the checks, e.g. "relative rules are not '
        'active: no baseline since 2026-11-02".',
    )
    comparison = Comparison(
        source="report.comparison",
        default=None,
        allow_null=True,
        help_text="Gate-run mode only: the A/B loop's outcome; null in history mode.",
    )
    progress = Progress(source="live_progress", allow_null=True)
    watch = serializers.SerializerMethodField(
        help_text="The watch of this deployment after it reached production (POST …/watch, a Vercel "
        "promotion or a GitHub deployment); null when it is not watched."
    )
    estimatedCompletion = serializers.DateTimeField(source="live_estimated_completion", allow_null=True)
    createdAt = serializers.DateTimeField(source="created_at")
    startedAt = serializers.DateTimeField(source="started_at", allow_null=True)
    finishedAt = serializers.DateTimeField(source="finished_at", allow_null=True)
    links = Links(source="*")

    @extend_schema_field(WatchSerializer(allow_null=True))
    def get_watch(self, validation):
        watch = _watch_of(validation)
        return None if watch is None else _WATCH_DOCUMENT.to_representation(watch)


def scope(
    token: ApiToken,
    project_slug: str | None,
    environment_name: str | None,
    *,
    environment_required: bool = True,
) -> tuple[Project, Environment | None]:
    """The project and environment a request names, as the token may see them: another
    project is not found (404), an environment outside the token's list is forbidden (403)."""
    if project_slug and project_slug != token.project.slug:
        raise NotFound(f"No project {project_slug!r}.")
    project = token.project
    if not environment_name:
        if environment_required:
            raise ServiceError(
                "environment is required.", fields={"environment": ["This field is required."]}
            )
        return project, None
    environment = project.environments.filter(name=environment_name).first()
    if environment is None:
        raise NotFound(f"Project {project.slug} has no environment {environment_name!r}.")
    if not token.allows_environment(environment.name):
        raise NotPermitted(f"This token may not touch {project.slug}/{environment.name}.")
    return project, environment


class TestConfigSerializer(StrictSerializer):
    """What CI may choose about the test: a registered scenario, a target, less load, more rules."""

    scenario = serializers.CharField(max_length=100, required=False)
    targetUrl = serializers.URLField(max_length=500, required=False)
    referenceUrl = serializers.URLField(
        max_length=500,
        required=False,
        help_text="Gate-run mode: the deployment to compare with side by side (e.g. production); "
        "allowlisted like targetUrl. Relative rules then decide on interleaved A/B repetitions.",
    )
    vus = serializers.IntegerField(min_value=1, max_value=100_000, required=False)
    duration = serializers.CharField(max_length=20, required=False, help_text='k6 duration, e.g. "60s"')
    thresholds = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField(max_length=100), max_length=20),
        required=False,
        help_text='Extra k6 thresholds, e.g. {"http_req_duration": ["p(95)<350"]}; they only add checks.',
    )


class DeploymentContextSerializer(StrictSerializer):
    """Where the build comes from; recorded with the validation, shown in reports."""

    provider = serializers.ChoiceField(["github", "vercel", "gitlab", "other"], required=False)
    repository = serializers.CharField(max_length=200, required=False, allow_blank=True, allow_null=True)
    ref = serializers.CharField(max_length=255, required=False, allow_blank=True, allow_null=True)
    pullRequest = serializers.IntegerField(min_value=1, required=False, allow_null=True)
    deploymentId = serializers.CharField(max_length=100, required=False, allow_null=True, allow_blank=True)
    deploymentUrl = serializers.URLField(max_length=500, required=False, allow_null=True, allow_blank=True)
    actor = serializers.CharField(max_length=100, required=False, allow_blank=True, allow_null=True)
    runUrl = serializers.URLField(max_length=500, required=False, allow_null=True, allow_blank=True)


# Serializers are stateless once their fields are bound; building the fields is most of what a
# new one costs, and CI polls the status all the time, so one instance renders every validation.
_VALIDATION_DOCUMENT = ValidationSerializer()


def validation_response(validation: Validation, code: int = status.HTTP_200_OK) -> Response:
    return Response(_VALIDATION_DOCUMENT.to_representation(validation), status=code)


class ValidateView(APIView):
    """Start (or repeat) a validation: evaluate uploaded results now, or queue a test run."""

    parser_classes = [LimitedJSONParser, MultiPartParser]

    @extend_schema_serializer(component_name="ValidateRequest")
    class InputSerializer(StrictSerializer):
        project = serializers.RegexField(SLUG, max_length=100)
        buildId = serializers.RegexField(BUILD_ID, max_length=200)
        environment = serializers.ChoiceField(Environment.Name.values)
        gitHash = serializers.RegexField(GIT_HASH, max_length=64)
        testConfig = TestConfigSerializer(required=False, allow_null=True)
        results = serializers.JSONField(
            required=False,
            allow_null=True,
            help_text="The tool's output inline: a JSON document, or text (NDJSON, CSV). Large raw output: "
            "send multipart/form-data with a `request` part (this JSON) and a `results` file part.",
        )
        resultsFormat = serializers.ChoiceField(FORMATS, required=False, allow_null=True)
        deploymentContext = DeploymentContextSerializer(required=False, allow_null=True)

    @extend_schema_serializer(component_name="ValidateMultipartRequest")
    class MultipartInput(StrictSerializer):
        request = serializers.CharField(help_text="The JSON request document (without results).")
        results = serializers.FileField(help_text="The results file, streamed to disk on arrival.")

    @extend_schema(
        operation_id="validate",
        request={"application/json": InputSerializer, "multipart/form-data": MultipartInput},
        parameters=[OpenApiParameter("Idempotency-Key", str, OpenApiParameter.HEADER, required=False)],
        responses={
            200: ValidationSerializer,
            202: ValidationSerializer,
            **errors(400, 403, 404, 413, 415, 422),
        },
    )
    def post(self, request):
        data, results, results_name, upload_digest = self._read(request)
        serializer = self.InputSerializer(data=data)
        serializer.is_valid(raise_exception=True)
        payload = serializer.validated_data
        project, environment = scope(request.auth, payload["project"], payload["environment"])
        if results is None and payload.get("results") is not None:
            results, upload_digest = _inline_results(payload["results"])
        validation, created = validation_request(
            project=project,
            environment=environment,
            build_id=payload["buildId"],
            git_hash=payload["gitHash"].lower(),
            actor=request.user.actor,
            test_config=dict(payload.get("testConfig") or {}),
            deployment_context=dict(payload.get("deploymentContext") or {}),
            results=results,
            results_format=payload.get("resultsFormat"),
            results_name=results_name,
            idempotency_key=request.headers.get("Idempotency-Key") or None,
            request_document=data,
            results_digest=upload_digest,
        )
        queued = created and validation.is_pending
        return validation_response(validation, status.HTTP_202_ACCEPTED if queued else status.HTTP_200_OK)

    def _read(self, request):
        """(request document, results path or None, file name, digest of the upload)."""
        if not request.content_type.startswith("multipart/"):
            if not isinstance(request.data, dict):
                raise serializers.ValidationError({"_": ["The request body must be a JSON object."]})
            return request.data, None, None, ""
        unknown = sorted((set(request.data) | set(request.FILES)) - {"request", "results"})
        if unknown:
            raise serializers.ValidationError(
                {name: ["Unknown part; send `request` and `results`."] for name in unknown}
            )
        form = self.MultipartInput(
            data={"request": request.data.get("request"), "results": request.FILES.get("results")}
        )
        form.is_valid(raise_exception=True)
        document = json_object(form.validated_data["request"], what="The `request` part")
        if "results" in document:
            raise serializers.ValidationError(
                {"request.results": ["Send results either inline or as a file."]}
            )
        upload = form.validated_data["results"]
        return document, upload.temporary_file_path(), upload.name, getattr(upload, "sha256", "")


def _inline_results(results) -> tuple[io.BytesIO, str]:
    """Inline results as a stream for the parsers: a JSON document as JSON, text as its bytes."""
    raw = results.encode() if isinstance(results, str) else orjson.dumps(results)
    return io.BytesIO(raw), hashlib.sha256(raw).hexdigest()


@functools.lru_cache(maxsize=4096)
def _validated_query(serializer_class, query_string: str) -> dict:
    serializer = serializer_class(data=QueryDict(query_string).dict())
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


def _query(serializer_class, request) -> dict:
    """The request's query parameters, validated. CI polls the same URL over and over, and
    validation depends on the query string alone, so each distinct one is validated once."""
    return dict(_validated_query(serializer_class, request.META.get("QUERY_STRING", "")))


class StatusView(APIView):
    """The latest validation of a build, answered at once. With ``wait=N`` and a validation still
    queued or running, the response carries a ``LongPoll``: ``status_view``, the endpoint, then
    waits for the verdict without a thread and answers with the validation as it is by then."""

    class QuerySerializer(StrictSerializer):
        project = serializers.RegexField(SLUG, max_length=100, required=False)
        environment = serializers.ChoiceField(Environment.Name.values, required=False)
        wait = serializers.IntegerField(min_value=0, max_value=MAX_WAIT_SECONDS, required=False, default=0)

    @extend_schema(
        operation_id="status",
        parameters=[
            OpenApiParameter("buildId", str, OpenApiParameter.PATH, pattern=BUILD_ID),
            QuerySerializer,
        ],
        responses={200: ValidationSerializer, **errors(400, 403, 404)},
    )
    def get(self, request, buildId: str):  # the path parameter is named as in the contract
        build_id = buildId
        if not _BUILD_ID_PATH.fullmatch(build_id):
            # Such an id was never accepted, and a NUL byte in it would make PostgreSQL fail the query.
            raise NotFound(f"No build {build_id!r}: not a build id this API accepts.")
        query = _query(self.QuerySerializer, request)
        # The hot path of CI's polling: one prepared statement, the token's environments checked
        # on the row it found.
        token = request.auth
        project, _ = scope(token, query.get("project"), None, environment_required=False)
        environment_name = query.get("environment")
        if environment_name and not token.allows_environment(environment_name):
            raise NotPermitted(f"This token may not touch {project.slug}/{environment_name}.")
        validation = selectors.validation_for_build(project, build_id, environment_name)
        if not token.allows_environment(validation.environment.name):
            validation = _latest_allowed_validation(token, project, build_id)
        response = validation_response(validation)
        if query["wait"] and validation.is_pending:
            response.long_poll = LongPoll(validation, query["wait"], token.pk)
        return response


@dataclass(frozen=True)
class LongPoll:
    """What a status response still waits for, and whose wait it is (the per-token cap)."""

    validation: Validation
    seconds: int
    token_id: int


_STATUS_AT_ONCE = StatusView.as_view()


async def status_view(request, buildId: str):
    """``GET status/{buildId}``. StatusView authenticates, validates and answers in a thread, as
    every DRF view does; a long-poll then waits here, on the event loop, holding neither a thread
    nor a database connection, and its answer is read again and rendered the same way. Under WSGI
    Django runs this in a loop of its own, and it works the same."""
    response = await sync_to_async(_status_at_once)(request, buildId=buildId)
    long_poll = getattr(response, "long_poll", None)
    if long_poll is None:
        return response
    validation = long_poll.validation

    async def still_pending() -> bool:
        pending = await sync_to_async(_still_pending)(validation)
        _end_request_thread()
        return pending

    try:
        with waiting.waiter_slot(long_poll.token_id):
            await waiting.wait_for_decision(
                str(validation.pk), long_poll.seconds, still_pending=still_pending
            )
    except waiting.TooManyWaiters as exc:
        return _too_many_waiters(exc)
    response.data = await sync_to_async(_document_now)(validation)
    return response


# The schema generator documents the DRF view that status_view wraps.
status_view.cls = _STATUS_AT_ONCE.cls
status_view.initkwargs = _STATUS_AT_ONCE.initkwargs


def _status_at_once(request, buildId: str):
    response = _STATUS_AT_ONCE(request, buildId=buildId)
    if getattr(response, "long_poll", None) is not None:
        _release_connection()
    return response


def _still_pending(validation: Validation) -> bool:
    pending = selectors.validation_status(validation.pk) in Validation.PENDING_STATUSES
    _release_connection()
    return pending


def _document_now(validation: Validation) -> dict:
    return _VALIDATION_DOCUMENT.to_representation(selectors.validation_reread(validation))


def _release_connection() -> None:
    """Give the connection back (to the pool) before a wait of up to 30 s. A request never runs
    in a transaction (ATOMIC_REQUESTS is off); a test's transaction is left alone."""
    if not connection.in_atomic_block:
        connection.close()


def _end_request_thread() -> None:
    """Let the request's thread end before a wait. Under ASGI Django runs a request's sync code
    (middleware, DRF) in a thread of the request's own, kept until the request ends: idle, but one
    per waiter. The request's next sync call starts a new one.

    Not when a sync caller is still running in that thread, waiting for this view (under WSGI, or
    below a middleware that is not async-capable): that thread is held until the request ends."""
    if getattr(AsyncToSync.executors, "current", None) is not None:
        return
    context = SyncToAsync.thread_sensitive_context.get(None)
    executor = SyncToAsync.context_to_thread_executor.pop(context, None) if context else None
    if executor is not None:
        executor.shutdown(wait=False)


def _too_many_waiters(exc: waiting.TooManyWaiters) -> JsonResponse:
    response = JsonResponse(
        error_body("throttled", f"{exc} (retry in {waiting.RETRY_AFTER_SECONDS} s)"), status=429
    )
    response["Retry-After"] = str(waiting.RETRY_AFTER_SECONDS)
    return response


def _latest_allowed_validation(token: ApiToken, project: Project, build_id: str) -> Validation:
    """The latest validation of a build in the environments the token may see, when the latest of
    all is in one it may not. The build is the token's own project's, so saying that it exists
    only elsewhere leaks nothing: 403, as for naming that environment, not 404."""
    found = []
    for name in token.environments:
        try:
            found.append(selectors.validation_for_build(project, build_id, name))
        except NotFound:
            continue
    if not found:
        raise NotPermitted(f"Build {build_id!r} has no validation in an environment this token may touch.")
    return max(found, key=lambda validation: validation.created_at)


class BlockView(APIView):
    """Close the gate on a build by hand, with a reason."""

    permission_classes = [CanBlock]

    @extend_schema_serializer(component_name="BlockRequest")
    class InputSerializer(StrictSerializer):
        project = serializers.RegexField(SLUG, max_length=100)
        environment = serializers.ChoiceField(Environment.Name.values)
        buildId = serializers.RegexField(BUILD_ID, max_length=200)
        reason = serializers.CharField(max_length=2000)

    @extend_schema(
        operation_id="block",
        request=InputSerializer,
        responses={200: ValidationSerializer, **errors(400, 403, 404)},
    )
    def post(self, request):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        payload = serializer.validated_data
        project, environment = scope(request.auth, payload["project"], payload["environment"])
        validation = selectors.validation_for_build(project, payload["buildId"], environment.name)
        validation = validation_block(
            validation=validation, reason=payload["reason"], actor=request.user.actor
        )
        return validation_response(validation)


class CancelView(APIView):
    """Stop a queued or running validation, with a reason (ops only). A running test is stopped
    within seconds; the validation ends as an error, blocked or failed by policy."""

    permission_classes = [IsOpsToken]

    @extend_schema_serializer(component_name="CancelRequest")
    class InputSerializer(StrictSerializer):
        project = serializers.RegexField(SLUG, max_length=100)
        environment = serializers.ChoiceField(Environment.Name.values)
        buildId = serializers.RegexField(BUILD_ID, max_length=200)
        reason = serializers.CharField(max_length=2000)

    @extend_schema(
        operation_id="cancel",
        request=InputSerializer,
        responses={200: ValidationSerializer, **errors(400, 403, 404, 409)},
    )
    def post(self, request):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        payload = serializer.validated_data
        project, environment = scope(request.auth, payload["project"], payload["environment"])
        validation = selectors.validation_for_build(project, payload["buildId"], environment.name)
        validation = validation_cancel(
            validation=validation, reason=payload["reason"], actor=request.user.actor
        )
        return validation_response(validation)


@extend_schema_serializer(component_name="Bypass")
class BypassSerializer(serializers.Serializer):
    """A bypass request as the API shows it (its one definition)."""

    @extend_schema_serializer(component_name="BypassApproval")
    class Approval(serializers.Serializer):
        approver = serializers.CharField(source="approver.get_username")
        at = serializers.DateTimeField(source="created_at")

    class Links(serializers.DictField):
        def to_representation(self, bypass):
            return {"admin": public_url(reverse("admin:gates_bypassrequest_change", args=[bypass.pk]))}

    bypassId = serializers.UUIDField(source="pk")
    project = serializers.CharField(source="project.slug")
    environment = serializers.CharField(source="environment.name")
    buildId = serializers.CharField(source="build_id")
    validationId = serializers.UUIDField(source="validation_id")
    status = serializers.ChoiceField(BypassRequest.Status.values)
    justification = serializers.CharField()
    ticketUrl = serializers.CharField(source="ticket_url", allow_blank=True)
    requestedBy = serializers.CharField(source="requested_by")
    requiredApprovals = serializers.IntegerField(source="required_approvals")
    approvals = Approval(source="approvals.all", many=True)
    expiresAt = serializers.DateTimeField(source="expires_at")
    createdAt = serializers.DateTimeField(source="created_at")
    links = Links(source="*", child=serializers.CharField())


class BypassView(APIView):
    """Ask for an emergency bypass of a blocked build. Approval happens in the admin, by people
    other than the requester (and the token's owner) with approval rights on the project."""

    @extend_schema_serializer(component_name="BypassRequest")
    class InputSerializer(StrictSerializer):
        project = serializers.RegexField(SLUG, max_length=100)
        environment = serializers.ChoiceField(Environment.Name.values)
        buildId = serializers.RegexField(BUILD_ID, max_length=200)
        justification = serializers.CharField(max_length=4000)
        ticketUrl = serializers.URLField(max_length=500, required=False, allow_blank=True, default="")
        expiresInMinutes = serializers.IntegerField(min_value=1, max_value=24 * 60, required=False)
        requestedBy = serializers.CharField(
            max_length=100,
            required=False,
            allow_blank=True,
            default="",
            help_text="The person the CI job acts for; they may not approve.",
        )

    @extend_schema(
        operation_id="bypass",
        request=InputSerializer,
        responses={201: BypassSerializer, **errors(400, 403, 404, 409)},
    )
    def post(self, request):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        payload = serializer.validated_data
        project, environment = scope(request.auth, payload["project"], payload["environment"])
        validation = selectors.validation_for_build(project, payload["buildId"], environment.name)
        bypass = bypass_request(
            validation=validation,
            justification=payload["justification"],
            actor=request.user.actor,
            ticket_url=payload["ticketUrl"],
            expires_in_minutes=payload.get("expiresInMinutes"),
            requested_for=payload["requestedBy"],
        )
        return Response(BypassSerializer(bypass).data, status=status.HTTP_201_CREATED)


class HistoryView(APIView):
    """Validations and their metrics over time, newest first, one cursor page at a time."""

    class QuerySerializer(StrictSerializer):
        project = serializers.RegexField(SLUG, max_length=100, required=False)
        environment = serializers.ChoiceField(Environment.Name.values, required=False)
        scenario = serializers.CharField(max_length=100, required=False)
        metric = serializers.CharField(
            max_length=300,
            required=False,
            help_text="A series, e.g. http_req_duration or http_req_duration{name:rsvp}",
        )
        branch = serializers.CharField(max_length=255, required=False)
        since = serializers.DateTimeField(required=False)
        until = serializers.DateTimeField(required=False)
        cursor = serializers.CharField(max_length=500, required=False)
        limit = serializers.IntegerField(min_value=1, max_value=500, required=False, default=50)

    @extend_schema_serializer(component_name="HistoryPage")
    class OutputSerializer(serializers.Serializer):
        @extend_schema_serializer(component_name="HistoryItem")
        class Item(serializers.Serializer):
            validationId = serializers.UUIDField(source="pk")
            buildId = serializers.CharField(source="build_id")
            gitHash = serializers.CharField(source="git_hash")
            branch = serializers.CharField(allow_blank=True)
            environment = serializers.CharField(source="environment.name")
            scenario = serializers.CharField(source="scenario.name", allow_null=True)
            status = serializers.ChoiceField(Validation.Status.values)
            verdict = OptionalChoiceField(Verdict.values, allow_null=True)
            deploymentAllowed = serializers.BooleanField(source="deployment_allowed", allow_null=True)
            createdAt = serializers.DateTimeField(source="created_at")
            finishedAt = serializers.DateTimeField(source="finished_at", allow_null=True)
            metrics = serializers.DictField(child=serializers.DictField(child=serializers.FloatField()))

        results = Item(many=True)
        next = serializers.CharField(allow_null=True, help_text="The next page's URL; null on the last page.")

    @extend_schema(
        operation_id="history",
        parameters=[QuerySerializer],
        responses={200: OutputSerializer, **errors(400, 403, 404)},
    )
    def get(self, request):
        query = _query(self.QuerySerializer, request)
        project, environment = scope(
            request.auth, query.get("project"), query.get("environment"), environment_required=False
        )
        # A token without a list of environments sees them all.
        environments = [environment.name] if environment is not None else request.auth.environments or None
        page, next_cursor = selectors.history_page(
            project=project,
            environments=environments,
            scenario=query.get("scenario"),
            metric=query.get("metric"),
            branch=query.get("branch"),
            since=query.get("since"),
            until=query.get("until"),
            cursor=query.get("cursor"),
            limit=query["limit"],
        )
        next_url = None
        if next_cursor:
            params = request.query_params.copy()
            params["cursor"] = next_cursor
            next_url = f"{request.path}?{params.urlencode()}"
        return Response(self.OutputSerializer({"results": page, "next": next_url}).data)


class BaselineView(APIView):
    """Make a new baseline version from a passed validation, or from uploaded results."""

    permission_classes = [IsOpsToken]

    @extend_schema_serializer(component_name="BaselineRequest")
    class InputSerializer(StrictSerializer):
        project = serializers.RegexField(SLUG, max_length=100)
        environment = serializers.ChoiceField(Environment.Name.values)
        buildId = serializers.RegexField(BUILD_ID, max_length=200)
        gitHash = serializers.RegexField(
            GIT_HASH,
            max_length=64,
            required=False,
            help_text="Required with results: the build they measured.",
        )
        pin = serializers.BooleanField(required=False, default=False)
        reason = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")
        testConfig = TestConfigSerializer(required=False, allow_null=True)
        results = serializers.JSONField(required=False, allow_null=True)
        resultsFormat = serializers.ChoiceField(FORMATS, required=False, allow_null=True)

    @extend_schema_serializer(component_name="Baseline")
    class OutputSerializer(serializers.Serializer):
        class Metrics(serializers.DictField):
            def to_representation(self, baseline):
                return summary_metrics(baseline.metrics.values_list("series", "aggregation", "value"))

        project = serializers.CharField(source="project.slug")
        environment = serializers.CharField(source="environment.name")
        scenario = serializers.CharField(source="scenario.name")
        version = serializers.IntegerField()
        pinned = serializers.BooleanField()
        sourceBuildId = serializers.CharField(source="source_validation.build_id")
        runs = serializers.IntegerField(source="runs.count")
        metrics = Metrics(source="*", child=serializers.DictField(child=serializers.FloatField()))
        createdAt = serializers.DateTimeField(source="created_at")

    @extend_schema(
        operation_id="baseline",
        request=InputSerializer,
        responses={201: OutputSerializer, **errors(400, 403, 404, 409)},
    )
    def post(self, request):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        payload = serializer.validated_data
        project, environment = scope(request.auth, payload["project"], payload["environment"])
        results = None
        if payload.get("results") is not None:
            results, _ = _inline_results(payload["results"])
        baseline = baseline_request(
            project=project,
            environment=environment,
            build_id=payload["buildId"],
            actor=request.user.actor,
            pin=payload["pin"],
            reason=payload["reason"],
            git_hash=(payload.get("gitHash") or "").lower(),
            results=results,
            results_format=payload.get("resultsFormat"),
            test_config=dict(payload.get("testConfig") or {}),
        )
        return Response(self.OutputSerializer(baseline).data, status=status.HTTP_201_CREATED)


class RegressionView(APIView):
    """Every metric of a validation next to its baseline."""

    class QuerySerializer(StrictSerializer):
        project = serializers.RegexField(SLUG, max_length=100, required=False)
        environment = serializers.ChoiceField(Environment.Name.values)
        buildId = serializers.RegexField(BUILD_ID, max_length=200)

    @extend_schema_serializer(component_name="Regression")
    class OutputSerializer(serializers.Serializer):
        @extend_schema_serializer(component_name="RegressionBaseline")
        class BaselineRef(serializers.Serializer):
            version = serializers.IntegerField()
            pinned = serializers.BooleanField()
            runs = serializers.IntegerField()
            createdAt = serializers.DateTimeField()

        @extend_schema_serializer(component_name="RegressionComparison")
        class Comparison(serializers.Serializer):
            metric = serializers.CharField()
            aggregation = serializers.CharField()
            unit = serializers.CharField(allow_blank=True)
            observed = serializers.FloatField()
            baseline = serializers.FloatField()
            baselineStdev = serializers.FloatField(allow_null=True)
            changePct = serializers.FloatField(allow_null=True)
            worseWhen = serializers.ChoiceField(["up", "down"])
            worse = serializers.BooleanField()
            verdict = serializers.CharField(allow_null=True)

        validationId = serializers.UUIDField()
        project = serializers.CharField()
        environment = serializers.CharField()
        buildId = serializers.CharField()
        baseline = BaselineRef(allow_null=True)
        comparisons = Comparison(many=True)

    @extend_schema(
        operation_id="regression",
        parameters=[QuerySerializer],
        responses={200: OutputSerializer, **errors(400, 403, 404)},
    )
    def get(self, request):
        query = _query(self.QuerySerializer, request)
        project, environment = scope(request.auth, query.get("project"), query["environment"])
        validation = selectors.validation_for_build(project, query["buildId"], environment.name)
        return Response(self.OutputSerializer(selectors.regression_report(validation)).data)


class WatchView(APIView):
    """Start watching a deployment once it serves production: gentle probes every interval for a
    window, and a rollback by policy when it degrades. The validation of the build must have let
    the deployment out. Asking again for the same build answers with its watch (200)."""

    @extend_schema_serializer(component_name="WatchRequest")
    class InputSerializer(StrictSerializer):
        project = serializers.RegexField(SLUG, max_length=100)
        buildId = serializers.RegexField(BUILD_ID, max_length=200)
        environment = serializers.ChoiceField(Environment.Name.values, required=False, default="production")
        deploymentUrl = serializers.URLField(
            max_length=500,
            required=False,
            allow_blank=True,
            default="",
            help_text="What the probes hit (allowlisted like a targetUrl); default: the validation's "
            "targetUrl, else the probe scenario's.",
        )
        deploymentId = serializers.CharField(
            max_length=200,
            required=False,
            allow_blank=True,
            default="",
            help_text="The provider's deployment id; default: the validation's "
            "deploymentContext.deploymentId.",
        )
        baselineUrl = serializers.URLField(
            max_length=500,
            required=False,
            allow_blank=True,
            default="",
            help_text="The previous production deployment, probed for a baseline before the first probe "
            "when no earlier healthy watch gives one.",
        )

    @extend_schema(
        operation_id="watch",
        request=InputSerializer,
        responses={
            200: OpenApiResponse(WatchSerializer, description="The build's deployment was already watched."),
            201: OpenApiResponse(WatchSerializer, description="The watch started."),
            **errors(400, 403, 404, 409),
        },
    )
    def post(self, request):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        payload = serializer.validated_data
        project, environment = scope(request.auth, payload["project"], payload["environment"])
        validation = selectors.validation_for_build(project, payload["buildId"], environment.name)
        existed = validation.watches.exists()
        watch = watch_start(
            validation=validation,
            actor=request.user.actor,
            source=Watch.Source.CI,
            deployment_id=payload["deploymentId"],
            deployment_url=payload["deploymentUrl"],
            baseline_url=payload["baselineUrl"],
        )
        return Response(
            _WATCH_DOCUMENT.to_representation(watch),
            status=status.HTTP_200_OK if existed else status.HTTP_201_CREATED,
        )


class AlertsView(APIView):
    """Prometheus Alertmanager's webhook (payload version 4), with a ``monitoring`` token as its
    bearer (Alertmanager's ``http_config``). A firing alert whose labels name this token's project
    and one of its environments starts a rollback evaluation of the deployment watched there: a
    probe runs at once to confirm it (in a task; this answers at once). Resolved alerts are
    recorded. The body is read tolerantly: older senders leave fields out, newer ones add some
    (``notification_reason``), and what perfgate does not know is ignored.

    Each delivery is stored once (``WebhookDelivery``, provider ``alertmanager``), keyed by its
    group, status and alerts (fingerprint, startsAt, endsAt): Alertmanager sends a group again on
    every ``repeat_interval`` and retries failed sends, and a repeat changes nothing.

    The labels read are the settings ``PERFGATE_ALERT_PROJECT_LABEL`` (``service``) and
    ``PERFGATE_ALERT_ENVIRONMENT_LABEL`` (``environment``). In alertmanager.yml::

        receivers:
          - name: perfgate
            webhook_configs:
              - url: https://perfgate.example.com/api/ci-cd/performance/alerts
                http_config:
                  authorization: {type: Bearer, credentials_file: /etc/alertmanager/perfgate-token}
    """

    permission_classes = [IsMonitoringToken]

    @extend_schema_serializer(component_name="AlertmanagerWebhook")
    class InputSerializer(serializers.Serializer):
        """Alertmanager's webhook body; every field but ``alerts`` may be missing, and fields it
        does not list are ignored."""

        @extend_schema_serializer(component_name="AlertmanagerAlert")
        class Alert(serializers.Serializer):
            status = serializers.ChoiceField(["firing", "resolved"])
            labels = serializers.DictField(
                child=serializers.CharField(allow_blank=True), required=False, default=dict
            )
            annotations = serializers.DictField(
                child=serializers.CharField(allow_blank=True), required=False, default=dict
            )
            startsAt = serializers.CharField(required=False, allow_blank=True, default="")
            endsAt = serializers.CharField(required=False, allow_blank=True, default="")
            generatorURL = serializers.CharField(required=False, allow_blank=True, default="")
            fingerprint = serializers.CharField(required=False, allow_blank=True, default="")

        version = serializers.CharField(required=False, allow_blank=True)
        groupKey = serializers.CharField(required=False, allow_blank=True, default="")
        truncatedAlerts = serializers.IntegerField(
            required=False, min_value=0, default=0, help_text="Alerts Alertmanager left out (max_alerts)."
        )
        status = serializers.ChoiceField(["firing", "resolved"], required=False)
        receiver = serializers.CharField(required=False, allow_blank=True, default="")
        groupLabels = serializers.DictField(child=serializers.CharField(allow_blank=True), required=False)
        commonLabels = serializers.DictField(child=serializers.CharField(allow_blank=True), required=False)
        commonAnnotations = serializers.DictField(
            child=serializers.CharField(allow_blank=True), required=False
        )
        externalURL = serializers.CharField(required=False, allow_blank=True)
        notification_reason = serializers.CharField(required=False, allow_blank=True)
        alerts = Alert(many=True)

    @extend_schema_serializer(component_name="AlertsReceived")
    class OutputSerializer(serializers.Serializer):
        @extend_schema_serializer(component_name="AlertOutcome")
        class Outcome(serializers.Serializer):
            fingerprint = serializers.CharField(allow_blank=True)
            alertname = serializers.CharField(allow_blank=True)
            status = serializers.ChoiceField(["firing", "resolved"])
            project = serializers.CharField(allow_null=True)
            environment = serializers.CharField(allow_null=True)
            outcome = serializers.ChoiceField(
                list(ALERT_OUTCOMES),
                help_text="probe_queued: a probe confirms it now; rollback_decided: a rollback of that "
                "deployment was already decided, nothing more is done; recorded: a resolved alert; "
                "not_watched: no watched deployment there; ignored: the labels name nothing this "
                "token may act on.",
            )
            watchId = serializers.IntegerField(allow_null=True)
            detail = serializers.CharField()

        status = serializers.ChoiceField(
            ["processed", "ignored", "duplicate"],
            help_text="duplicate: this very delivery was received before, and nothing was done again.",
        )
        delivery = serializers.CharField(help_text="The delivery's key: a SHA-256 of its group and alerts.")
        truncatedAlerts = serializers.IntegerField()
        alerts = Outcome(many=True)

    @extend_schema(
        operation_id="alerts",
        summary="Prometheus Alertmanager webhook (a monitoring token only)",
        request=InputSerializer,
        responses={200: OutputSerializer, **errors(400, 403, 413)},
    )
    def post(self, request):
        data = request.data
        if nested_too_deep(data):
            raise exceptions.ParseError(
                f"The JSON is nested more than {MAX_JSON_DEPTH} levels deep (depth limit exceeded)."
            )
        if holds_nul(data):
            raise exceptions.ParseError(
                "The body holds a NUL character (\\u0000), which perfgate cannot store."
            )
        serializer = self.InputSerializer(data=data)
        serializer.is_valid(raise_exception=True)
        received = alerts_receive(
            token=request.auth, actor=request.user.actor, body=serializer.validated_data, payload=data
        )
        return Response(self.OutputSerializer(received).data)
