"""What every entry script does around its providers: flags -> config -> init -> pretrain -> exit.

User errors (bad flags, bad data, unusable checkpoints) end the process with one line on stderr and
exit code 2, not a traceback.

torch and megatron-core (seconds to import) load only once the flags have parsed: this module, the
parser and the entry scripts import them inside functions, so ``--help`` and a mistyped flag answer
at once (``tests/test_help.py``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from typing import TYPE_CHECKING, Callable, Optional, Sequence

from megatron_evomoe.arguments import parse_args
from megatron_evomoe.errors import InputError
from megatron_evomoe.flag_rules import check_required
from megatron_evomoe.run_config import RunConfig, build_run_config

if TYPE_CHECKING:
    from megatron_evomoe.training.loop import Task, TrainingSession


def quiet_megatron() -> None:
    """Keep megatron-core's INFO/WARNING chatter (e.g. "Unknown MLP type" for our MoE layer) and
    torch's deprecation warnings about megatron's checkpoint calls out of the console; errors still show."""
    logging.getLogger("megatron.core").setLevel(logging.ERROR)
    # A failed checkpoint read or write is raised to us and reported as one line (checkpoint_files.py).
    logging.getLogger("megatron.core.dist_checkpointing").setLevel(logging.CRITICAL)
    for message in (".*Please use DTensor instead", "`load_state_dict` is deprecated"):
        warnings.filterwarnings("ignore", message=message, category=FutureWarning)


def configure(
    args: argparse.Namespace, tokenizer_provider: Optional[Callable] = None
) -> tuple[RunConfig, object]:
    """Tokenizer (for the vocabulary size) and the validated run config.

    ``tokenizer_provider(args)`` builds the tokenizer (BERT adds its special tokens to a BPE one;
    default: ``data.tokenizer.build_tokenizer_from_args``). The required flags are checked first: a
    command line missing them hears so before anything else.
    """
    from megatron_evomoe.data.tokenizer import build_tokenizer_from_args, padded_vocab_size

    check_required(args)
    tokenizer = (tokenizer_provider or build_tokenizer_from_args)(args)
    vocab = padded_vocab_size(
        tokenizer.vocab_size, args.make_vocab_size_divisible_by, args.tensor_model_parallel_size
    )
    saved = checkpoint_padded_vocab(args.load, args.ckpt_step) if args.load else None
    if saved is not None and saved != vocab and saved >= tokenizer.vocab_size:
        # The padding depends on the TP size: resuming under another TP size keeps the
        # checkpoint's embedding shape (when this TP size divides it) instead of failing to load.
        if saved % args.tensor_model_parallel_size != 0:
            raise InputError(
                f"checkpoint {args.load} has a vocabulary padded to {saved}, which "
                f"--tensor-model-parallel-size {args.tensor_model_parallel_size} does not divide"
            )
        vocab = saved
    return build_run_config(args, vocab), tokenizer


def checkpoint_padded_vocab(root: str, iteration: Optional[int] = None) -> Optional[int]:
    """The padded vocabulary size recorded in the checkpoint to load (``--ckpt-step`` or the newest)."""
    from megatron_evomoe.training.checkpointing import META_FILE, CheckpointError, checkpoint_dir, read_tracker

    try:
        iteration = read_tracker(root) if iteration is None else iteration
        meta_path = os.path.join(checkpoint_dir(root, iteration), META_FILE)
        return int(json.load(open(meta_path))["padded_vocab_size"])
    except (CheckpointError, OSError, ValueError, KeyError, TypeError):
        return None


def main(
    make_task: Callable[[RunConfig, object], Task],
    description: str,
    argv: Optional[Sequence[str]] = None,
    extra_args_provider=None,
    defaults: Optional[dict] = None,
    dry_run: Optional[Callable[[RunConfig, Task], None]] = None,
    tokenizer_provider: Optional[Callable] = None,
) -> Optional[TrainingSession]:
    """Parse flags, initialise, train. ``make_task(run, tokenizer)`` builds the task's providers;
    ``dry_run(run, task)`` answers ``--dry-run`` (default: ``training.dry_run.print_dry_run``)."""
    quiet_megatron()
    try:
        args = parse_args(argv, description, extra_args_provider, defaults)
        check_required(args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    # torch and megatron-core load from here on: --help and flag errors have answered without them.
    from megatron_evomoe import initialize
    from megatron_evomoe.training.dry_run import print_dry_run
    from megatron_evomoe.training.loop import TrainingStopped, pretrain
    from megatron_evomoe.training.startup_checks import check_startup

    dry_run = dry_run or print_dry_run
    try:
        run, tokenizer = configure(args, tokenizer_provider)
        task = make_task(run, tokenizer)
        if run.training.dry_run:
            dry_run(run, task)
            return None
        check_startup(run)
        initialize.initialize(run.layout, run.training.seed, run.distributed_timeout_minutes)
        session = pretrain(run, task)
    except InputError as exc:  # user errors: flags, data, checkpoints (anything else is a bug: traceback)
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except TrainingStopped as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(3)
    initialize.shutdown()
    return session
