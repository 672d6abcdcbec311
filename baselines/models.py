"""Baselines: the versioned reference a validation is compared with."""

from django.db import models
from django.db.models import Q


class Baseline(models.Model):
    """A version of the reference for one (project, environment, scenario): which runs it was
    built from and the statistics of each metric over them.

    Only runs whose validation passed or warned enter a baseline (failed, blocked, bypassed,
    cancelled and errored runs never do). The active baseline is the pinned version
    when ops pinned one, otherwise the newest.
    """

    project = models.ForeignKey("gates.Project", on_delete=models.PROTECT, related_name="baselines")
    environment = models.ForeignKey("gates.Environment", on_delete=models.PROTECT, related_name="baselines")
    scenario = models.ForeignKey("gates.Scenario", on_delete=models.PROTECT, related_name="baselines")
    version = models.PositiveIntegerField()
    runs = models.ManyToManyField("gates.Run", related_name="baselines")
    source_validation = models.ForeignKey(
        "gates.Validation",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        help_text="The validation whose promotion made this version.",
    )
    pinned = models.BooleanField(
        default=False, help_text="Pinned by ops: stays active while newer versions appear."
    )
    created_by = models.CharField(max_length=200)
    note = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["project__slug", "environment__name", "scenario__name", "-version"]
        constraints = [
            models.UniqueConstraint(
                fields=["project", "environment", "scenario", "version"], name="baseline_unique_version"
            ),
            models.UniqueConstraint(
                fields=["project", "environment", "scenario"],
                condition=Q(pinned=True),
                name="baseline_one_pinned",
            ),
        ]

    def __str__(self):
        return f"{self.project.slug}/{self.environment.name}/{self.scenario.name} v{self.version}"


class BaselineMetric(models.Model):
    """The statistics of one (series, aggregation) over a baseline's runs: the centre of the noise
    model (the median) is the value relative rules compare with; the per-run values, in run order,
    feed the noise model (``baselines.stats.noise_model``)."""

    baseline = models.ForeignKey(Baseline, on_delete=models.CASCADE, related_name="metrics")
    series = models.CharField(max_length=300)
    metric = models.CharField(max_length=200)
    aggregation = models.CharField(max_length=32)
    unit = models.CharField(max_length=16, blank=True)
    value = models.FloatField(help_text="The centre of the baseline's runs (their median).")
    noise = models.FloatField(
        null=True,
        blank=True,
        help_text="Run-to-run spread on the log scale (about the CV); none below 3 runs.",
    )
    stdev = models.FloatField(null=True, blank=True)
    minimum = models.FloatField()
    maximum = models.FloatField()
    run_values = models.JSONField(default=list)

    class Meta:
        ordering = ["baseline", "series", "aggregation"]
        constraints = [
            models.UniqueConstraint(
                fields=["baseline", "series", "aggregation"], name="baseline_metric_unique"
            ),
        ]

    def __str__(self):
        return f"{self.series} {self.aggregation}={self.value:g}"
