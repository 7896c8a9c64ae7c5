"""The statistics behind every interval and verdict the reports print (scipy and statsmodels).

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
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
from scipy import special, stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_confint, test_proportions_2indep

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE


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


def t_interval(values: Sequence[float]) -> Optional[Interval]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if len(values) < 2:
        return None
    mean, sem = float(np.mean(values)), float(stats.sem(values))
    half = float(stats.t.ppf(1 - ALPHA / 2, len(values) - 1)) * sem
    return Interval(mean, mean - half, mean + half, len(values))


def moments_interval(mean: float, std: float, n: int) -> Optional[Interval]:
    """The interval of a mean from its sample's moments."""
    if n < 2 or not std >= 0:
        return None
    half = float(stats.t.ppf(1 - ALPHA / 2, n - 1)) * std / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


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


def proportion_interval(correct: int, total: int) -> Optional[Interval]:
    if total <= 0:
        return None
    low, high = proportion_confint(correct, total, alpha=ALPHA, method="wilson")
    return Interval(correct / total, float(low), float(high), 1)


def welch(new: Sequence[float], old: Sequence[float]) -> Difference:
    result = stats.ttest_ind(new, old, equal_var=False)
    ci = result.confidence_interval(CONFIDENCE)
    return Difference(float(np.mean(new) - np.mean(old)), float(ci.low), float(ci.high), float(result.pvalue), "welch")


def welch_from_moments(new: Tuple[float, float, int], old: Tuple[float, float, int]) -> Difference:
    """Welch's test and interval from (mean, std, n) of two samples (two runs' step times)."""
    (m1, s1, n1), (m2, s2, n2) = new, old
    result = stats.ttest_ind_from_stats(m1, s1, n1, m2, s2, n2, equal_var=False)
    v1, v2 = s1**2 / n1, s2**2 / n2
    df = (v1 + v2) ** 2 / (v1**2 / (n1 - 1) + v2**2 / (n2 - 1)) if v1 + v2 > 0 else n1 + n2 - 2
    half = float(stats.t.ppf(1 - ALPHA / 2, df)) * math.sqrt(v1 + v2)
    return Difference(m1 - m2, m1 - m2 - half, m1 - m2 + half, float(result.pvalue), "steps")


def two_proportions(correct_new: int, total_new: int, correct_old: int, total_old: int) -> Difference:
    test = test_proportions_2indep(correct_new, total_new, correct_old, total_old, method="score")
    low, high = confint_proportions_2indep(correct_new, total_new, correct_old, total_old, method="newcomb",
                                           alpha=ALPHA)
    diff = correct_new / total_new - correct_old / total_old
    return Difference(diff, float(low), float(high), float(test.pvalue), "two-proportion")


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
    """Holm-adjusted p-values (NaN stays NaN)."""
    present = [i for i, p in enumerate(pvalues) if p is not None and not math.isnan(p)]
    adjusted = [math.nan] * len(pvalues)
    if present:
        corrected = multipletests([pvalues[i] for i in present], alpha=ALPHA, method="holm")[1]
        for i, p in zip(present, corrected, strict=True):
            adjusted[i] = float(p)
    return adjusted
