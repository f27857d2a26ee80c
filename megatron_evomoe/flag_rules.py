"""Megatron-LM's rules for the flags that define a run's size and length, shared by every script.

* The model shape, the micro-batch size, the training length and the learning rate have no default
  (as in Megatron-LM): a command line that leaves one out would otherwise train some other model.
  :func:`check_required` names every missing flag in one line.
* ``--train-samples`` instead of ``--train-iters``: whole global batches, the partial last one
  dropped, as Megatron-LM does without batch-size rampup (:func:`train_iters_from_samples`).
* ``--lr-warmup-fraction``: warm-up as a fraction of the decay iterations (:func:`warmup_iters`).

``--moe-layer-freq`` (an int or a list expression) is read by ``moe_layer_freq.py``. No megatron-core
import: light enough for the parser.
"""

from __future__ import annotations

import argparse
from typing import List, Optional

from megatron_evomoe.errors import InputError

REQUIRED_FLAGS = ("num_layers", "hidden_size", "num_attention_heads", "seq_length", "micro_batch_size", "lr")
"""Destinations of the flags Megatron-LM requires (besides --train-iters or --train-samples)."""

TRAIN_LENGTH = "--train-iters or --train-samples"


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def missing_required_flags(args: argparse.Namespace, train_length: bool = True) -> List[str]:
    """The required flags left out of ``args`` (``train_length``: also the training length)."""
    missing = []
    for dest in REQUIRED_FLAGS:
        if dest == "lr" and train_length and getattr(args, "train_iters", None) is None \
                and getattr(args, "train_samples", None) is None:
            missing.append(TRAIN_LENGTH)  # before --lr, in Megatron-LM's order
        if getattr(args, dest, None) is None:
            missing.append(_flag(dest))
    return missing


def check_required(args: argparse.Namespace, train_length: bool = True) -> None:
    """One error naming every required flag ``args`` lacks."""
    missing = missing_required_flags(args, train_length)
    if missing:
        noun = "flag" if len(missing) == 1 else "flags"
        raise InputError(
            f"missing required {noun}: {', '.join(missing)} (no defaults, as in Megatron-LM: the model and the "
            "run are what the command line says)"
        )


# ---------------------------------------------------------------------------- training length
def train_iters_from_samples(train_samples: int, global_batch_size: int) -> int:
    """Iterations of ``--train-samples``: whole global batches, the partial last one dropped
    (Megatron-LM's ``update_train_iters`` without rampup)."""
    if train_samples < global_batch_size:
        raise InputError(
            f"--train-samples {train_samples} is less than one global batch ({global_batch_size}): nothing would train"
        )
    return train_samples // global_batch_size


def resolve_train_iters(
    train_iters: Optional[int], train_samples: Optional[int], global_batch_size: int
) -> int:
    """``--train-iters``, or the iterations of ``--train-samples`` (the parser lets only one be given;
    the result is the same when called again with it as ``train_iters``)."""
    if train_samples is not None:
        return train_iters_from_samples(train_samples, global_batch_size)
    if train_iters is None:
        raise InputError(f"missing required flag: {TRAIN_LENGTH}")
    return train_iters


def warmup_iters(
    lr_warmup_iters: int, lr_warmup_fraction: Optional[float], decay_iters: int
) -> int:
    """``--lr-warmup-iters``, or ``int(fraction x decay iterations)`` for ``--lr-warmup-fraction``
    (Megatron-LM: a fraction of ``--lr-decay-iters``, which defaults to the training iterations; the
    parser lets only one of the two flags be given)."""
    if lr_warmup_fraction is None:
        return lr_warmup_iters
    if not 0.0 <= lr_warmup_fraction < 1.0:
        raise InputError(f"--lr-warmup-fraction must be in [0, 1), got {lr_warmup_fraction}")
    return int(lr_warmup_fraction * decay_iters)

