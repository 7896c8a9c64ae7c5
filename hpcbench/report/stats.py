"""The statistics behind every interval and verdict the reports print.

- Repeats (n >= 2 runs of a configuration, e.g. a `train.seed` sweep): mean and 95% Student t
  interval, mean +- t(0.975, n-1) s / sqrt(n).
- One run's throughput: the interval of its mean step time from its own steps (rank 0's steps
  after the warm-up, pooled over the steady epochs; steps treated as independent draws, which a
  slowly drifting machine violates: then the interval is too narrow), carried over to images/s.
- Accuracy over repeats: a proportion, so its interval must stay in [0, 1]: Student t over the
  runs on the logit scale, mapped back (each run's accuracy as the empirical logit of its test-set
  count, log((c + 0.5) / (N - c + 0.5)), finite at 0 and 1). Runs that all agree leave no spread to
  measure: then Wilson's interval on their pooled counts.
- One run's accuracy: the Wilson interval of the proportion of test images classified right.
- Accuracy difference: with n >= 2 runs on both sides (not all alike), Welch's t-test over the
  runs; otherwise a two-proportion score test on the test-set counts (a side's runs pooled), with Newcombe's
  interval. Throughput and time differences: Welch's t-test over runs (n >= 2 on both sides), or
  over the two runs' step times (single runs).
- Many comparisons in one report: p-values adjusted by Holm's method (family-wise error 5%).

The distributions come from scipy.special (Student t and normal quantiles and tails); the tests'
formulas are the textbook ones, written here because importing scipy.stats and statsmodels costs
2 s of every report (1.9 s of a 6 s report over 1,000 runs, on 2 cores). tests/test_verdicts.py
checks each against scipy.stats and statsmodels, which stay the reference.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
from scipy import special

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE
Z = float(special.ndtri(1 - ALPHA / 2))  # the normal quantile of a two-sided 95% interval, 1.96


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int  # runs (or steps, for a single run's throughput)

    def relative(self) -> Tuple[float, float]:
        return self.low / self.mean, self.high / self.mean


@dataclass(frozen=True)
class Difference:
    """new - old (or config - baseline), its 95% interval and the test's p-value."""

    value: float
    low: float
    high: float
    p: float
    test: str  # welch | two-proportion | steps


def t_quantile(df: float) -> float:
    """The Student t quantile of a two-sided 95% interval with `df` degrees of freedom."""
    return float(special.stdtrit(df, 1 - ALPHA / 2))


def moments_interval(mean: float, std: float, n: int) -> Optional[Interval]:
    """The interval of a mean from its sample's moments."""
    if n < 2 or not std >= 0:
        return None
    half = t_quantile(n - 1) * std / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


def t_interval(values: Sequence[float]) -> Optional[Interval]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if len(values) < 2:
        return None
    return moments_interval(float(np.mean(values)), float(np.std(values, ddof=1)), len(values))


def throughput_interval(samples_per_s: float, step_mean_s: float, step_std_s: float, steps: int) -> Optional[Interval]:
    """A single run's images/s with the uncertainty of its mean step time (rate = batch / step)."""
    step = moments_interval(step_mean_s, step_std_s, steps)
    if step is None or step.low <= 0:
        return None
    return Interval(samples_per_s, samples_per_s * step_mean_s / step.high, samples_per_s * step_mean_s / step.low,
                    steps)


def accuracy_interval(accuracies: Sequence[float], totals: Sequence[Optional[int]]) -> Optional[Interval]:
    """The interval of the mean accuracy of n >= 2 runs, within [0, 1]; `totals` are the runs'
    test-set sizes (None where unknown, e.g. imported logs: the accuracy is then clipped to half
    an image of a 10,000-image test set before its logit is taken)."""
    if len(accuracies) < 2:
        return None
    if all(t and not math.isnan(t) for t in totals):
        correct = [round(a * t) for a, t in zip(accuracies, totals, strict=True)]
        if len(set(accuracies)) == 1:  # no spread to measure
            pooled = proportion_interval(sum(correct), int(sum(totals)))
            return Interval(accuracies[0], pooled.low, pooled.high, len(accuracies))
        logits = [math.log((c + 0.5) / (t - c + 0.5)) for c, t in zip(correct, totals, strict=True)]
    else:
        logits = list(special.logit(np.clip(accuracies, 0.5e-4, 1 - 0.5e-4)))
    on_logits = t_interval(logits)
    low, high = special.expit([on_logits.low, on_logits.high])
    return Interval(float(np.mean(accuracies)), float(low), float(high), len(accuracies))


