"""The gate's records: what is gated (projects, environments, scenarios, rules), what was asked
(validations), what was measured (runs, metric observations), what was decided (check results)
and the audit log of every decision.

State changes go through ``gates.services``; audit rows through ``gates.audit``.
"""

import math
import uuid

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, models
from django.db.models import Q
from django.utils import timezone

from gates import rules

# Defined once, in the pure rule grammar; ``from gates.models import Verdict`` is the same enum.
from gates.rules import Severity, Verdict


class ConfigSourced(models.Model):
    """Settings that `manage.py apply_config` may own: the admin shows which file set them."""

    config_source = models.CharField(
        max_length=500,
        blank=True,
        help_text="The perfgate.yaml that last set this; empty when it was made in the admin. "
        "Edits made here are overwritten the next time that file is applied.",
    )

    class Meta:
        abstract = True


class Project(ConfigSourced):
    """A deployable service, with the hosts its load tests may target."""

    slug = models.SlugField(max_length=100, unique=True)
    name = models.CharField(max_length=200)
    repository = models.CharField(max_length=200, blank=True, help_text="GitHub owner/name.")
    vercel_project_id = models.CharField(max_length=100, blank=True)
    allowed_hosts = models.JSONField(
        default=list,
        blank=True,
        help_text='Hosts load tests may hit: exact names or wildcards such as "*.vercel.app".',
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["slug"]
        permissions = [
            ("approve_bypass", "Can approve emergency bypasses"),
            ("block_deployment", "Can block a deployment by hand"),
            ("change_thresholds", "Can change thresholds and scenarios"),
            ("trigger_rollback", "Can trigger a rollback"),
            ("view_every_project", "Can view every project (auditors)"),
        ]

    def __str__(self):
        return self.slug


class Environment(ConfigSourced):
    """Staging or production of one project, with its policy.

    ``mode`` enforce blocks; shadow only records what enforcement would have done.
    ``fail_closed`` decides whether an error or an inconclusive verdict blocks.
    """

    class Name(models.TextChoices):
        STAGING = "staging"
        PRODUCTION = "production"

    class Mode(models.TextChoices):
        ENFORCE = "enforce"
        SHADOW = "shadow"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="environments")
    name = models.CharField(max_length=20, choices=Name.choices)
    mode = models.CharField(max_length=10, choices=Mode.choices, default=Mode.ENFORCE)
    fail_closed = models.BooleanField(
        default=False, help_text="Block when no verdict can be reached (error or inconclusive)."
    )
    require_staging_pass = models.BooleanField(
        default=False, help_text="A passing staging validation of the same git hash is required first."
    )
    bypass_approvals = models.PositiveSmallIntegerField(
        default=1, help_text="Distinct approvers an emergency bypass needs."
    )
    auto_baseline = models.BooleanField(
        default=True, help_text="A validation whose verdict is pass becomes the next baseline version."
    )
    auto_rollback = models.BooleanField(
        default=False,
        help_text="A watch that finds the deployment degraded rolls it back at once; otherwise the "
        "rollback is proposed and waits for someone with trigger_rollback.",
    )
    watch_scenario = models.ForeignKey(
        "Scenario",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        help_text="The gentle probe scenario a watch runs after a deployment reaches this environment; "
        "empty: deployments here are not watched.",
    )
    watch_initial_delay_seconds = models.PositiveIntegerField(
        default=60, help_text="Seconds after the promotion before the first probe."
    )
    watch_interval_seconds = models.PositiveIntegerField(default=60, help_text="Seconds between probes.")
    watch_window_seconds = models.PositiveIntegerField(
        default=900, help_text="How long a deployment is watched, from its first probe."
    )
    watch_failure_limit = models.PositiveSmallIntegerField(
        default=2, help_text="More failed probes than this: degraded (Argo Rollouts' failureLimit)."
    )
    watch_consecutive = models.BooleanField(
        default=True, help_text="Count only failures in a row towards the failure limit."
    )
    watch_inconclusive_limit = models.PositiveSmallIntegerField(
        default=2, help_text="More inconclusive probes than this: the watch asks a person (no rollback)."
    )
    watch_consecutive_error_limit = models.PositiveSmallIntegerField(
        default=4,
        help_text="More probes in a row that cannot run than this: the watch stops and people are told. "
        "An error never rolls back.",
    )
    watch_dry_run = models.BooleanField(
        default=False, help_text="Watch and record what would have been done, but never roll back."
    )
    rollback_workflow = models.CharField(
        max_length=200,
        blank=True,
        help_text="GitHub workflow file that rolls this environment back (workflow_dispatch), for "
        "projects not deployed by Vercel, e.g. rollback.yml.",
    )

    class Meta:
        ordering = ["project__slug", "name"]
        constraints = [
            models.UniqueConstraint(fields=["project", "name"], name="environment_unique_per_project"),
            models.CheckConstraint(
                condition=Q(bypass_approvals__gte=1), name="environment_bypass_approvals_min_1"
            ),
        ]

    def __str__(self):
        return f"{self.project.slug}/{self.name}"

    @property
    def enforced(self) -> bool:
        return self.mode == self.Mode.ENFORCE

    def would_block(self, verdict: str, *, insufficient_load: bool = False) -> bool:
        """What enforcement does with a verdict: a fail always blocks; an error or an
        inconclusive result blocks only in a fail-closed environment.

        Insufficient load (the load check's error) blocks everywhere. Fail-open exists so that
        perfgate's own trouble (target down, tool crashed) does not hold deployments back; a
        test that measured too little is not trouble but a gate that did not run, and how much
        load runs is partly CI's to choose, so letting it through would let CI skip the gate."""
        if verdict == Verdict.FAIL or insufficient_load:
            return True
        return self.fail_closed and verdict in (Verdict.ERROR, Verdict.INCONCLUSIVE)

    def outcome_for(self, verdict: str, *, insufficient_load: bool = False) -> tuple[str, bool]:
        """(status, deployment_allowed) for a verdict under this environment's policy."""
        if self.enforced and self.would_block(verdict, insufficient_load=insufficient_load):
            return Validation.Status.BLOCKED, False
        if verdict == Verdict.ERROR:
            # No trustworthy verdict, and policy lets it through: proceed, loudly.
            return Validation.Status.FAILED, True
        return Validation.Status.PASSED, True


