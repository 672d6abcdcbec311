"""Pure statistics for regression detection: no numpy, no scipy, no Django.

The gate asks one question of a baseline: could the number this build produced have come
from the same distribution as the runs the baseline was built from? With a handful of runs
the honest test is a Student's t prediction interval for one new observation,

    t = (x - mean) / (s * sqrt(1 + 1/n)),   df = n - 1,

whose two-sided p-value needs the t distribution, which in turn needs the regularized
incomplete beta function. That function is computed here with the continued fraction of
Numerical Recipes (modified Lentz): p-values are accurate to about 1e-11 for the degrees of
freedom a gate sees (a handful of baseline runs), and to about 1e-7 for any df.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

# The continued fraction converges in O(sqrt(max(a, b))) terms, and t p-values above
# _NORMAL_DF use the normal limit, so 10 000 iterations bound the work with room to spare.
_MAX_ITERATIONS = 10_000
# Beyond this many degrees of freedom the t and normal p-values differ by less than 1e-7,
# while lgamma(df/2) grows so large that the beta route loses more than that to rounding.
_NORMAL_DF = 1e7
_EPSILON = 1e-15
_TINY = 1e-300


def _finite_values(values: Iterable[float]) -> list[float]:
    numbers = [float(v) for v in values]
    for number in numbers:
        if not math.isfinite(number):
            raise ValueError(f"statistics need finite numbers, got {number!r}")
    return numbers


def mean(values: Iterable[float]) -> float:
    """Arithmetic mean. Raises ValueError for no values or a NaN/infinite value."""
    numbers = _finite_values(values)
    if not numbers:
        raise ValueError("the mean of no values is undefined")
    # Rounding can put fsum(v) / n a hair outside [min, max] (three times 352.9 gives
    # 352.90000000000003); a mean outside its values is wrong, and identical values must
    # have exactly their value as mean.
    return min(max(math.fsum(numbers) / len(numbers), min(numbers)), max(numbers))


def sample_stdev(values: Iterable[float]) -> float:
    """Sample standard deviation (n - 1 in the denominator). Needs at least two values."""
    numbers = _finite_values(values)
    if len(numbers) < 2:
        raise ValueError("the sample standard deviation needs at least two values")
    if min(numbers) == max(numbers):
        return 0.0  # exactly: "identical runs" must not depend on rounding in the mean
    centre = math.fsum(numbers) / len(numbers)
    return math.sqrt(math.fsum((v - centre) ** 2 for v in numbers) / (len(numbers) - 1))


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b), evaluated by the modified Lentz method."""
    qab = a + b
    qap = a + 1.0
    qam = a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    if abs(d) < _TINY:
        d = _TINY
    d = 1.0 / d
    h = d
    for m in range(1, _MAX_ITERATIONS + 1):
        m2 = 2 * m
        # Even step of the recurrence.
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        if abs(d) < _TINY:
            d = _TINY
        c = 1.0 + aa / c
        if abs(c) < _TINY:
            c = _TINY
        d = 1.0 / d
        h *= d * c
        # Odd step.
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        if abs(d) < _TINY:
            d = _TINY
        c = 1.0 + aa / c
        if abs(c) < _TINY:
            c = _TINY
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPSILON:
            return h
    raise ArithmeticError(f"incomplete beta did not converge for a={a}, b={b}, x={x}")


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if not (a > 0 and b > 0) or math.isinf(a) or math.isinf(b):
        raise ValueError(f"incomplete beta needs finite a > 0 and b > 0, got a={a}, b={b}")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"incomplete beta needs 0 <= x <= 1, got x={x}")
    return _incomplete_beta(a, b, x, 1.0 - x)


def _incomplete_beta(a: float, b: float, x: float, y: float) -> float:
    # y is 1 - x, passed in by callers that know it more precisely than 1.0 - x can be
    # computed (x close to 1 loses its low digits in the subtraction).
    if x == 0.0:
        return 0.0
    if y == 0.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(y)
    front = math.exp(log_front)
    # The continued fraction converges fast only on this side of the mean of the beta
    # distribution; on the other side use the symmetry I_x(a, b) = 1 - I_{1-x}(b, a).
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_continued_fraction(a, b, x) / a
    return 1.0 - front * _beta_continued_fraction(b, a, y) / b


def student_t_p_value(t: float, df: float) -> float:
    """Two-sided p-value of Student's t statistic ``t`` with ``df`` degrees of freedom."""
    if math.isnan(t):
        raise ValueError("the t statistic is NaN")
    if not df > 0 or math.isinf(df):
        raise ValueError(f"degrees of freedom must be finite and positive, got {df}")
    if math.isinf(t):
        return 0.0
    if df > _NORMAL_DF:
        return math.erfc(abs(t) / math.sqrt(2.0))
    # P(|T| >= |t|) = I_{df / (df + t^2)}(df / 2, 1 / 2).
    t_squared = t * t
    x = df / (df + t_squared)
    y = t_squared / (df + t_squared)
    return min(1.0, max(0.0, _incomplete_beta(df / 2.0, 0.5, x, y)))


def prediction_p_value(x: float, values: Sequence[float]) -> float | None:
    """Two-sided p-value that ``x`` is one more draw from the distribution of ``values``.

    Uses the prediction-interval t statistic (x - mean) / (s * sqrt(1 + 1/n)) with n - 1
    degrees of freedom. Fewer than three values: ``None`` (two runs give one degree of
    freedom and a test too weak to mean anything). Identical values (s == 0): any
    different ``x`` is significant (0.0) and the same ``x`` is not (1.0).
    """
    numbers = _finite_values(values)
    if not math.isfinite(float(x)):
        raise ValueError(f"the observed value must be finite, got {x!r}")
    n = len(numbers)
    if n < 3:
        return None
    centre = mean(numbers)
    spread = sample_stdev(numbers)
    if spread == 0.0:
        return 0.0 if x != centre else 1.0
    t = (x - centre) / (spread * math.sqrt(1.0 + 1.0 / n))
    return student_t_p_value(t, n - 1)


def summarize(values: Iterable[float]) -> dict:
    """Mean, sample stdev, min, max and n of ``values``.

    ``stdev`` is ``None`` below two values and every statistic but ``n`` is ``None`` for
    no values, so the summary of an empty baseline is still a valid record.
    """
    numbers = _finite_values(values)
    n = len(numbers)
    if n == 0:
        return {"mean": None, "stdev": None, "min": None, "max": None, "n": 0}
    return {
        "mean": mean(numbers),
        "stdev": sample_stdev(numbers) if n >= 2 else None,
        "min": min(numbers),
        "max": max(numbers),
        "n": n,
    }
