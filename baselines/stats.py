"""Pure statistics for the gate's decisions: numpy and scipy, no Django.

History mode (CI uploads one run) asks whether one run is beyond the run-to-run noise of the
baseline's runs. Load-test numbers are noisy *between runs*, with fat tails and drift, so the
model is robust and on the log scale (a slowdown multiplies latency):

- centre: the median of the log values; spread: the normal-consistent MAD of the log values
  (a few wild runs move neither), never below ``MIN_NOISE`` (identical runs are not noiseless);
- the bound for one new run is one-sided Student's t with the MAD's effective degrees of freedom,
  at most ``TAIL_DF`` (fat tails: a bound for independent normal draws blocks unchanged builds),
  widened by the uncertainty of the median (``sqrt(1 + pi / 2n)``). Drift widens the window's
  spread, so it is allowed for by the same spread.

Gate-run mode (perfgate runs A and B side by side) decides on paired log ratios with the
Hodges-Lehmann estimate and the exact Wilcoxon signed-rank interval (``paired_change``). Several
key checks share one false-block rate by Holm's step-down (``holm``). ``*_detectable_change``
say how small a change the gate can see, for calibration.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import stats as distributions

# Fewer baseline runs than this: no noise model, the rule's threshold alone decides.
MIN_RUNS = 3
# The smallest run-to-run spread assumed (log scale, about 0.5%): identical baseline runs must not
# make a 0.1% change "significant".
MIN_NOISE = 0.005
# Degrees of freedom of the predictive t at most: the tails of real run-to-run noise are fatter
# than normal (measured by bench/decisions.py; see docs/decisions.md).
TAIL_DF = 3
# The MAD is a robust but inefficient estimate of the spread (37% of the sample sd's efficiency for
# normal data), so a spread from n runs carries about 0.37 (n - 1) degrees of freedom.
MAD_EFFICIENCY = 0.37
# The history test's default false-block rate (one-sided), chosen from bench/decisions.py.
DEFAULT_FALSE_BLOCK_RATE = 0.02
DEFAULT_POWER = 0.8


def _finite(values: Iterable[float]) -> np.ndarray:
    numbers = np.asarray([float(v) for v in values], dtype=float)
    if not np.all(np.isfinite(numbers)):
        raise ValueError("statistics need finite numbers")
    return numbers


@dataclass(frozen=True)
class NoiseModel:
    """The run-to-run noise of one metric over a baseline's runs.

    ``log`` says whether the model is on the log scale (all values positive) or on the values
    themselves (a value of zero or below, e.g. an error rate of 0); ``spread`` is on that scale.
    """

    centre: float
    spread: float
    n: int
    log: bool

    @property
    def df(self) -> float:
        return max(1.0, min(MAD_EFFICIENCY * (self.n - 1), TAIL_DF))

    @property
    def scale(self) -> float:
        """The predictive scale of one new run: the spread, widened by the centre's uncertainty."""
        return self.spread * math.sqrt(1.0 + math.pi / (2.0 * self.n))

    @property
    def cv(self) -> float:
        """The spread as a fraction of the centre (on the log scale, about the coefficient of variation)."""
        if self.log:
            return self.spread
        return self.spread / abs(self.centre) if self.centre else math.inf

    def position(self, value: float) -> float:
        return math.log(value) if self.log else float(value)

    def p_value(self, observed: float, direction: str = "up") -> float:
        """One-sided p-value of ``observed`` being one more run of this noise, in the worse
        ``direction`` ("up": larger is worse, "down": smaller is worse)."""
        if self.log and observed <= 0:
            # Below the model's support: as far as it can be on the "down" side.
            return 1.0 if direction == "up" else 0.0
        z = (self.position(observed) - self.position(self.centre)) / self.scale
        if direction == "down":
            z = -z
        return float(distributions.t.sf(z, self.df))

    def detectable_change(
        self, alpha: float = DEFAULT_FALSE_BLOCK_RATE, power: float = DEFAULT_POWER
    ) -> float:
        """The smallest worsening (a fraction: 0.12 is +12%) one run shows beyond this noise with
        probability ``power`` when the false-block rate is ``alpha``."""
        margin = (distributions.t.ppf(1 - alpha, self.df) + distributions.norm.ppf(power)) * self.scale
        if self.log:
            return math.expm1(margin)
        return margin / abs(self.centre) if self.centre else math.inf


# The normal-consistent scale of the median absolute deviation (scipy's scale="normal"), computed
# here with numpy: a baseline promotion models every series of every run, and scipy's generic
# wrapper cost ten times the arithmetic.
MAD_TO_SIGMA = 1 / float(distributions.norm.ppf(0.75))


