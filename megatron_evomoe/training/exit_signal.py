"""``--exit-signal-handler`` (Megatron-LM's flag): on SIGTERM, save at the next step boundary and exit 0.

SLURM announces preemption and the end of a time limit with SIGTERM (``#SBATCH --signal=TERM@120``
sends it 120 s early), then kills with SIGKILL after ``KillWait``. Instead of dying mid-step, the
trainer records the signal; at the end of the step every rank asks whether *any* rank received it
(one all-reduce per step), so all ranks stop after the same iteration and save one consistent
checkpoint. A signal can reach one rank only (``kill`` of a single process) or all of them.
"""

from __future__ import annotations

import contextlib
import signal
from typing import Iterator, Optional

import torch

from megatron_evomoe.training.collectives import sum_over_world


class ExitSignalHandler:
    """Records ``signum`` instead of letting it end the process.

    Args:
        signum: the signal to catch (SIGTERM).
    """

    def __init__(self, signum: int = signal.SIGTERM):
        self.signum = signum
        self.received = False

    def _record(self, _signum, _frame) -> None:
        self.received = True

    def received_on_any_rank(self) -> bool:
        """Whether any rank has received the signal so far (a collective: every rank calls it)."""
        flag = torch.tensor([1.0 if self.received else 0.0], dtype=torch.float64)
        return bool(sum_over_world(flag).item() > 0)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


@contextlib.contextmanager
def exit_signal_handler(enabled: bool, signum: int = signal.SIGTERM) -> Iterator[Optional[ExitSignalHandler]]:
    """Within the block, ``signum`` is recorded by the yielded handler (None when not ``enabled``);
    the previous handler comes back afterwards."""
    if not enabled:
        yield None
        return
    handler = ExitSignalHandler(signum)
    previous = signal.signal(signum, handler._record)
    try:
        yield handler
    finally:
        signal.signal(signum, previous)
