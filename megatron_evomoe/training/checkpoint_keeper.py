"""Which checkpoint is the last good one: non-finite streaks, poisoned saves and retention.

- A save becomes the latest checkpoint only if the weights and optimizer state are finite on every
  rank and no non-finite streak (consecutive skipped steps) is running. Otherwise it is written to
  ``iter_XXXXXXX.nonfinite`` for inspection and the tracker stays where it was.
- A run that stops for non-finite steps is poisoned from the start of the streak: weights can be
  finite and still give NaN on every forward pass (divergence). A checkpoint this run saved at or after
  the iteration whose weights fed the first skipped step is renamed ``.nonfinite``, and the tracker
  goes back to the newest checkpoint before it.
- ``--save-retain N`` keeps the newest N checkpoints. Older ones are deleted only once the newest is
  confirmed (a finite step followed it, or the run ended), so a streak starting right after a save
  still finds the previous checkpoints. The checkpoint this run loaded is never deleted, nor are those
  with a higher iteration than this run's saves (left by a run abandoned with ``--ckpt-step``).

Directory changes are made by rank 0; the decisions are the same on every rank.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, List, Optional

import torch.distributed as dist

from megatron_evomoe.training.checkpointing import (
    CheckpointError,
    checkpoint_dir,
    nonfinite_dir,
    read_tracker,
    remove_directory,
    saved_iterations,
    write_tracker,
)
from megatron_evomoe.training.finite_check import first_nonfinite_training_state


@dataclass
class SaveOutcome:
    """Where a save went and why it is not the latest checkpoint, if it is not."""

    path: str
    good: bool
    nonfinite_tensor: Optional[str] = None
    """Name of a non-finite weight or optimizer tensor, if any."""


class CheckpointKeeper:
    """Decides the name of each save, demotes poisoned ones and applies retention.

    Args:
        root: ``--save`` (None: the run saves nothing).
        retain: ``--save-retain`` (None: keep every checkpoint).
        loaded: the iteration this run loaded from ``root``, never deleted (None if it did not).
    """

    def __init__(self, root: Optional[str], retain: Optional[int] = None, loaded: Optional[int] = None):
        self.root = root
        self.retain = retain
        self.loaded = loaded
        self.streak_start: Optional[int] = None
        """The iteration whose weights fed the first step of the running non-finite streak."""
        self.good_saves: List[int] = []
        self.unconfirmed = False

    # ------------------------------------------------------------------------------ the loop's side
    def observe_step(self, iteration: int, applied: bool) -> None:
        """After the step that started from the weights of ``iteration``."""
        if not applied:
            if self.streak_start is None:
                self.streak_start = iteration
            return
        self.streak_start = None
        if self.unconfirmed:
            self._retain()

    def save(self, iteration: int, write: Callable[[bool], str], model_chunks, optimizer) -> SaveOutcome:
        """Check finiteness, then ``write(latest)`` the checkpoint of ``iteration``; collective."""
        bad = first_nonfinite_training_state(model_chunks, optimizer)
        good = bad is None and self.streak_start is None
        path = write(good)
        if good:
            self.good_saves.append(iteration)
            self.unconfirmed = True
        return SaveOutcome(path, good, bad)

    def finish(self) -> None:
        """The run ended normally: its newest checkpoint is confirmed."""
        if self.unconfirmed and self.streak_start is None:
            self._retain()

    def demote_streak(self) -> List[str]:
        """The run stops for non-finite steps: un-make this run's checkpoints from the streak on.

        Returns the renamed directories. Collective (rank 0 renames, then all ranks wait).
        """
        if self.root is None or self.streak_start is None:
            return []
        poisoned = [it for it in self.good_saves if it >= self.streak_start]
        if poisoned and dist.get_rank() == 0:
            for iteration in poisoned:
                target = nonfinite_dir(self.root, iteration)
                if os.path.exists(target):
                    remove_directory(target)
                os.replace(checkpoint_dir(self.root, iteration), target)
            earlier = [it for it in saved_iterations(self.root) if it <= self.streak_start]
            write_tracker(self.root, max(earlier) if earlier else None)
        self.good_saves = [it for it in self.good_saves if it < self.streak_start]
        self.unconfirmed = False
        dist.barrier()
        return [nonfinite_dir(self.root, it) for it in poisoned]

    def last_good_message(self) -> str:
        """One sentence: which checkpoint a resume from ``--save`` would load."""
        if self.root is None:
            return "No checkpoint was saved (no --save)."
        try:
            return f"The last good checkpoint is {checkpoint_dir(self.root, read_tracker(self.root))} (latest)."
        except CheckpointError:
            return f"There is no good checkpoint in {self.root}."

    # ---------------------------------------------------------------------------------- retention
    def _retain(self) -> None:
        self.unconfirmed = False
        if self.root is None or not self.retain or dist.get_rank() != 0:
            return
        newest = max(self.good_saves)
        history = [it for it in saved_iterations(self.root) if it <= newest]
        keep = set(history[-self.retain:]) | {newest}
        if self.loaded is not None:
            keep.add(self.loaded)
        for iteration in history:
            if iteration not in keep:
                remove_directory(checkpoint_dir(self.root, iteration))