def noise_model(values: Sequence[float]) -> NoiseModel | None:
    """The noise model of a baseline's per-run values; None below ``MIN_RUNS`` runs."""
    numbers = _finite(values)
    if len(numbers) < MIN_RUNS:
        return None
    log = bool(np.all(numbers > 0))
    points = np.log(numbers) if log else numbers
    centre = float(np.median(points))
    spread = float(np.median(np.abs(points - centre))) * MAD_TO_SIGMA
    floor = MIN_NOISE if log else MIN_NOISE * abs(centre)
    return NoiseModel(
        centre=math.exp(centre) if log else centre,
        spread=max(spread, floor),
        n=len(numbers),
        log=log,
    )


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given: a check is significant at
    family-wise rate alpha when its adjusted p-value is below alpha."""
    p = np.asarray(p_values, dtype=float)
    m = len(p)
    if m == 0:
        return []
    order = np.argsort(p, kind="stable")
    stepped = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    adjusted = np.empty(m)
    adjusted[order] = stepped
    return adjusted.tolist()


# ---------------------------------------------------------------------------------------------
# Gate-run mode: paired repetitions


@lru_cache(maxsize=128)
def _signed_rank_tail(n: int) -> np.ndarray:
    """P(T+ >= t) for t = 0 … n(n+1)/2 under the null: the exact Wilcoxon signed-rank
    distribution (every sign pattern of the ranks 1…n is equally likely)."""
    counts = np.zeros(n * (n + 1) // 2 + 1)
    counts[0] = 1.0
    for rank in range(1, n + 1):
        counts[rank:] = counts[rank:] + counts[:-rank].copy()
    probability = counts / counts.sum()
    return np.cumsum(probability[::-1])[::-1]


def _critical(n: int, alpha: float) -> int | None:
    """The smallest c with P(T+ >= c) <= alpha, or None when even T+ = max is not that rare."""
    tail = _signed_rank_tail(n)
    below = np.nonzero(tail <= alpha)[0]
    return int(below[0]) if len(below) else None


@dataclass(frozen=True)
class PairedChange:
    """The change of B over A from paired repetitions: a fraction (0.12 is +12%, worse in the
    rule's direction), its Hodges-Lehmann estimate and exact Wilcoxon interval at ``1 - 2 alpha``
    (each side ``alpha``). ``p_worse`` tests "the change is at most ``threshold``" (small: B is
    worse than the threshold), ``p_better`` tests "the change is at least ``threshold``"."""

    n: int
    estimate: float
    low: float
    high: float
    threshold: float
    p_worse: float
    p_better: float

    @property
    def beyond(self) -> bool:
        """The whole interval is above the threshold."""
        return self.low > self.threshold

    @property
    def within(self) -> bool:
        """The whole interval is below the threshold."""
        return self.high < self.threshold


def paired_change(
    reference: Sequence[float],
    candidate: Sequence[float],
    *,
    threshold: float,
    alpha: float,
    direction: str = "up",
) -> PairedChange:
    """Decide on paired values (``reference[i]`` and ``candidate[i]`` measured side by side).

    The test is the exact one-sided Wilcoxon signed-rank test of the log ratios against
    ``log(1 + threshold)``; the interval is its inversion (Walsh averages), so "the interval is
    wholly above the threshold" and "``p_worse`` <= alpha" are the same statement.
    """
    a = _finite(reference)
    b = _finite(candidate)
    if len(a) != len(b) or len(a) == 0:
        raise ValueError("paired values need the same, non-zero number of each side")
    if np.any(a <= 0) or np.any(b <= 0):
        raise ValueError("paired ratios need positive values")
    d = np.log(b / a)
    if direction == "down":
        d = -d
    n = len(d)
    walsh = np.sort(np.add.outer(d, d)[np.triu_indices(n)] / 2.0)
    m = len(walsh)
    log_threshold = math.log1p(threshold)
    c = _critical(n, alpha)
    low = walsh[m - c] if c is not None else -math.inf
    high = walsh[c - 1] if c is not None else math.inf
    tail = _signed_rank_tail(n)
    # T+(theta) is the number of Walsh averages above theta (ties count half), so both p-values
    # come from the same exact distribution as the interval.
    above = np.sum(walsh > log_threshold) + 0.5 * np.sum(walsh == log_threshold)
    below = m - above
    p_worse = float(tail[min(m, math.ceil(above))])
    p_better = float(tail[min(m, math.ceil(below))])
    return PairedChange(
        n=n,
        estimate=math.expm1(float(np.median(walsh))),
        low=math.expm1(low),  # -100% when too few pairs bound it
        high=math.expm1(high),  # +inf likewise
        threshold=threshold,
        p_worse=p_worse,
        p_better=p_better,
    )


def paired_detectable_change(
    pair_noise: float, pairs: int, *, threshold: float, alpha: float, power: float = DEFAULT_POWER
) -> float:
    """The smallest true change (a fraction) that ``pairs`` paired repetitions block with
    probability ``power``: the threshold plus the margin the signed-rank test needs at this
    per-pair noise (``pair_noise``: the sd of one pair's log ratio; the test's efficiency
    relative to the t test is 3/pi)."""
    margin = (distributions.norm.ppf(1 - alpha) + distributions.norm.ppf(power)) * pair_noise
    margin *= math.sqrt(math.pi / 3.0 / pairs)
    return math.expm1(math.log1p(threshold) + margin)


def summarize(values: Iterable[float]) -> dict:
    """What a baseline stores for one metric: its centre (the noise model's, else the median),
    sample stdev, min, max, n, and the log-scale noise when there is a model.

    Every statistic but ``n`` is ``None`` for no values, so an empty summary is still a record.
    """
    numbers = _finite(values)
    n = len(numbers)
    if n == 0:
        return {"centre": None, "stdev": None, "min": None, "max": None, "n": 0, "noise": None}
    model = noise_model(numbers)
    return {
        "centre": model.centre if model else float(np.median(numbers)),
        "stdev": float(np.std(numbers, ddof=1)) if n >= 2 else None,
        "min": float(numbers.min()),
        "max": float(numbers.max()),
        "n": n,
        "noise": model.cv if model else None,
    }
