"""Pure statistics: Student's t p-values, the incomplete beta behind them, and summaries."""

import math
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from baselines.stats import (
    mean,
    prediction_p_value,
    regularized_incomplete_beta,
    sample_stdev,
    student_t_p_value,
    summarize,
)

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
t_values = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False)
degrees = st.one_of(st.integers(min_value=1, max_value=500), st.floats(min_value=0.5, max_value=1e5))


@pytest.mark.parametrize(
    ("t", "df", "expected", "tolerance"),
    [
        (2.776, 4, 0.05, 1e-4),
        (12.706, 1, 0.05, 1e-5),
        (1.96, 1e6, 0.05, 1e-4),
        (2.228, 10, 0.05, 1e-4),
        (1.0, 1, 0.5, 1e-12),  # Cauchy: P(|T| >= 1) is exactly one half
    ],
)
def test_p_values_match_the_t_table(t, df, expected, tolerance):
    assert student_t_p_value(t, df) == pytest.approx(expected, abs=tolerance)


@pytest.mark.parametrize(
    ("critical_t", "df", "alpha"),
    [
        (2.776445105, 4, 0.05),
        (12.70620474, 1, 0.05),
        (2.228138852, 10, 0.05),
        (2.042272456, 30, 0.05),
        (4.032142984, 5, 0.01),
    ],
)
def test_p_values_are_accurate_to_the_tenth_digit_at_ten_digit_critical_values(critical_t, df, alpha):
    # The critical values are given to ten significant digits, which bounds the achievable match.
    assert student_t_p_value(critical_t, df) == pytest.approx(alpha, abs=1e-9)


@given(t_values)
def test_one_degree_of_freedom_matches_the_cauchy_closed_form(t):
    exact = 1.0 - 2.0 / math.pi * math.atan(abs(t))
    assert student_t_p_value(t, 1) == pytest.approx(exact, abs=1e-12)


@given(t_values)
def test_two_degrees_of_freedom_match_their_closed_form(t):
    exact = 1.0 - abs(t) / math.sqrt(t * t + 2.0)
    assert student_t_p_value(t, 2) == pytest.approx(exact, abs=1e-12)


def test_large_degrees_of_freedom_approach_the_normal_distribution():
    normal = math.erfc(1.96 / math.sqrt(2.0))
    assert student_t_p_value(1.96, 1e6) == pytest.approx(normal, abs=1e-6)


@pytest.mark.parametrize("df", [1e7, 1e7 + 1, 1e9, 1e12])
@pytest.mark.parametrize("t", [0.5, 1.96, 3.0, 5.0])
def test_huge_degrees_of_freedom_stay_within_a_ten_millionth_of_the_normal_distribution(t, df):
    assert student_t_p_value(t, df) == pytest.approx(math.erfc(t / math.sqrt(2.0)), abs=1e-7)


@given(t_values, degrees)
def test_p_values_lie_between_zero_and_one(t, df):
    assert 0.0 <= student_t_p_value(t, df) <= 1.0


@given(t_values, degrees)
def test_p_values_do_not_depend_on_the_sign_of_t(t, df):
    assert student_t_p_value(t, df) == student_t_p_value(-t, df)


@given(t_values, t_values, degrees)
def test_p_values_never_grow_as_t_moves_away_from_zero(t1, t2, df):
    near, far = sorted((abs(t1), abs(t2)))
    assert student_t_p_value(near, df) >= student_t_p_value(far, df) - 1e-12


def test_t_of_zero_is_never_significant_and_infinite_t_always_is():
    assert student_t_p_value(0.0, 7) == 1.0
    assert student_t_p_value(math.inf, 7) == 0.0
    assert student_t_p_value(-math.inf, 7) == 0.0


@pytest.mark.parametrize(("t", "df"), [(math.nan, 3), (1.0, 0), (1.0, -2), (1.0, math.inf), (1.0, math.nan)])
def test_nonsense_t_or_degrees_of_freedom_raise(t, df):
    with pytest.raises(ValueError):
        student_t_p_value(t, df)


@given(st.floats(min_value=0.01, max_value=50), st.floats(min_value=0.0, max_value=1.0))
def test_incomplete_beta_with_b_one_is_a_power(a, x):
    assert regularized_incomplete_beta(a, 1.0, x) == pytest.approx(x**a, abs=1e-12)


@given(st.floats(min_value=0.01, max_value=50), st.floats(min_value=0.0, max_value=1.0))
def test_incomplete_beta_with_a_one_is_one_minus_a_power(b, x):
    assert regularized_incomplete_beta(1.0, b, x) == pytest.approx(1.0 - (1.0 - x) ** b, abs=1e-12)


@given(
    st.floats(min_value=0.5, max_value=200),
    st.floats(min_value=0.5, max_value=200),
    st.floats(min_value=0.001, max_value=0.999),
)
def test_incomplete_beta_is_symmetric_under_swapping_a_b_and_x(a, b, x):
    assert regularized_incomplete_beta(a, b, x) == pytest.approx(
        1.0 - regularized_incomplete_beta(b, a, 1.0 - x), abs=1e-10
    )