class Scenario(ConfigSourced):
    """A registered load test. CI picks one by name; the script lives here, never in a request."""

    class Tool(models.TextChoices):
        K6 = "k6"
        LOCUST = "locust"
        GITHUB = "github", "GitHub Actions (the project's performance workflow)"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="scenarios")
    name = models.CharField(max_length=100)
    tool = models.CharField(max_length=10, choices=Tool.choices, default=Tool.K6)
    script_text = models.TextField(
        help_text="The k6 script (or locustfile). It reads the target from TARGET_URL."
    )
    script_path = models.CharField(max_length=500, blank=True, help_text="Where the script came from.")
    target_url = models.CharField(
        max_length=500, blank=True, help_text="Default target; a request may name another."
    )
    reference_url = models.CharField(
        max_length=500,
        blank=True,
        help_text="Gate-run mode: the current production or staging deployment. When set (here or "
        "in a request's testConfig.referenceUrl), perfgate runs interleaved repetitions against it "
        "and the target and decides relative rules on the paired ratios, not on the history.",
    )
    calibration = models.JSONField(
        default=dict,
        blank=True,
        help_text="What `manage.py calibrate` measured: the noise of each checked metric and the "
        "smallest change the gate can detect.",
    )
    vus = models.PositiveIntegerField(default=10)
    duration_seconds = models.PositiveIntegerField(default=30)
    max_vus = models.PositiveIntegerField(default=50, help_text="The most VUs a request may ask for.")
    max_duration_seconds = models.PositiveIntegerField(
        default=300, help_text="The longest a request may ask for."
    )
    arrival_rate = models.PositiveIntegerField(
        null=True, blank=True, help_text="Iterations per second (open model); empty: VUs loop (closed model)."
    )
    warmup_seconds = models.PositiveIntegerField(default=0, help_text="Ramp-up before measuring.")
    min_requests = models.PositiveIntegerField(
        default=100, help_text="Fewer requests than this is an error (insufficient load), never a pass."
    )
    is_default = models.BooleanField(default=False, help_text="Runs when a request names no scenario.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["project__slug", "name"]
        constraints = [
            models.UniqueConstraint(fields=["project", "name"], name="scenario_unique_per_project"),
            models.UniqueConstraint(
                fields=["project"], condition=Q(is_default=True), name="scenario_one_default_per_project"
            ),
            models.CheckConstraint(condition=Q(vus__lte=models.F("max_vus")), name="scenario_vus_within_max"),
            models.CheckConstraint(
                condition=Q(duration_seconds__lte=models.F("max_duration_seconds")),
                name="scenario_duration_within_max",
            ),
        ]

    def __str__(self):
        return f"{self.project.slug}/{self.name}"

    def clean(self):
        errors = {}
        if self.vus and self.max_vus and self.vus > self.max_vus:
            errors["vus"] = f"{self.vus} VUs exceeds the scenario's maximum of {self.max_vus}."
        if (
            self.duration_seconds
            and self.max_duration_seconds
            and self.duration_seconds > self.max_duration_seconds
        ):
            errors["duration_seconds"] = (
                f"{self.duration_seconds}s exceeds the scenario's maximum of {self.max_duration_seconds}s."
            )
        if self.max_duration_seconds is not None:
            too_long = self.longest_run_problem(self.warmup_seconds or 0, self.max_duration_seconds)
            if too_long:
                errors["max_duration_seconds"] = too_long[0].upper() + too_long[1:] + "."
        if errors:
            raise ValidationError(errors)

    @staticmethod
    def longest_run_problem(warmup_seconds: int, max_duration_seconds: int) -> str:
        """Why the longest run a scenario allows cannot be given to a worker, or "" when it can.

        A run is one django-q2 task, killed at PERFGATE_TASK_TIMEOUT: the warm-up and the longest
        duration a request may ask for must leave the run margin and the time to start the tool and
        evaluate its results (``PERFGATE_LONGEST_RUN_SECONDS``).
        """
        longest = settings.PERFGATE_LONGEST_RUN_SECONDS
        if warmup_seconds + max_duration_seconds <= longest:
            return ""
        return (
            f"a warm-up of {warmup_seconds}s and a maximum duration of {max_duration_seconds}s do not fit "
            f"in a worker task: runs may last at most {longest}s (PERFGATE_TASK_TIMEOUT "
            f"{settings.PERFGATE_TASK_TIMEOUT}s, less PERFGATE_RUN_MARGIN_SECONDS "
            f"{settings.PERFGATE_RUN_MARGIN_SECONDS:g}s and {settings.PERFGATE_TASK_HEADROOM_SECONDS}s "
            "to start the tool and evaluate its results)"
        )


class ThresholdRule(ConfigSourced):
    """One check on one metric of one scenario, in some or all environments of its project.

    Absolute rules use k6's threshold syntax (``p(95)<400`` on ``http_req_duration{name:rsvp}``);
    relative rules compare an aggregation with the active baseline. A ``key`` rule can block,
    an ``info`` rule can only warn.

    A relative rule's limits: neither warn % nor fail % means the PERFGATE_RELATIVE_WARN_PCT and
    PERFGATE_RELATIVE_FAIL_PCT settings; fail % alone means the rule never warns, it passes or
    fails; warn % alone is refused (it cannot say where failing starts).
    """

    class Kind(models.TextChoices):
        ABSOLUTE = "absolute"
        RELATIVE = "relative"

    class Direction(models.TextChoices):
        AUTO = "auto", "by metric (latency and errors up is worse, throughput down is worse)"
        UP = "up", "an increase is worse"
        DOWN = "down", "a decrease is worse"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="rules")
    scenario = models.ForeignKey(Scenario, on_delete=models.CASCADE, related_name="rules")
    environments = models.ManyToManyField(
        Environment, blank=True, related_name="rules", help_text="Empty: every environment of the project."
    )
    metric = models.CharField(
        max_length=300, help_text="k6 metric with optional tag filter: http_req_duration{name:rsvp}"
    )
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.ABSOLUTE)
    threshold = models.CharField(
        max_length=100, blank=True, help_text="Absolute rules: k6 threshold, e.g. p(95)<400"
    )
    aggregation = models.CharField(
        max_length=20, blank=True, help_text="Relative rules: e.g. p(95), avg, rate"
    )
    warn_pct = models.FloatField(
        null=True,
        blank=True,
        help_text="Relative rules: warn from this change in %. Empty with fail % empty: "
        "the PERFGATE_RELATIVE_WARN_PCT setting.",
    )
    fail_pct = models.FloatField(
        null=True,
        blank=True,
        help_text="Relative rules: fail from this change in %. Empty: the "
        "PERFGATE_RELATIVE_FAIL_PCT setting.",
    )
    floor = models.FloatField(
        null=True,
        blank=True,
        help_text="Relative rules: ignore changes smaller than this, in the metric's unit (5 = 5 ms). "
        "Empty: 1 ms for time metrics, 0 for others.",
    )
    direction = models.CharField(max_length=4, choices=Direction.choices, default=Direction.AUTO)
    severity = models.CharField(max_length=4, choices=Severity.choices, default=Severity.KEY.value)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["project__slug", "scenario__name", "id"]
        indexes = [models.Index(fields=["scenario", "kind"], name="rule_scenario_kind")]

    def __str__(self):
        return self.label

    @property
    def label(self) -> str:
        if self.kind == self.Kind.RELATIVE:
            return f"{self.metric} {self.aggregation} relative"
        return f"{self.metric}: {self.threshold}"

    WARN_WITHOUT_FAIL = "A relative rule needs fail % when warn % is given"

    def clean(self):
        if self.kind == self.Kind.RELATIVE and self.warn_pct is not None and self.fail_pct is None:
            raise ValidationError({"fail_pct": self.WARN_WITHOUT_FAIL + "."})
        try:
            self.to_spec()
        except rules.RuleSyntaxError as exc:
            field = "threshold" if self.kind == self.Kind.ABSOLUTE else "aggregation"
            if str(exc).startswith("metric"):
                field = "metric"
            raise ValidationError({field: str(exc)}) from exc
        if self.scenario_id and self.project_id and self.scenario.project_id != self.project_id:
            raise ValidationError({"scenario": "The scenario belongs to another project."})

    def to_spec(self) -> "rules.AbsoluteRule | rules.RelativeRule":
        """The pure rule the engine evaluates; raises RuleSyntaxError for a bad expression."""
        warn_pct, fail_pct = self.warn_pct, self.fail_pct
        if self.kind == self.Kind.RELATIVE and fail_pct is None:
            if warn_pct is not None:
                # Never the default fail % under a warn % of the rule's own: it may be below it.
                raise rules.RuleSyntaxError(f"{self.WARN_WITHOUT_FAIL} (rule {self.label})")
            warn_pct, fail_pct = settings.PERFGATE_RELATIVE_WARN_PCT, settings.PERFGATE_RELATIVE_FAIL_PCT
        return rules.rule_from_fields(
            label=self.label,
            kind=self.kind,
            metric=self.metric,
            threshold=self.threshold,
            aggregation=self.aggregation,
            warn_pct=warn_pct,
            fail_pct=fail_pct,
            floor=self.floor,
            direction=self.direction,
            severity=self.severity,
        )


