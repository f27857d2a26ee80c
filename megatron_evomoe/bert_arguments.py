"""Flags of the BERT pretraining and GLUE fine-tuning scripts (Megatron-LM's names where it has one).

They extend the common parser of ``arguments.py`` through its ``extra_args_provider``:
``pretrain_bert_moe.py`` adds :func:`add_bert_args`, ``finetune_glue.py`` adds both functions.
The fine-tuning flags are validated into a :class:`FinetuneConfig`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Optional

from megatron_evomoe.data.glue.tasks import GLUE_TASKS
from megatron_evomoe.errors import InputError

BERT_GROUP = "BERT"
ROBERTA_WARMUP_FRACTION = 0.06
"""Fine-tuning warm-up, a fraction of all steps, when no warm-up flag is given (RoBERTa, Liu et al. 2019)."""
GLUE_GROUP = "GLUE fine-tuning"


def add_bert_args(parser: argparse.ArgumentParser) -> None:
    """Model and masking flags of BERT/RoBERTa pretraining."""
    g = parser.add_argument_group(BERT_GROUP)
    g.add_argument(
        "--bert-no-binary-head", action="store_false", dest="bert_binary_head", default=True,
        help="RoBERTa-style MLM only, the EvoMoE paper's: no sentence-pair head, no token types "
        "(default: the head on, as in Megatron-LM)",
    )
    g.add_argument(
        "--bert-binary-head", action="store_true", dest="bert_binary_head", default=True,
        help="BERT's sentence-pair head (next-sentence / sentence-order) with token types: the default; "
        "accepted because earlier versions of this project needed it to turn the head on",
    )
    g.add_argument("--mask-prob", type=float, default=0.15, help="fraction of tokens to predict (80/10/10)")
    g.add_argument(
        "--short-seq-prob", type=float, default=0.0,
        help="probability of a shorter sample (BERT: 0.1; RoBERTa fills every sample: 0)",
    )
    g.add_argument("--mask-whole-words", action="store_true", help="mask all pieces of a WordPiece word together")


def add_glue_args(parser: argparse.ArgumentParser) -> None:
    """The BERT model flags plus the fine-tuning flags."""
    add_bert_args(parser)
    g = parser.add_argument_group(GLUE_GROUP)
    g.add_argument("--task", choices=list(GLUE_TASKS), required=True, help="the GLUE task to fine-tune on")
    g.add_argument("--data-dir", required=True, help="the task's GLUE directory (train.tsv, dev*.tsv, test*.tsv)")
    g.add_argument(
        "--pretrained-checkpoint", default=None,
        help="start from this checkpoint's encoder with a new head: a pretrain_bert_moe.py --save directory "
        "(any parallel layout), or a fine-tuned one (RTE from MNLI)",
    )
    g.add_argument("--epochs", type=int, default=3, help="passes over train.tsv (RoBERTa: 10)")
    g.add_argument("--results-json", default=None, help="write the best dev epoch's metrics here")
    g.add_argument("--model-name", default=None, help="the row of this run in tools/glue_table.py")
    g.add_argument("--predict", action="store_true", help="write test predictions of the best dev epoch")
    g.add_argument("--predict-dir", default="glue_predictions", help="where --predict writes submission files")
    g.add_argument("--eval-batch-size", type=int, default=None, help="micro-batch size of evaluation")


@dataclass(frozen=True)
class BertOptions:
    """The BERT model and masking flags (:func:`add_bert_args`)."""

    binary_head: bool = True
    """The pooler and the NSP/SOP head, with token types (off: --bert-no-binary-head)."""
    mask_prob: float = 0.15
    """--mask-prob."""
    short_seq_prob: float = 0.0
    """--short-seq-prob."""
    mask_whole_words: bool = False
    """--mask-whole-words."""


def bert_options_from_args(args: argparse.Namespace) -> Optional[BertOptions]:
    """The BERT flags of ``args``; None when the parser has none (GPT)."""
    if not hasattr(args, "bert_binary_head"):
        return None
    return BertOptions(args.bert_binary_head, args.mask_prob, args.short_seq_prob, args.mask_whole_words)


@dataclass
class FinetuneConfig:
    """One GLUE fine-tuning run."""

    task: str
    """The GLUE task (--task)."""
    data_dir: str
    """Directory of the task's TSV files (--data-dir)."""
    epochs: int = 3
    """Passes over the training set; 0 only evaluates (and predicts) a --load checkpoint."""
    pretrained_checkpoint: Optional[str] = None
    """Encoder weights to start from (--pretrained-checkpoint); the head is always new."""
    lr_warmup_fraction: Optional[float] = None
    """--lr-warmup-fraction; with neither it nor --lr-warmup-iters, :data:`ROBERTA_WARMUP_FRACTION`."""
    results_json: Optional[str] = None
    """Path of the results JSON (--results-json)."""
    model_name: Optional[str] = None
    """Row name in the results table (default: the pretrained model's name)."""
    predict: bool = False
    """Write test predictions of the best dev epoch (--predict)."""
    predict_dir: str = "glue_predictions"
    """Directory of the submission files (--predict-dir)."""
    eval_micro_batch_size: int = 16
    """Micro-batch size of dev/test inference (--eval-batch-size, default --micro-batch-size)."""

    def __post_init__(self) -> None:
        if self.task not in GLUE_TASKS:
            raise InputError(f"--task {self.task!r} is not one of {', '.join(GLUE_TASKS)}")
        if self.epochs < 0:
            raise InputError(f"--epochs must be >= 0, got {self.epochs}")
        if self.lr_warmup_fraction is not None and not 0.0 <= self.lr_warmup_fraction < 1.0:
            raise InputError(f"--lr-warmup-fraction must be in [0, 1), got {self.lr_warmup_fraction}")
        if self.eval_micro_batch_size < 1:
            raise InputError(f"--eval-batch-size must be >= 1, got {self.eval_micro_batch_size}")


def finetune_config_from_args(args: argparse.Namespace) -> FinetuneConfig:
    """Validate the fine-tuning flags (``--load`` with ``--pretrained-checkpoint`` is ambiguous)."""
    if args.load and args.pretrained_checkpoint:
        raise InputError(
            "give --pretrained-checkpoint (new head) or --load (a checkpoint fine-tuned on this task), not both"
        )
    if args.epochs == 0 and not args.load:
        raise InputError("--epochs 0 only evaluates: it needs --load with a checkpoint fine-tuned on this task")
    return FinetuneConfig(
        task=args.task,
        data_dir=args.data_dir,
        epochs=args.epochs,
        pretrained_checkpoint=args.pretrained_checkpoint,
        lr_warmup_fraction=args.lr_warmup_fraction,
        results_json=args.results_json,
        model_name=args.model_name,
        predict=args.predict,
        predict_dir=args.predict_dir,
        eval_micro_batch_size=args.eval_batch_size or args.micro_batch_size,
    )
