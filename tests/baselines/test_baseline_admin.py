"""The baseline page shows each metric's median, its noise and the per-run values."""

from django.urls import reverse

from baselines.models import Baseline
from gates.services import validation_evaluate
from tests.factories import make_results, make_validation


def test_a_baseline_page_shows_the_median_and_the_noise_of_each_metric(
    client, admin_user, project, staging, actor
):
    for i, p95 in enumerate([200.0, 210.0, 190.0]):
        validation, _ = make_validation(
            project=project, environment=staging, build_id=f"b{i}", git_hash="a" * 40, actor=actor
        )
        validation_evaluate(validation=validation, results=make_results(p95=p95), actor=actor)
    baseline = Baseline.objects.latest("version")
    client.force_login(admin_user)

    page = client.get(reverse("admin:baselines_baseline_change", args=[baseline.pk])).content.decode()
    assert "Median" in page and "Noise" in page
    assert "±" in page and "[200.0, 210.0, 190.0]" in page