class ValidationManager(models.Manager):
    def of_build(self, project, environment, build_id: str):
        """The validation of a build in an environment, or None. A plain unique-index lookup:
        ``first()`` would add an ORDER BY that lets the planner walk the history index instead."""
        try:
            return self.get(project=project, environment=environment, build_id=build_id)
        except self.model.DoesNotExist:
            return None


class Validation(models.Model):
    """One request to validate one build in one environment: it owns its runs, its check
    results and its verdict. ``status`` and ``deployment_allowed`` are what CI acts on."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        PASSED = "passed"
        BLOCKED = "blocked"
        FAILED = "failed"
        BYPASSED = "bypassed"

    PENDING_STATUSES = (Status.QUEUED, Status.RUNNING)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="validations")
    environment = models.ForeignKey(Environment, on_delete=models.PROTECT, related_name="validations")
    scenario = models.ForeignKey(
        Scenario, on_delete=models.PROTECT, null=True, blank=True, related_name="validations"
    )
    build_id = models.CharField(max_length=200)
    git_hash = models.CharField(max_length=64)
    branch = models.CharField(max_length=255, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    verdict = models.CharField(max_length=12, choices=Verdict.choices, blank=True)
    deployment_allowed = models.BooleanField(null=True)
    would_block = models.BooleanField(default=False)
    status_reason = models.TextField(blank=True)
    manual_block_reason = models.TextField(blank=True, help_text="Set when ops closed the gate by hand.")
    blocking_reasons = models.JSONField(default=list, blank=True)
    report = models.JSONField(
        default=dict, blank=True, help_text="Headline metrics and explained checks, as the API shows them."
    )
    test_config = models.JSONField(default=dict, blank=True)
    deployment_context = models.JSONField(default=dict, blank=True)
    requested_by = models.CharField(max_length=200, blank=True)
    baseline = models.ForeignKey(
        "baselines.Baseline",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        help_text="The baseline version relative rules were compared with.",
    )
    worker = models.CharField(max_length=200, blank=True, help_text="The worker that holds the lease.")
    lease_expires_at = models.DateTimeField(
        null=True, blank=True, help_text="A running test whose lease expires unrenewed is ended as an error."
    )
    cancel_requested_by = models.CharField(max_length=200, blank=True)
    cancel_reason = models.TextField(blank=True)
    progress = models.JSONField(
        default=dict, blank=True, help_text="While a test runs: elapsedSeconds, requests, requestRate."
    )
    estimated_completion = models.DateTimeField(null=True, blank=True)
    held = models.BooleanField(
        default=False,
        help_text="Queued, but its load test waits until its deployment is ready (a Vercel deployment "
        "is tested once its URL answers).",
    )
    dispatch_pending = models.BooleanField(
        default=False,
        help_text="Queued, but the task broker was unreachable when its load test was sent: it is sent "
        "again as soon as the broker answers.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = ValidationManager()

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["project", "environment", "build_id"], name="validation_unique_build_per_environment"
            ),
        ]
        indexes = [
            models.Index(fields=["project", "environment", "-created_at"], name="validation_history"),
            models.Index(fields=["project", "-created_at"], name="validation_project_history"),
            models.Index(
                fields=["project", "environment", "scenario", "-created_at"], name="validation_scn_history"
            ),
            models.Index(fields=["project", "git_hash"], name="validation_git_hash"),
            models.Index(fields=["project", "build_id"], name="validation_build"),
            models.Index(fields=["status"], name="validation_status"),
            models.Index(fields=["status", "lease_expires_at"], name="validation_lease"),
        ]

    def __str__(self):
        return f"{self.project.slug}/{self.environment.name} {self.build_id}"

    @property
    def is_pending(self) -> bool:
        return self.status in self.PENDING_STATUSES

    @property
    def live_progress(self) -> dict | None:
        """Progress while the test runs, and whether its lease expired; afterwards it is history,
        and the times tell it."""
        if self.status != self.Status.RUNNING or not self.progress:
            return None
        return {**self.progress, "leaseExpired": self.lease_expired}

    @property
    def lease_expired(self) -> bool:
        """Running, but its worker stopped renewing the lease: the worker is lost (killed, or cut
        off from the database), and a reaper is about to end the validation as an error."""
        return (
            self.status == self.Status.RUNNING
            and self.lease_expires_at is not None
            and self.lease_expires_at < timezone.now()
        )

    @property
    def live_status_reason(self) -> str:
        """The sentence CI reads: the outcome's, or while a lost worker's validation waits for the
        reaper, what happened to it."""
        if not self.lease_expired:
            return self.status_reason
        return (
            f"The worker {self.worker or '(unknown)'} stopped renewing its lease, which expired at "
            f"{self.lease_expires_at:%H:%M:%S} UTC: it is lost, and the validation is being ended as an "
            "error (blocked or failed by the environment's policy)."
        )

    @property
    def live_estimated_completion(self):
        """When the test should be done, while it is pending; None once it ended."""
        return self.estimated_completion if self.is_pending else None


class Run(models.Model):
    """One execution of a scenario, or one uploaded result set, of a validation."""

    class Source(models.TextChoices):
        EXECUTED = "executed"
        UPLOADED = "uploaded"

    validation = models.ForeignKey(Validation, on_delete=models.PROTECT, related_name="runs")
    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="+")
    environment = models.ForeignKey(Environment, on_delete=models.PROTECT, related_name="+")
    scenario = models.ForeignKey(Scenario, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    source = models.CharField(max_length=10, choices=Source.choices)
    tool = models.CharField(max_length=20)
    results_format = models.CharField(max_length=30)
    request_count = models.BigIntegerField(null=True, blank=True)
    duration_seconds = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["project", "environment", "scenario", "-created_at"], name="run_history")
        ]

    def __str__(self):
        return f"run {self.pk} of {self.validation_id}"


class MetricObservationManager(models.Manager):
    def record(self, run, results) -> int:
        """Store every finite number of a result set for ``run``. On PostgreSQL with COPY: a run
        has a few hundred numbers and this sits on the request path of every upload."""
        rows = [
            (
                series.key,
                series.metric,
                dict(series.tags),
                series.kind,
                aggregation,
                value,
                series.unit,
                series.samples,
            )
            for series in results.series.values()
            for aggregation, value in series.values.items()
            if math.isfinite(value)
        ]
        scope = {
            "run_id": run.pk,
            "project_id": run.project_id,
            "environment_id": run.environment_id,
            "scenario_id": run.scenario_id,
            "observed_at": run.created_at,
        }
        if connection.vendor == "postgresql":
            from psycopg.types.json import Jsonb

            columns = [*scope, "series", "metric", "tags", "kind", "aggregation", "value", "unit", "samples"]
            with (
                connection.cursor() as cursor,
                cursor.cursor.copy(
                    f"COPY {self.model._meta.db_table} ({', '.join(columns)}) FROM STDIN"
                ) as copy,
            ):
                for series, metric, tags, kind, aggregation, value, unit, samples in rows:
                    copy.write_row(
                        (
                            *scope.values(),
                            series,
                            metric,
                            Jsonb(tags),
                            kind,
                            aggregation,
                            value,
                            unit,
                            samples,
                        )
                    )
            return len(rows)
        self.bulk_create(
            [
                self.model(
                    **scope,
                    series=series,
                    metric=metric,
                    tags=tags,
                    kind=kind,
                    aggregation=aggregation,
                    value=value,
                    unit=unit,
                    samples=samples,
                )
                for series, metric, tags, kind, aggregation, value, unit, samples in rows
            ],
            batch_size=500,
        )
        return len(rows)


class MetricObservation(models.Model):
    """One normalized number of a run: (series, aggregation) → value.

    Project, environment and scenario are copied from the run so that the history query is one
    index range scan.
    """

    run = models.ForeignKey(Run, on_delete=models.PROTECT, related_name="observations")
    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="+")
    environment = models.ForeignKey(Environment, on_delete=models.PROTECT, related_name="+")
    scenario = models.ForeignKey(Scenario, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    series = models.CharField(max_length=300, help_text="Metric with its tag filter, in k6's spelling.")
    metric = models.CharField(max_length=200)
    tags = models.JSONField(default=dict, blank=True)
    kind = models.CharField(max_length=10)
    aggregation = models.CharField(max_length=32)
    value = models.FloatField()
    unit = models.CharField(max_length=16, blank=True)
    samples = models.BigIntegerField(null=True, blank=True)
    observed_at = models.DateTimeField()

    objects = MetricObservationManager()

    class Meta:
        indexes = [
            models.Index(
                fields=["project", "environment", "scenario", "series", "aggregation", "observed_at"],
                name="observation_history",
            ),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["run", "series", "aggregation"], name="observation_unique_per_run"
            ),
        ]

    def __str__(self):
        return f"{self.series} {self.aggregation}={self.value}"


class CheckResult(models.Model):
    """The explained outcome of one rule for one validation."""

    class Kind(models.TextChoices):
        ABSOLUTE = "absolute"
        RELATIVE = "relative"
        LOAD = "load"

    validation = models.ForeignKey(Validation, on_delete=models.PROTECT, related_name="checks")
    run = models.ForeignKey(Run, on_delete=models.PROTECT, null=True, blank=True, related_name="checks")
    rule = models.ForeignKey(
        ThresholdRule,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="check_results",
        help_text="Empty for the load check, rules from the request, and rules deleted since.",
    )
    position = models.PositiveSmallIntegerField()
    label = models.CharField(max_length=400)
    kind = models.CharField(max_length=10, choices=Kind.choices)
    severity = models.CharField(max_length=4, choices=Severity.choices)
    metric = models.CharField(max_length=300, blank=True)
    aggregation = models.CharField(max_length=32, blank=True)
    verdict = models.CharField(max_length=12, choices=Verdict.choices)
    observed = models.FloatField(null=True, blank=True)
    baseline_value = models.FloatField(null=True, blank=True)
    limit = models.FloatField(null=True, blank=True)
    change_pct = models.FloatField(null=True, blank=True)
    p_value = models.FloatField(null=True, blank=True)
    reason = models.TextField()

    class Meta:
        ordering = ["validation", "position"]
        constraints = [
            models.UniqueConstraint(fields=["validation", "position"], name="check_unique_position"),
        ]

    def __str__(self):
        return f"{self.label}: {self.verdict}"


class BypassRequest(models.Model):
    """An emergency override for exactly one blocked validation: requested with a justification,
    approved by people other than the requester who hold ``approve_bypass`` on the project
    (production can require two), within its expiry.

    ``requester_names`` are every identity behind the request (the person or CI actor named, the
    token's owner, the admin user): none of them may approve it.
    """

    class Status(models.TextChoices):
        PENDING = "pending"
        APPROVED = "approved", "approved (the validation is bypassed)"
        REJECTED = "rejected"
        EXPIRED = "expired"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="bypass_requests")
    environment = models.ForeignKey(Environment, on_delete=models.PROTECT, related_name="bypass_requests")
    validation = models.ForeignKey("Validation", on_delete=models.PROTECT, related_name="bypass_requests")
    build_id = models.CharField(max_length=200)
    justification = models.TextField()
    ticket_url = models.URLField(max_length=500, blank=True)
    requested_by = models.CharField(max_length=200, help_text="Who asked, as the audit log names them.")
    requester_names = models.JSONField(default=list, help_text="Usernames that may not approve this request.")
    required_approvals = models.PositiveSmallIntegerField(default=1)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    expires_at = models.DateTimeField()
    decided_at = models.DateTimeField(null=True, blank=True)
    decided_by = models.CharField(max_length=200, blank=True)
    decision_reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "bypass request"
        indexes = [models.Index(fields=["status", "expires_at"], name="bypass_pending")]

    def __str__(self):
        return f"bypass of {self.project.slug}/{self.environment.name} {self.build_id}"


class BypassApproval(models.Model):
    """One person's approval of a bypass request."""

    bypass = models.ForeignKey(BypassRequest, on_delete=models.PROTECT, related_name="approvals")
    approver = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at"]
        constraints = [models.UniqueConstraint(fields=["bypass", "approver"], name="bypass_approval_once")]

    def __str__(self):
        return f"{self.approver} approved {self.bypass}"


class IdempotencyKey(models.Model):
    """An ``Idempotency-Key`` a client sent with a validate request, and a fingerprint of that
    request: the same key with another body is refused instead of silently answered.

    The row is the claim on the key: it is inserted before the validation is created, in the same
    transaction, so it is never committed without its validation."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=200)
    fingerprint = models.CharField(max_length=64, help_text="SHA-256 of the request body (and upload).")
    validation = models.ForeignKey(
        Validation,
        on_delete=models.CASCADE,
        related_name="+",
        null=True,
        help_text="Empty only inside the transaction of the request that claimed the key.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "key"], name="idempotency_key_unique")]

    def __str__(self):
        return f"{self.project.slug}: {self.key}"


class AuditEventQuerySet(models.QuerySet):
    """The audit log only grows: bulk updates and deletes are refused in the model layer."""

    def update(self, **kwargs):
        raise PermissionError("Audit events are append-only; they cannot be updated.")

    def delete(self):
        raise PermissionError("Audit events are append-only; they cannot be deleted.")


class AuditEvent(models.Model):
    """An append-only, hash-chained record of a decision or a configuration change.

    Written only by ``gates.audit.audit_record``. Names (project slug, actor, target) are copied
    in, so the log still reads correctly after the objects it mentions change or disappear.
    ``hash`` is SHA-256 over ``prev_hash`` and the canonical JSON of the event.
    """

    created_at = models.DateTimeField(db_index=True)
    action = models.CharField(max_length=64, db_index=True)
    actor = models.CharField(max_length=200, help_text='Who acted: "user:alice", "token:ci-main", "system".')
    actor_user_id = models.BigIntegerField(null=True, blank=True)
    project = models.CharField(max_length=100, blank=True, db_index=True)
    environment = models.CharField(max_length=20, blank=True)
    target_type = models.CharField(max_length=50, blank=True)
    target_id = models.CharField(max_length=100, blank=True)
    target_repr = models.CharField(max_length=300, blank=True)
    reason = models.TextField(blank=True)
    data = models.JSONField(default=dict, blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["project", "environment", "-id"], name="audit_project_env"),
            models.Index(fields=["target_type", "target_id"], name="audit_target"),
        ]

    def __str__(self):
        return f"#{self.pk} {self.action} by {self.actor}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise PermissionError("Audit events are append-only; they cannot be changed.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise PermissionError("Audit events are append-only; they cannot be deleted.")


class Watch(models.Model):
    """Production after a deploy: a validated deployment watched with gentle probes for a window.

    A watch belongs to the validation that let the deployment out. After ``initial_delay`` a probe
    runs every ``interval`` until the window ends; each is judged by the gate's own decision code
    against the *probe baseline* (the same probe scenario's values on the previous healthy
    production deployment). The counters follow Argo Rollouts' analysis: more than
    ``failureLimit`` failed probes (in a row, when ``consecutive``) → degraded, which rolls back or
    proposes a rollback by policy; more than ``inconclusiveLimit`` inconclusive → a person decides;
    more than ``consecutiveErrorLimit`` errors in a row → the watch stops and says so. An error (a
    probe that could not run or measured nothing) is never a failure and never rolls back.

    One task at a time runs a watch, holding it with a lease like a validation's: a watch whose
    task died is taken up again by the reaper.
    """

    class State(models.TextChoices):
        WAITING = "waiting", "waiting for its first probe"
        WATCHING = "watching"
        HEALTHY = "healthy", "healthy (window over)"
        DEGRADED = "degraded"
        INCONCLUSIVE = "inconclusive", "inconclusive (a person decides)"
        ERRORED = "errored", "stopped: probes keep erroring"
        STOPPED = "stopped"

    class Source(models.TextChoices):
        VERCEL = "vercel", "Vercel deployment.promoted"
        GITHUB = "github", "GitHub deployment_status"
        CI = "ci", "CI (API or CLI)"

    ACTIVE_STATES = (State.WAITING, State.WATCHING)

    validation = models.ForeignKey(Validation, on_delete=models.PROTECT, related_name="watches")
    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="watches")
    environment = models.ForeignKey(Environment, on_delete=models.PROTECT, related_name="watches")
    scenario = models.ForeignKey(Scenario, on_delete=models.PROTECT, related_name="watches")
    source = models.CharField(max_length=10, choices=Source.choices)
    deployment_id = models.CharField(max_length=200, blank=True, help_text="The provider's deployment id.")
    target_url = models.CharField(max_length=500, help_text="What the probes hit: the production deployment.")
    extra_hosts = models.JSONField(
        default=list, blank=True, help_text="Hosts allowed for this watch's probes only (its deployment URL)."
    )
    baseline_url = models.CharField(
        max_length=500,
        blank=True,
        help_text="The previous production deployment, probed before the first probe when no earlier "
        "healthy watch gives a probe baseline.",
    )
    state = models.CharField(max_length=12, choices=State.choices, default=State.WAITING)
    state_reason = models.TextField(blank=True)
    policy = models.JSONField(default=dict, help_text="The environment's watch policy when the watch began.")
    dry_run = models.BooleanField(default=False)
    would_roll_back = models.BooleanField(
        default=False, help_text="Dry run: a real watch would have rolled this deployment back."
    )
    baseline = models.JSONField(
        default=dict,
        blank=True,
        help_text="Probe baseline: per series|aggregation, the values it was built from.",
    )
    baseline_source = models.CharField(max_length=300, blank=True)
    probes_run = models.PositiveIntegerField(default=0)
    failures = models.PositiveIntegerField(default=0)
    consecutive_failures = models.PositiveIntegerField(default=0)
    inconclusives = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)
    consecutive_errors = models.PositiveIntegerField(default=0)
    started_by = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)
    next_probe_at = models.DateTimeField()
    ends_at = models.DateTimeField(help_text="The window's end: no scheduled probe starts later.")
    finished_at = models.DateTimeField(null=True, blank=True)
    worker = models.CharField(max_length=200, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "watches"
        constraints = [
            models.UniqueConstraint(
                fields=["environment"],
                condition=Q(state__in=["waiting", "watching"]),
                name="watch_one_active_per_environment",
            ),
        ]
        indexes = [
            models.Index(fields=["state", "lease_expires_at"], name="watch_lease"),
            models.Index(fields=["environment", "-created_at"], name="watch_history"),
        ]

    def __str__(self):
        return f"watch of {self.validation} ({self.state})"

    @property
    def is_active(self) -> bool:
        return self.state in self.ACTIVE_STATES

    def limit(self, name: str) -> int:
        return int(self.policy.get(name, 0))


class Probe(models.Model):
    """One probe of a watch: a short, gentle k6 run against production, judged against the
    watch's probe baseline. ``outcome`` is success, failure, inconclusive or error."""

    class Outcome(models.TextChoices):
        SUCCESS = "success"
        FAILURE = "failure"
        INCONCLUSIVE = "inconclusive"
        ERROR = "error"

    class Trigger(models.TextChoices):
        SCHEDULE = "schedule"
        ALERT = "alert", "an alert (confirming probe)"
        BASELINE = "baseline", "baseline (the previous deployment)"

    watch = models.ForeignKey(Watch, on_delete=models.CASCADE, related_name="probes")
    number = models.PositiveIntegerField()
    trigger = models.CharField(max_length=10, choices=Trigger.choices, default=Trigger.SCHEDULE)
    target_url = models.CharField(max_length=500)
    outcome = models.CharField(max_length=12, choices=Outcome.choices)
    verdict = models.CharField(max_length=12, blank=True)
    reason = models.TextField(blank=True)
    report = models.JSONField(default=dict, blank=True)
    values = models.JSONField(default=dict, blank=True, help_text="series|aggregation → value")
    duration_seconds = models.FloatField(default=0.0)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["watch", "number"]
        constraints = [models.UniqueConstraint(fields=["watch", "number"], name="probe_number_per_watch")]

    def __str__(self):
        return f"probe {self.number} of {self.watch_id}: {self.outcome}"


class Rollback(models.Model):
    """Undoing one watched deployment: at most one per watch, however many alerts arrive.

    Decided by a degraded watch or a confirmed alert; carried out through Vercel (a rollback to
    the newest earlier production deployment perfgate passed, then its alias request followed) or
    a GitHub rollback workflow. ``proposed`` waits for someone with ``trigger_rollback`` when the
    environment does not roll back automatically; ``refused`` when there is nothing safe to roll
    back to. A failed rollback stays failed: it is never retried into a loop.
    """

    class State(models.TextChoices):
        PROPOSED = "proposed", "proposed (waits for a person)"
        APPROVED = "approved", "approved (being sent)"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        REJECTED = "rejected"
        REFUSED = "refused", "refused (nothing to roll back to)"
        DRY_RUN = "dry_run", "dry run (would have rolled back)"

    class Trigger(models.TextChoices):
        WATCH = "watch", "the watch's probes"
        ALERT = "alert", "an alert, confirmed by a probe"
        MANUAL = "manual", "a person"

    OPEN_STATES = (State.PROPOSED, State.APPROVED, State.RUNNING)

    watch = models.OneToOneField(Watch, on_delete=models.PROTECT, related_name="rollback")
    validation = models.ForeignKey(Validation, on_delete=models.PROTECT, related_name="rollbacks")
    target_validation = models.ForeignKey(
        Validation,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        help_text="The newest earlier production deployment perfgate passed: what is rolled back to.",
    )
    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="rollbacks")
    environment = models.ForeignKey(Environment, on_delete=models.PROTECT, related_name="rollbacks")
    trigger = models.CharField(max_length=10, choices=Trigger.choices)
    state = models.CharField(max_length=10, choices=State.choices)
    via = models.CharField(
        max_length=10, blank=True, help_text="vercel or github, once an integration took it."
    )
    reason = models.TextField(help_text="Why: the probes or the alert that confirmed the degradation.")
    detail = models.TextField(blank=True, help_text="What the provider said, step by step.")
    decided_by = models.CharField(max_length=200, blank=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"rollback of {self.validation} ({self.state})"


class Notice(models.Model):
    """Something people must hear that is not a validation's verdict: a watch whose probes keep
    erroring, a rollback proposed, done or failed, an alert a probe did not confirm, a bypass
    asked for, approved or rejected. Shown in the admin and in ``status``; announced to the
    registered notifiers (``gates.registry``)."""

    class Level(models.TextChoices):
        INFO = "info"
        WARNING = "warning"
        ERROR = "error"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="notices")
    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="notices")
    validation = models.ForeignKey(
        Validation, on_delete=models.CASCADE, null=True, blank=True, related_name="notices"
    )
    watch = models.ForeignKey(Watch, on_delete=models.CASCADE, null=True, blank=True, related_name="notices")
    bypass = models.ForeignKey(
        BypassRequest, on_delete=models.CASCADE, null=True, blank=True, related_name="notices"
    )
    kind = models.CharField(max_length=40)
    level = models.CharField(max_length=10, choices=Level.choices)
    title = models.CharField(max_length=300)
    text = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return self.title
