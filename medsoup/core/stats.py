"""Summaries over seeds: mean +- std with n, paired differences with a confidence interval and their
minimum detectable effect, and the one rule that turns an adjusted p-value into a verdict.

A claim that one method is better than another needs both measured on the same seeds;
:func:`paired_difference` takes the two per-seed lists in seed order. Whether a difference is called
better or worse is :func:`judge`'s: only when its Benjamini-Hochberg adjusted p-value is below
:data:`ALPHA`; the interval alone gives only the *nominal* reading (:meth:`PairedDifference.judged`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats as scipy_stats

#: The significance level of every verdict (two-sided), and the power the minimum detectable effect is for.
ALPHA = 0.05
POWER = 0.8


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation (ddof=1) and count of per-seed values."""

    mean: float
    std: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.3f} ± {self.std:.3f} (n={self.n})"


def summarise(values: Sequence[float]) -> Summary:
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        raise ValueError("cannot summarise an empty list of values")
    std = float(array.std(ddof=1)) if array.size > 1 else math.nan
    return Summary(float(array.mean()), std, int(array.size))


def minimum_detectable_effect(sd: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest true mean difference a two-sided paired t-test at level ``alpha`` detects with
    probability ``power``, given the standard deviation ``sd`` of the per-seed differences over ``n``
    seeds: ``(t_{1-alpha/2, n-1} + t_{power, n-1}) * sd / sqrt(n)``, the usual approximation that
    replaces the noncentral t by a shifted central t (slightly optimistic for very few seeds). NaN
    for fewer than two seeds; 0 when the differences do not vary."""
    if n < 2:
        return math.nan
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"alpha and power must lie in (0, 1), got {alpha} and {power}")
    t = scipy_stats.t.ppf(1 - alpha / 2, n - 1) + scipy_stats.t.ppf(power, n - 1)
    return float(t * sd / math.sqrt(n))


def judge(difference: float, p_adjusted: float, n: int, higher_is_better: bool | None = True,
          alpha: float = ALPHA) -> str:
    """The verdict on one comparison, the rule every table of the book uses: ``"better"``/``"worse"``
    (or ``"higher"``/``"lower"`` for a quantity that is neither score nor cost, ``higher_is_better=None``)
    only when the Benjamini-Hochberg adjusted p-value is below ``alpha``; otherwise ``"no significant
    difference"``, or ``"one seed"`` when nothing could be tested."""
    if n < 2:
        return "one seed"
    if not p_adjusted < alpha:  # NaN too
        return "no significant difference"
    if higher_is_better is None:
        return "higher" if difference > 0 else "lower"
    return "better" if (difference > 0) == higher_is_better else "worse"


@dataclass(frozen=True)
class PairedDifference:
    """Mean of ``b - a`` over seeds, its t-based confidence interval, the t-test p-value and the
    minimum detectable effect (:func:`minimum_detectable_effect`) of the same seeds."""

    mean: float
    low: float
    high: float
    p_value: float
    n: int
    confidence: float
    mde: float = math.nan

    @property
    def significant(self) -> bool:
        """True when the interval excludes zero (nominally significant, before any adjustment)."""
        return self.n > 1 and (self.low > 0 or self.high < 0)

    @property
    def outcome(self) -> str:
        """:meth:`judged` for a score, where higher is better (ACC, AUC, F1): the nominal reading."""
        return self.judged(True)

    def judged(self, higher_is_better: bool | None = True) -> str:
        """The *nominal* reading, before adjusting for the other comparisons of a table (the verdict
        itself is :func:`judge`'s): ``"better"`` or ``"worse"`` (b against a, when the interval
        excludes zero) for a score (``higher_is_better``) or a cost (``False``); ``"higher"`` or ``"lower"`` for a quantity that is
        neither (``None``, e.g. a loss barrier compared between kinds of model pairs); ``"no significant
        difference"``, or ``"one seed"`` when there is no interval to judge by."""
        if self.n < 2:
            return "one seed"
        if not self.significant:
            return "no significant difference"
        if higher_is_better is None:
            return "higher" if self.mean > 0 else "lower"
        return "better" if (self.mean > 0) == higher_is_better else "worse"

    def describe(self, subject: str, reference: str, metric: str, outcome: str | None = None) -> str:
        """``outcome`` (default: :attr:`outcome`, judged as a score; or one of :meth:`judged`) in words,
        true for any result: ``"<subject> is better than <reference> in <metric>: +0.020 (95% CI [+0.010,
        +0.030], n=5, MDE 0.012)"``, or ``"is higher than"``; every chapter's verdicts are built from it."""
        if self.n < 2:
            return f"{subject} minus {reference} is {self.mean:+.3f} {metric} on one seed, too few to test"
        relation = {"better": "better than", "worse": "worse than", "higher": "higher than", "lower": "lower than",
                    "no significant difference": "not significantly different from"}[outcome or self.outcome]
        return (f"{subject} is {relation} {reference} in {metric}: {self.mean:+.3f} "
                f"({self.confidence:.0%} CI [{self.low:+.3f}, {self.high:+.3f}], n={self.n}, MDE {self.mde:.3f})")

    def columns(self, higher_is_better: bool | None = True) -> dict[str, float | int | str]:
        """Table columns: ``difference, ci_low, ci_high, mde, p_value, n`` and ``nominal`` (:meth:`judged`)."""
        return {"difference": self.mean, "ci_low": self.low, "ci_high": self.high, "mde": self.mde,
                "p_value": self.p_value, "n": self.n, "nominal": self.judged(higher_is_better)}

    @classmethod
    def from_columns(cls, row, confidence: float = 0.95) -> "PairedDifference":
        """Back from a table row holding :meth:`columns` (a mapping or a named tuple)."""
        get = row.get if hasattr(row, "get") else lambda k: getattr(row, k, None)
        mde = get("mde")  # NaN in a table written before the column existed
        return cls(get("difference"), get("ci_low"), get("ci_high"), get("p_value"), int(get("n")), confidence,
                   math.nan if mde is None else mde)

    def __str__(self) -> str:
        return (f"{self.mean:+.3f} [{self.low:+.3f}, {self.high:+.3f}] "
                f"({self.confidence:.0%} CI, n={self.n}, p={self.p_value:.3f})")


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> PairedDifference:
    """Paired comparison of method ``b`` against method ``a`` measured on the same seeds: the t-interval
    and p-value of ``scipy.stats.ttest_rel(b, a)`` and the :func:`minimum_detectable_effect` of the
    differences' own standard deviation."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired values need the same non-zero length, got {a.size} and {b.size}")
    diff = b - a
    n = diff.size
    mean = float(diff.mean())
    if n < 2:
        return PairedDifference(mean, math.nan, math.nan, math.nan, n, confidence)
    sem = float(diff.std(ddof=1)) / math.sqrt(n)
    mde = minimum_detectable_effect(float(diff.std(ddof=1)), n)
    if sem == 0:
        return PairedDifference(mean, mean, mean, 0.0 if mean else 1.0, n, confidence, mde)
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2, n - 1)) * sem
    p_value = float(2 * scipy_stats.t.sf(abs(mean / sem), n - 1))
    return PairedDifference(mean, mean - half, mean + half, p_value, n, confidence, mde)
