"""The numbers of the router comparison: FLOPs to reach a target perplexity, PPL at an equal FLOPs
budget (paired per seed), mean ± std over seeds.

Pure functions of logged values, tested against hand computations (tests/analysis).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple


def flops_to_reach(curve: Sequence[Tuple[float, float]], target_ppl: float) -> Optional[float]:
    """Training FLOPs at which a validation curve first reaches ``target_ppl`` (paper Table VI).

    Args:
        curve: ``(cumulative training FLOPs, val PPL)`` per evaluation, in training order.
        target_ppl: the perplexity to reach (e.g. Switch's final one).

    Returns:
        The FLOPs where the curve first gets to ``val_ppl <= target``, linearly interpolated between
        the two evaluations that bracket the crossing (perplexity is linear in FLOPs between two
        evaluations); the first evaluation's FLOPs if it is already at the target (nothing earlier
        was measured, so that is an upper bound); None when the curve never reaches it ("not reached").
    """
    previous = None
    for flops, ppl in curve:
        if not (math.isfinite(flops) and math.isfinite(ppl)):
            previous = None
            continue
        if ppl <= target_ppl:
            if previous is None:
                return float(flops)
            f0, p0 = previous
            if p0 == ppl:
                return float(flops)
            return f0 + (flops - f0) * (p0 - target_ppl) / (p0 - ppl)
        previous = (flops, ppl)
    return None


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation of the values that exist, and how many did.

    ``std`` is the sample standard deviation (n - 1), 0.0 for a single value; ``count`` of
    ``total`` values were present (None marks e.g. "not reached" in one seed).
    """

    mean: Optional[float]
    std: Optional[float]
    count: int
    total: int

    def format(self, scale: float = 1.0, digits: int = 2, missing: str = "not reached") -> str:
        """``"12.34 ± 0.56"`` (std only with several values), ``missing`` when none, and a
        ``(k/n seeds)`` note when only some values exist."""
        if self.mean is None:
            return missing
        text = f"{self.mean / scale:.{digits}f}"
        if self.total > 1:
            text += f" ± {self.std / scale:.{digits}f}"
        if self.count < self.total:
            text += f" ({self.count}/{self.total} seeds)"
        return text


def mean_std(values: Sequence[Optional[float]]) -> Stat:
    """:class:`Stat` of ``values``; None and non-finite entries are counted as missing."""
    present = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not present:
        return Stat(None, None, 0, len(values))
    mean = sum(present) / len(present)
    if len(present) > 1:
        std = math.sqrt(sum((v - mean) ** 2 for v in present) / (len(present) - 1))
    else:
        std = 0.0
    return Stat(mean, std, len(present), len(values))


def ratio(value: Optional[float], reference: Optional[float]) -> Optional[float]:
    """``value / reference`` (Table VI normalises by Switch), None when either is missing."""
    if value is None or reference is None or reference == 0:
        return None
    return value / reference


def value_at(curve: Sequence[Tuple[float, float]], flops: float) -> Optional[float]:
    """Validation PPL of a curve at ``flops``, linearly interpolated between the two evaluations
    around it (as :func:`flops_to_reach`); None outside the evaluated range.

    Args:
        curve: ``(cumulative training FLOPs, val PPL)`` per evaluation, in training order (finite
            points only are used).
        flops: the budget to read the curve at.
    """
    points = [(f, p) for f, p in curve if math.isfinite(f) and math.isfinite(p)]
    for (f0, p0), (f1, p1) in zip(points, points[1:]):
        if f0 <= flops <= f1:
            return p0 if f1 == f0 else p0 + (p1 - p0) * (flops - f0) / (f1 - f0)
    if points and points[-1][0] == flops:
        return points[-1][1]
    return None


@dataclass(frozen=True)
class PairedDifference:
    """One seed's comparison of a variant with the reference at equal training FLOPs.

    ``budget`` is the largest FLOPs both runs reached (the smaller of their totals); ``difference``
    = variant PPL - reference PPL there (negative: the variant is better); None when a curve does
    not cover the budget.
    """

    budget: float
    variant_ppl: Optional[float]
    reference_ppl: Optional[float]

    @property
    def difference(self) -> Optional[float]:
        if self.variant_ppl is None or self.reference_ppl is None:
            return None
        return self.variant_ppl - self.reference_ppl


def paired_difference(
    variant: Sequence[Tuple[float, float]], reference: Sequence[Tuple[float, float]]
) -> PairedDifference:
    """Compare two curves of the same seed at the largest FLOPs budget both reached."""
    ends = [max((f for f, _ in curve if math.isfinite(f)), default=float("nan")) for curve in (variant, reference)]
    budget = min(ends)
    if not math.isfinite(budget):
        return PairedDifference(budget, None, None)
    return PairedDifference(budget, value_at(variant, budget), value_at(reference, budget))
