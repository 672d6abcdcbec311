"""Reads about baselines: which version is active, and its number for one series."""

from __future__ import annotations

from baselines.models import Baseline, BaselineMetric
from gates import rules


def baseline_active(project, environment, scenario) -> Baseline | None:
    """The pinned version when ops pinned one, otherwise the newest; None before the first."""
    if scenario is None:
        return None
    versions = Baseline.objects.filter(project=project, environment=environment, scenario=scenario)
    return versions.order_by("-pinned", "-version").first()


def baseline_value_for(baseline: Baseline, series: str, aggregation: str) -> rules.BaselineValue | None:
    """The baseline's mean for (series, aggregation) with the per-run values behind it."""
    metric = BaselineMetric.objects.filter(baseline=baseline, series=series, aggregation=aggregation).first()
    if metric is None:
        return None
    return rules.BaselineValue(value=metric.value, run_values=tuple(metric.run_values))
