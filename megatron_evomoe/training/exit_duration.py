"""``--exit-duration-in-mins`` (Megatron-LM's flag): stop training after that many minutes.

For clusters whose jobs have a time limit: the run stops at a step boundary, saves a checkpoint
(with ``--save``) and exits 0, so the next job resumes from it. As in Megatron-LM the clock starts
when training is set up (checkpoint loading included) and the check runs after every step; the
ranks' clocks differ a little, so every rank asks whether *any* rank is over the limit (one
all-reduce), and all stop after the same iteration and write one consistent checkpoint.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

import torch

from megatron_evomoe.training.collectives import sum_over_world


def duration_exceeded(start: float, now: float, minutes: float) -> bool:
    """Whether more than ``minutes`` have passed from ``start`` to ``now`` (seconds)."""
    return (now - start) / 60.0 > minutes


class ExitDuration:
    """The time limit of one training run.

    Args:
        minutes: ``--exit-duration-in-mins``.
        start: when the clock started (``clock()`` when None).
        clock: seconds since an epoch (tests pass a fake one).
    """

    def __init__(self, minutes: float, start: Optional[float] = None, clock: Callable[[], float] = time.time):
        self.minutes = minutes
        self.clock = clock
        self.start = clock() if start is None else start

    def elapsed_minutes(self) -> float:
        return (self.clock() - self.start) / 60.0

    def exceeded_on_any_rank(self) -> bool:
        """Whether any rank's clock is past the limit (a collective: every rank calls it)."""
        local = duration_exceeded(self.start, self.clock(), self.minutes)
        flag = torch.tensor([1.0 if local else 0.0], dtype=torch.float64)
        return bool(sum_over_world(flag).item() > 0)


def exit_duration(minutes: Optional[float]) -> Optional[ExitDuration]:
    """The limit of ``--exit-duration-in-mins``, its clock started now (None without the flag)."""
    return None if minutes is None else ExitDuration(minutes)
