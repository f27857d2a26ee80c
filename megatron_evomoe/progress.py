"""Elapsed time and an estimate of the time left, for the periodic log lines of long runs.

Training, fine-tuning and preprocessing print ``elapsed 0:12:03 | ETA 1:02:11``. The estimate is this
process's rate extrapolated over the work left: a run resumed at iteration 9,000 of 10,000 that has
done 100 iterations in 10 minutes has 900 x 6 s = 1:30:00 left, whatever the earlier attempts took.
Time spent on evaluations and checkpoints is part of the rate, since they recur until the end.
"""

from __future__ import annotations

import math
import time
from typing import Optional


def remaining_seconds(done: float, total: float, elapsed: float, done_at_start: float = 0.0) -> Optional[float]:
    """Seconds left at this process's rate: ``(total - done) * elapsed / (done - done_at_start)``.

    Args:
        done: work finished so far (iterations, documents, bytes), counted from the run's start.
        total: work of the whole run, in the same unit.
        elapsed: seconds this process has spent since it started at ``done_at_start``.
        done_at_start: work already finished when this process started (a resumed run's iteration).

    Returns:
        The estimate, 0 once ``done >= total``, or None while this process has finished nothing
        (no rate yet).
    """
    if done >= total:
        return 0.0
    progressed = done - done_at_start
    if progressed <= 0 or elapsed < 0:
        return None
    return (total - done) * elapsed / progressed


def format_duration(seconds: Optional[float]) -> str:
    """``H:MM:SS`` (hours keep counting past a day: ``27:03:04``); ``?`` for an unknown duration."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    whole = int(round(max(seconds, 0.0)))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def progress_text(done: float, total: float, elapsed: float, done_at_start: float = 0.0) -> str:
    """``elapsed H:MM:SS | ETA H:MM:SS`` for a log line."""
    left = remaining_seconds(done, total, elapsed, done_at_start)
    return f"elapsed {format_duration(elapsed)} | ETA {format_duration(left)}"


class ProgressClock:
    """The wall clock of one process's share of a run: started where the process picked it up.

    Args:
        total: work of the whole run.
        done_at_start: work already finished when this process started.
    """

    def __init__(self, total: float, done_at_start: float = 0.0):
        self.total = total
        self.done_at_start = done_at_start
        self.start = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def text(self, done: float) -> str:
        """``elapsed ... | ETA ...`` with ``done`` units finished."""
        return progress_text(done, self.total, self.elapsed(), self.done_at_start)
