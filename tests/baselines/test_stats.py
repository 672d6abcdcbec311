"""The gate's statistics: the history-mode noise model, the paired A/B test and Holm.

The properties that matter for decisions are checked by seeded simulation: unchanged (A/A) data
must not block more often than the configured rate, and a shift of k noise-sds must be detected
at about the rate the power calculation predicts.
"""

import math

import numpy as np
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st
from scipy import stats as scipy_stats

from baselines import stats

SIMULATIONS = 1500
# Simulations are slow to shrink and their failures are rates, not small inputs: no shrinking.
NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)
# Rates from simulations are random too: the examples are derandomized so the suite never flakes.
SIMULATED = {"deadline": None, "phases": NO_SHRINK, "derandomize": True}


def judged(model_values: np.ndarray, new: np.ndarray) -> np.ndarray:
    """One-sided p-values of each new run against the noise model of its own baseline row."""
    return np.array([stats.noise_model(row).p_value(x) for row, x in zip(model_values, new, strict=True)])


# History mode


@settings(max_examples=6, **SIMULATED)
@given(
    seed=st.integers(0, 2**32 - 1),
    cv=st.floats(0.01, 0.3),
    runs=st.integers(15, 30),
    tails=st.sampled_from(["normal", "t5", "t3"]),
)
def test_unchanged_runs_block_no_more_often_than_the_false_block_rate(seed, cv, runs, tails):
    rng = np.random.default_rng(seed)
    if tails == "normal":
        draw = lambda size: rng.normal(0, cv, size)  # noqa: E731
    else:
        # Fat tails: Student's t with 5 or 3 degrees of freedom (infinite kurtosis), same scale.
        draw = lambda size: rng.standard_t(int(tails[1:]), size) * cv  # noqa: E731
    baselines = 12.0 * np.exp(draw((SIMULATIONS, runs)))
    new = 12.0 * np.exp(draw(SIMULATIONS))
    alpha = stats.DEFAULT_FALSE_BLOCK_RATE
    rate = np.mean(judged(baselines, new) < alpha)
    # Binomial slack of three standard errors around the configured rate.
    assert rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / SIMULATIONS)


@settings(max_examples=4, **SIMULATED)
@given(seed=st.integers(0, 2**32 - 1), cv=st.floats(0.02, 0.2), power=st.sampled_from([0.5, 0.8, 0.9]))
def test_a_shift_at_the_detectable_change_is_detected_at_the_predicted_rate(seed, cv, power):
    rng = np.random.default_rng(seed)
    runs = 30
    alpha = stats.DEFAULT_FALSE_BLOCK_RATE
    truth = stats.NoiseModel(centre=12.0, spread=cv, n=runs, log=True)
    shift = truth.detectable_change(alpha, power)
    baselines = 12.0 * np.exp(rng.normal(0, cv, (SIMULATIONS, runs)))
    new = 12.0 * (1 + shift) * np.exp(rng.normal(0, cv, SIMULATIONS))
    rate = np.mean(judged(baselines, new) < alpha)
    # The MAD's own noise makes the realised power a little different from the nominal one.
    assert power - 0.1 <= rate <= power + 0.1


def test_a_shift_of_k_noise_sds_is_detected_more_often_as_k_grows():
    rng = np.random.default_rng(7)
    cv, runs, alpha = 0.07, 30, stats.DEFAULT_FALSE_BLOCK_RATE
    rates = []
    for k in (0, 2, 4, 6, 8):
        baselines = 12.0 * np.exp(rng.normal(0, cv, (SIMULATIONS, runs)))
        new = 12.0 * np.exp(rng.normal(k * cv, cv, SIMULATIONS))
        rates.append(np.mean(judged(baselines, new) < alpha))
    assert rates == sorted(rates)
    assert rates[0] <= 0.02 and rates[-1] >= 0.95


def test_a_few_wild_runs_do_not_move_the_centre_or_the_spread_much():
    calm = [12.0, 12.2, 11.9, 12.1, 12.05, 11.95, 12.15, 11.85, 12.0, 12.1]
    wild = [*calm[:-2], 40.0, 3.0]
    assert stats.noise_model(wild).centre == pytest.approx(stats.noise_model(calm).centre, rel=0.01)
    assert stats.noise_model(wild).spread < 2 * stats.noise_model(calm).spread


def test_identical_runs_are_not_taken_as_noiseless():
    model = stats.noise_model([10.0] * 5)
    assert model.spread == stats.MIN_NOISE
    assert model.p_value(10.02) > 0.2  # +0.2% is not a regression
    assert model.p_value(11.0) < 0.01


def test_fewer_than_three_runs_have_no_noise_model():
    assert stats.noise_model([1.0, 2.0]) is None
    assert stats.summarize([5.0])["noise"] is None