@pytest.mark.parametrize(
    ("a", "b", "x"), [(2.0, 3.0, 0.4), (5.5, 2.5, 0.7), (3.0, 0.5, 0.9), (10.0, 10.0, 0.5)]
)
def test_incomplete_beta_agrees_with_numerical_integration(a, b, x):
    # Composite Simpson's rule on the beta density; for these a, b the integrand is smooth
    # enough on [0, x] for 200 000 intervals to give about ten correct digits.
    intervals = 200_000
    step = x / intervals
    log_norm = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)

    def density(u):
        if u <= 0.0:
            return 0.0
        return math.exp(log_norm + (a - 1) * math.log(u) + (b - 1) * math.log1p(-u))

    total = density(0.0) + density(x)
    total += 4 * math.fsum(density((2 * i - 1) * step) for i in range(1, intervals // 2 + 1))
    total += 2 * math.fsum(density(2 * i * step) for i in range(1, intervals // 2))
    assert regularized_incomplete_beta(a, b, x) == pytest.approx(total * step / 3, abs=1e-9)


@pytest.mark.parametrize(
    ("a", "b", "x"), [(0, 1, 0.5), (1, -1, 0.5), (1, 1, -0.1), (1, 1, 1.1), (math.inf, 1, 0.5)]
)
def test_incomplete_beta_rejects_arguments_outside_its_domain(a, b, x):
    with pytest.raises(ValueError):
        regularized_incomplete_beta(a, b, x)


def test_mean_and_sample_stdev_of_a_textbook_sample():
    values = [2, 4, 4, 4, 5, 5, 7, 9]
    assert mean(values) == 5.0
    assert sample_stdev(values) == pytest.approx(math.sqrt(32 / 7), rel=1e-15)


@given(st.lists(finite, min_size=2, max_size=30))
def test_mean_and_sample_stdev_agree_with_the_standard_library(values):
    assert mean(values) == pytest.approx(statistics.fmean(values), rel=1e-9, abs=1e-9)
    assert sample_stdev(values) == pytest.approx(statistics.stdev(values), rel=1e-7, abs=1e-6)


def test_mean_of_nothing_and_stdev_of_one_value_are_undefined():
    with pytest.raises(ValueError):
        mean([])
    with pytest.raises(ValueError):
        sample_stdev([3.0])


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_statistics_refuse_values_that_are_not_finite(bad):
    with pytest.raises(ValueError):
        mean([1.0, bad])
    with pytest.raises(ValueError):
        prediction_p_value(1.0, [1.0, 2.0, bad])
    with pytest.raises(ValueError):
        prediction_p_value(bad, [1.0, 2.0, 3.0])
    with pytest.raises(ValueError):
        summarize([bad])


def test_prediction_p_value_needs_three_baseline_runs():
    assert prediction_p_value(500.0, []) is None
    assert prediction_p_value(500.0, [100.0]) is None
    assert prediction_p_value(500.0, [100.0, 101.0]) is None
    assert prediction_p_value(500.0, [100.0, 101.0, 102.0]) is not None


def test_prediction_p_value_uses_the_prediction_interval_t_statistic():
    # mean 12, s 2, n 3: t = 8 / (2 * sqrt(4/3)), two degrees of freedom (closed form).
    t = 8.0 / (2.0 * math.sqrt(1.0 + 1.0 / 3.0))
    expected = 1.0 - t / math.sqrt(t * t + 2.0)
    assert prediction_p_value(20.0, [10.0, 12.0, 14.0]) == pytest.approx(expected, abs=1e-12)


def test_identical_baseline_runs_make_any_difference_significant():
    assert prediction_p_value(350.0, [350.0, 350.0, 350.0]) == 1.0
    assert prediction_p_value(350.0000001, [350.0, 350.0, 350.0]) == 0.0


def test_a_value_at_the_baseline_mean_is_not_significant():
    assert prediction_p_value(12.0, [10.0, 12.0, 14.0]) == pytest.approx(1.0)


@given(st.lists(finite, min_size=3, max_size=20), st.floats(min_value=0, max_value=1e6))
def test_prediction_p_values_are_symmetric_around_the_baseline_mean(values, distance):
    centre = mean(values)
    above = prediction_p_value(centre + distance, values)
    below = prediction_p_value(centre - distance, values)
    assert 0.0 <= above <= 1.0
    assert above == pytest.approx(below, abs=1e-6)


def test_summary_of_several_values():
    assert summarize([3.0, 1.0, 2.0]) == {"mean": 2.0, "stdev": 1.0, "min": 1.0, "max": 3.0, "n": 3}


def test_summary_of_one_value_has_no_stdev():
    assert summarize([7.5]) == {"mean": 7.5, "stdev": None, "min": 7.5, "max": 7.5, "n": 1}


def test_summary_of_no_values_is_empty_but_valid():
    assert summarize([]) == {"mean": None, "stdev": None, "min": None, "max": None, "n": 0}


@given(st.lists(finite, min_size=1, max_size=20))
def test_the_mean_lies_between_the_smallest_and_largest_value(values):
    assert min(values) <= mean(values) <= max(values)


@given(finite, st.integers(min_value=2, max_value=20))
def test_identical_values_have_exactly_their_value_as_mean_and_no_spread(value, n):
    assert mean([value] * n) == value
    assert sample_stdev([value] * n) == 0.0
