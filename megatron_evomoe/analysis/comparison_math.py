"""The numbers of the router comparison: FLOPs to reach a target perplexity, mean ± std over seeds.

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