def test_values_with_a_zero_use_the_linear_scale():
    model = stats.noise_model([0.0, 0.001, 0.002, 0.0, 0.001])
    assert model.log is False
    assert model.p_value(0.03) < 0.01
    assert model.p_value(0.0, "up") > 0.5


def test_the_down_direction_tests_the_other_tail():
    model = stats.noise_model([100.0, 101.0, 99.0, 100.5, 99.5, 100.2])
    assert model.p_value(90.0, "down") < 0.01
    assert model.p_value(90.0, "up") > 0.99


def test_non_finite_values_are_refused():
    with pytest.raises(ValueError, match="finite"):
        stats.noise_model([1.0, math.nan, 2.0])


def test_summaries_hold_the_centre_and_the_noise():
    summary = stats.summarize([10.0, 12.0, 11.0, 50.0, 11.5])
    assert summary["centre"] == pytest.approx(11.5)
    assert summary["n"] == 5 and summary["min"] == 10.0 and summary["max"] == 50.0
    assert 0 < summary["noise"] < 0.2
    assert stats.summarize([]) == {
        "centre": None,
        "stdev": None,
        "min": None,
        "max": None,
        "n": 0,
        "noise": None,
    }


# Holm


@given(st.lists(st.floats(0, 1), min_size=1, max_size=8))
def test_holm_matches_its_definition(p_values):
    adjusted = stats.holm(p_values)
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    for rank, index in enumerate(order):
        expected = min(1.0, max((m - j) * p_values[order[j]] for j in range(rank + 1)))
        assert adjusted[index] == pytest.approx(expected)
        assert adjusted[index] >= p_values[index]


def test_holm_of_one_check_is_the_check_itself():
    assert stats.holm([0.03]) == [0.03]
    assert stats.holm([]) == []


# Gate-run mode: paired repetitions


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(0.5, 2.0), min_size=1, max_size=14),
    st.floats(-0.2, 0.3),
)
def test_the_paired_p_values_are_the_exact_wilcoxon_test(ratios, threshold):
    reference = [10.0] * len(ratios)
    candidate = [10.0 * r for r in ratios]
    change = stats.paired_change(reference, candidate, threshold=threshold, alpha=0.05)
    shifted = np.log(ratios) - math.log1p(threshold)
    if np.any(shifted == 0) or len(set(np.abs(shifted))) < len(shifted):
        return  # scipy handles zeros and ties its own way; the exact distribution assumes neither
    greater = scipy_stats.wilcoxon(shifted, alternative="greater", method="exact").pvalue
    less = scipy_stats.wilcoxon(shifted, alternative="less", method="exact").pvalue
    assert change.p_worse == pytest.approx(greater)
    assert change.p_better == pytest.approx(less)
    # The interval is the test's inversion: wholly above the threshold exactly when p_worse <= alpha.
    assert change.beyond == (change.p_worse <= 0.05)
    assert change.within == (change.p_better <= 0.05)


def test_too_few_pairs_cannot_bound_the_interval():
    change = stats.paired_change([10.0] * 4, [20.0] * 4, threshold=0.1, alpha=0.05)
    assert (change.low, change.high) == (-1.0, math.inf)
    assert not change.beyond  # 4 pairs all up: p = 1/16 > 0.05


@settings(max_examples=4, **SIMULATED)
@given(seed=st.integers(0, 2**32 - 1), noise=st.floats(0.02, 0.1), pairs=st.integers(6, 12))
def test_unchanged_pairs_block_no_more_often_than_alpha(seed, noise, pairs):
    rng = np.random.default_rng(seed)
    alpha = 0.05
    blocks = 0
    for _ in range(600):
        reference = np.exp(rng.normal(0, noise, pairs))
        # A/A at the threshold itself: the hardest case for the false-block rate.
        candidate = 1.1 * np.exp(rng.normal(0, noise, pairs))
        blocks += stats.paired_change(reference, candidate, threshold=0.1, alpha=alpha).beyond
    assert blocks / 600 <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / 600)


def test_a_paired_shift_at_the_detectable_change_is_detected_at_about_the_predicted_power():
    rng = np.random.default_rng(3)
    noise, pairs, alpha = 0.04, 12, 0.05
    shift = stats.paired_detectable_change(noise * math.sqrt(2), pairs, threshold=0.1, alpha=alpha)
    detected = 0
    for _ in range(800):
        reference = np.exp(rng.normal(0, noise, pairs))
        candidate = (1 + shift) * np.exp(rng.normal(0, noise, pairs))
        detected += stats.paired_change(reference, candidate, threshold=0.1, alpha=alpha).beyond
    assert 0.7 <= detected / 800 <= 0.92


def test_paired_values_must_match_and_be_positive():
    with pytest.raises(ValueError, match="same"):
        stats.paired_change([1.0], [1.0, 2.0], threshold=0.1, alpha=0.05)
    with pytest.raises(ValueError, match="positive"):
        stats.paired_change([0.0, 1.0], [1.0, 2.0], threshold=0.1, alpha=0.05)
