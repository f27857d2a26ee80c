"""What ``finetune_glue.py`` does around :func:`~megatron_evomoe.training.finetune.finetune`.

flags (the source checkpoint's ``model_args.json`` as defaults) -> tokenizer -> every GLUE file read
and checked -> the step schedule from the training-set size -> validated run config -> process
groups -> fine-tune -> exit. User errors (flags, TSV files, checkpoints) end the process with one
line on stderr and exit code 2, as the pretraining scripts do. torch and megatron-core load only
once the flags have parsed (imported inside the functions), so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any, Optional, Sequence

from megatron_evomoe.arguments import build_parser
from megatron_evomoe.bert_arguments import (
    ROBERTA_WARMUP_FRACTION, FinetuneConfig, add_glue_args, finetune_config_from_args,
)
from megatron_evomoe.data.glue.readers import read_task_data
from megatron_evomoe.data.glue.tasks import GlueTask, get_task
from megatron_evomoe.errors import InputError
from megatron_evomoe.flag_checks import check_flag_values
from megatron_evomoe.run_config import build_run_config, world_size_from_env
from megatron_evomoe.training.entry import quiet_megatron
from megatron_evomoe.training.model_args import (
    MODEL_ARGS_FILE, default_model_name, flag_defaults, read_model_args, save_model_args,
)

if TYPE_CHECKING:
    from megatron_evomoe.training.finetune import FinetuneResult

BERT_ONLY_KEY_PREFIX = "lm_head."
"""Every BERT checkpoint (pretrained or fine-tuned: the classifier keeps the frozen LM head) stores it."""

FINETUNE_DEFAULTS = {
    # RoBERTa's GLUE recipe (Liu et al. 2019, Table 10); the paper follows RoBERTa.
    "lr": 2e-5, "lr_decay_style": "linear", "weight_decay": 0.1, "adam_beta1": 0.9, "adam_beta2": 0.98,
    "adam_eps": 1e-6, "clip_grad": 0.0, "micro_batch_size": 16, "log_interval": 50,
}


def parse_finetune_args(
    argv: Optional[Sequence[str]], description: str
) -> tuple[argparse.Namespace, Optional[dict[str, Any]], argparse.ArgumentParser]:
    """Parse the flags; the model flags default to those saved with the source checkpoint.

    Returns (args, the source checkpoint's model-args record or None, the parser).
    """
    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument("--pretrained-checkpoint")
    peek.add_argument("--load")
    known, _ = peek.parse_known_args(argv)
    for flag, root in (("--load", known.load), ("--pretrained-checkpoint", known.pretrained_checkpoint)):
        if root:
            check_bert_checkpoint(flag, root)
    source = known.load or known.pretrained_checkpoint
    record = read_model_args(source) if source else None
    parser = build_parser(description, add_glue_args)
    parser.set_defaults(**FINETUNE_DEFAULTS)
    if record is not None:
        parser.set_defaults(**flag_defaults(record, parser))
    return parser.parse_args(argv), record, parser


def check_bert_checkpoint(flag: str, root: str) -> None:
    """``root`` exists and holds a BERT checkpoint (a masked-LM head: pretraining or fine-tuning),
    before its flags are read or anything is built."""
    from megatron_evomoe.training.checkpoint_files import holds_key_prefix
    from megatron_evomoe.training.checkpointing import TRACKER_FILE, checkpoint_dir, read_tracker

    if not os.path.isdir(root):
        raise InputError(f"{flag} {root}: no such checkpoint directory")
    if not os.path.isfile(os.path.join(root, TRACKER_FILE)):
        if not os.path.isfile(os.path.join(root, MODEL_ARGS_FILE)):
            raise InputError(f"{flag} {root} holds no checkpoint ({TRACKER_FILE} is missing)")
        return  # only the model's flags so far (e.g. a fine-tuning run that has not saved yet)
    ckpt_dir = checkpoint_dir(root, read_tracker(root))
    if holds_key_prefix(ckpt_dir, BERT_ONLY_KEY_PREFIX) is False:
        raise InputError(
            f"{flag} {root} is not a BERT checkpoint ({ckpt_dir} has no masked-LM head; a GPT checkpoint?): "
            "fine-tune from a pretrain_bert_moe.py or finetune_glue.py --save directory"
        )


UNSUPPORTED_FLAGS = {
    # dest: the pretraining loop's flags that the epoch loop of finetune.py does not act on
    "exit_duration_in_mins": None, "exit_interval": None, "exit_signal_handler": False, "moe_per_layer_logging": False,
}


def check_unsupported_flags(args: argparse.Namespace) -> None:
    """A pretraining flag that fine-tuning would ignore is an error, not a silent no-op."""
    for dest, default in UNSUPPORTED_FLAGS.items():
        if getattr(args, dest) != default:
            raise InputError(f"finetune_glue.py does not support --{dest.replace('_', '-')} (it runs whole epochs "
                             "and logs the summed auxiliary loss): leave it out")


def set_schedule(args: argparse.Namespace, config: FinetuneConfig, num_train: int, world_size: int) -> None:
    """--train-iters from epochs x steps per epoch (whole global batches); without a warm-up flag,
    RoBERTa's 6% of the steps (``build_run_config`` turns the fraction into iterations)."""
    for flag, value in (("--train-iters", args.train_iters), ("--train-samples", args.train_samples)):
        if value is not None:
            raise InputError(f"finetune_glue.py takes its length from --epochs: {flag} is not used, leave it out")
    dp = world_size // (args.tensor_model_parallel_size * args.pipeline_model_parallel_size)
    global_batch = args.global_batch_size or args.micro_batch_size * max(dp, 1)
    steps_per_epoch = num_train // global_batch
    if config.epochs > 0 and steps_per_epoch == 0:
        raise InputError(f"train.tsv has {num_train} examples, fewer than one global batch ({global_batch})")
    args.train_iters = max(1, config.epochs * steps_per_epoch)
    if args.lr_warmup_fraction is None and not args.lr_warmup_iters:
        args.lr_warmup_fraction = ROBERTA_WARMUP_FRACTION
    args.eval_interval = args.train_iters  # the loop's interval is unused: dev sets are scored per epoch
    args.finetune = bool(args.load)  # --load: weights only (a fine-tuned model), start at step 0


def vocabulary_size(args: argparse.Namespace, tokenizer, record: Optional[dict]) -> int:
    """The source checkpoint's padded vocabulary (whatever TP it was padded for), else padded here."""
    from megatron_evomoe.data.tokenizer import padded_vocab_size

    tp = args.tensor_model_parallel_size
    saved = (record or {}).get("padded_vocab_size")
    if saved is None:
        return padded_vocab_size(tokenizer.vocab_size, args.make_vocab_size_divisible_by, tp)
    if saved < tokenizer.vocab_size or saved % tp:
        raise InputError(
            f"the checkpoint's padded vocabulary ({saved}) does not fit this tokenizer ({tokenizer.vocab_size} ids) "
            f"and --tensor-model-parallel-size {tp}"
        )
    return saved


def check_load_source(task: GlueTask, record: Optional[dict], args: argparse.Namespace) -> None:
    """--load needs a checkpoint fine-tuned on this task (its head has this task's outputs)."""
    if not args.load or record is None:
        return
    if record.get("task") != task.name:
        what = f"fine-tuned on {record['task']}" if record.get("task") else "a pretraining checkpoint"
        raise InputError(
            f"--load {args.load} is {what}, not a {task.name} model: use --pretrained-checkpoint {args.load} "
            "to fine-tune from its encoder with a new head"
        )


def main(argv: Optional[Sequence[str]] = None, description: str = "") -> Optional[FinetuneResult]:
    """Run ``finetune_glue.py``."""
    quiet_megatron()
    try:
        args, record, parser = parse_finetune_args(argv, description)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    # torch and megatron-core load from here on: --help and flag errors have answered without them.
    from megatron_evomoe import initialize
    from megatron_evomoe.data.mlm_tokenizer import mlm_tokenizer_from_args
    from megatron_evomoe.training.dry_run import print_dry_run
    from megatron_evomoe.training.finetune import finetune, glue_loop_task
    from megatron_evomoe.training.startup_checks import check_startup

    try:
        config = finetune_config_from_args(args)
        task = get_task(config.task)
        check_load_source(task, record, args)
        data = read_task_data(task, config.data_dir, train=config.epochs > 0, test=config.predict)
        check_flag_values(args, train_length=False)  # before the schedule divides by the batch size
        check_unsupported_flags(args)
        set_schedule(args, config, len(data.train), world_size_from_env())
        tokenizer = mlm_tokenizer_from_args(args)
        run = build_run_config(args, vocabulary_size(args, tokenizer, record))
        if run.training.dry_run:  # validate, print sizes and memory (training/dry_run.py); no training
            print_dry_run(run, glue_loop_task(task, run.bert.binary_head), fine_tuning=True)
            return None
        check_startup(run)
        source = args.load or config.pretrained_checkpoint
        model_name = config.model_name or (record or {}).get("model_name") or default_model_name(source)
        if run.training.save and int(os.environ.get("RANK", "0")) == 0:
            save_model_args(
                run.training.save, run.flags, parser, model_name, run.model.vocab_size, task.name, task.num_outputs
            )
        initialize.initialize(run.layout, run.training.seed, run.distributed_timeout_minutes)
        result = finetune(run, config, task, data, tokenizer, model_name, add_binary_head=run.bert.binary_head)
    except InputError as exc:  # user errors: flags, data, checkpoints (anything else is a bug: traceback)
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    initialize.shutdown()
    return result