def _wilson(correct: int, total: int) -> Tuple[float, float]:
    """Wilson's score interval of a proportion (1927)."""
    center = (correct + Z**2 / 2) / (total + Z**2)
    half = Z / (total + Z**2) * math.sqrt(correct * (total - correct) / total + Z**2 / 4)
    return max(0.0, center - half), min(1.0, center + half)


def proportion_interval(correct: int, total: int) -> Optional[Interval]:
    if total <= 0:
        return None
    low, high = _wilson(correct, total)
    return Interval(correct / total, low, high, 1)


def _welch(new: Tuple[float, float, int], old: Tuple[float, float, int], test: str) -> Difference:
    """Welch's t-test and interval of new - old from (mean, std, n) of two samples, with
    Welch-Satterthwaite's degrees of freedom. Samples without spread: p 0 when their means differ,
    undefined (NaN) when they agree, as scipy.stats.ttest_ind says."""
    (m1, s1, n1), (m2, s2, n2) = new, old
    v1, v2 = s1**2 / n1, s2**2 / n2
    diff = m1 - m2
    if v1 + v2 == 0:
        return Difference(diff, diff, diff, 0.0 if diff else math.nan, test)
    df = (v1 + v2) ** 2 / (v1**2 / (n1 - 1) + v2**2 / (n2 - 1))
    se = math.sqrt(v1 + v2)
    p = 2 * float(special.stdtr(df, -abs(diff) / se))
    half = t_quantile(df) * se
    return Difference(diff, diff - half, diff + half, p, test)


def welch(new: Sequence[float], old: Sequence[float]) -> Difference:
    """Welch's t-test over two sets of runs."""
    moments = [(float(np.mean(side)), float(np.std(side, ddof=1)), len(side)) for side in (new, old)]
    return _welch(moments[0], moments[1], "welch")


def welch_from_moments(new: Tuple[float, float, int], old: Tuple[float, float, int]) -> Difference:
    """Welch's test and interval from (mean, std, n) of two samples (two runs' step times)."""
    return _welch(new, old, "steps")


def two_proportions(correct_new: int, total_new: int, correct_old: int, total_old: int) -> Difference:
    """The score test of equal proportions (Miettinen-Nurminen's, whose constrained estimate under
    equality is the pooled proportion, with its N / (N - 1) variance correction: statsmodels'
    test_proportions_2indep method="score") and Newcombe's hybrid score interval of the
    difference (1998), from the two Wilson intervals."""
    p1, p2 = correct_new / total_new, correct_old / total_old
    diff, total = p1 - p2, total_new + total_old
    pooled = (correct_new + correct_old) / total
    variance = pooled * (1 - pooled) * (1 / total_new + 1 / total_old) * total / (total - 1)
    p = 2 * float(special.ndtr(-abs(diff) / math.sqrt(variance))) if variance > 0 else (math.nan if diff == 0 else 0.0)
    (low1, high1), (low2, high2) = _wilson(correct_new, total_new), _wilson(correct_old, total_old)
    low = diff - math.sqrt((p1 - low1) ** 2 + (high2 - p2) ** 2)
    high = diff + math.sqrt((high1 - p1) ** 2 + (p2 - low2) ** 2)
    return Difference(diff, low, high, p, "two-proportion")


def accuracy_difference(new: Sequence[float], new_totals: Sequence[int], old: Sequence[float],
                        old_totals: Sequence[int]) -> Optional[Difference]:
    """Welch over runs when both sides have two or more and some spread, else the two-proportion
    test on the pooled counts (runs that all agree leave Welch's t undefined, while the test set
    still samples the accuracy)."""
    if len(new) >= 2 and len(old) >= 2 and (np.std(new) > 0 or np.std(old) > 0):
        return welch(new, old)
    if not all(new_totals) or not all(old_totals):
        return None  # counts unknown (imported runs)
    correct = [sum(round(a * t) for a, t in zip(side, totals, strict=True)) for side, totals in
               ((new, new_totals), (old, old_totals))]
    return two_proportions(correct[0], sum(new_totals), correct[1], sum(old_totals))


def holm(pvalues: List[float]) -> List[float]:
    """Holm's step-down adjustment (1979): the i-th smallest of m p-values times (m - i + 1), kept
    non-decreasing and at most 1. NaN stays NaN and does not count among the m."""
    present = sorted((p, i) for i, p in enumerate(pvalues) if p is not None and not math.isnan(p))
    adjusted, running = [math.nan] * len(pvalues), 0.0
    for order, (p, i) in enumerate(present):
        running = max(running, min(1.0, (len(present) - order) * p))
        adjusted[i] = running
    return adjusted
