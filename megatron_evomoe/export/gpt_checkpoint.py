"""A GPT-MoE checkpoint loaded into a one-process model, in the routing state it serves with.

Why one process: megatron's distributed checkpoints reshard on load, so a checkpoint written under
any TP/PP/EP layout loads into a TP=PP=EP=1 model; what is exported from that model is then the
same whatever layout trained it. The model is rebuilt from the flags the run recorded in the
checkpoint (``common.pt``'s Megatron-LM ``args``): the model-defining groups (``model_args.py``)
plus the run length that fixes the routing schedule; precision, parallel layout and communication
flags are not taken (the export runs fp32 on the CPU).

The routing state is the one the checkpoint's last step trained with (``run_meta.json``), as
fine-tuning uses it (EvoMoE after T_D: Top-1 at the final tau); a checkpoint without that record
gets the router's final state for its ``--train-iters``.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from typing import Any, Optional

import torch

from megatron_evomoe.arguments import build_parser
from megatron_evomoe.data.errors import DataInputError
from megatron_evomoe.data.gpt_dataset import PATH_FLAGS, GPTDataConfig
from megatron_evomoe.data.tokenizer import FastTokenizer, build_tokenizer_from_args, padded_vocab_size
from megatron_evomoe.data.tokenizer_record import check_tokenizer_record, record_path
from megatron_evomoe.errors import InputError
from megatron_evomoe.models.gpt import build_gpt_model
from megatron_evomoe.moe.evolution import PhaseController
from megatron_evomoe.moe.router_config import RoutingState
from megatron_evomoe.run_config import RunConfig, architecture_meta, build_run_config
from megatron_evomoe.training import checkpointing
from megatron_evomoe.training.checkpoint_files import holds_key_prefix
from megatron_evomoe.training.model_args import model_flag_names

RUN_FLAGS = ("train_iters", "micro_batch_size", "seq_length", "seed", "lr")
"""Flags outside the model groups that the model depends on: the run length resolves routing
schedules (T_S, T_D, StableMoE's stage 1), the others their run-dependent defaults (``--lr``: only
because a run must name it). ``train_iters`` is recorded resolved, also for ``--train-samples``."""

SINGLE_PROCESS = {
    "tensor_model_parallel_size": 1, "pipeline_model_parallel_size": 1, "expert_model_parallel_size": 1,
    "expert_tensor_parallel_size": None, "sequence_parallel": False, "use_distributed_optimizer": False,
    "bf16": False, "fp16": False, "global_batch_size": None, "train_samples": None,
}
TOKENIZER_FLAGS = ("tokenizer_type", "vocab_file", "merge_file", "tokenizer_model")
BERT_KEY_PREFIX = "lm_head."


@dataclass
class ServingModel:
    """What an exporter needs: the model (eval mode, routing state applied) and where it came from."""

    model: torch.nn.Module
    run: RunConfig
    routing_state: Optional[RoutingState]
    iteration: int
    checkpoint: str
    tokenizer: Optional[FastTokenizer]


def checkpoint_flags(ckpt_dir: str) -> dict[str, Any]:
    """The training flags recorded in ``ckpt_dir/common.pt`` (CheckpointError without them)."""
    args, _ = checkpointing.read_args(ckpt_dir)
    return vars(args)


def export_args(saved: dict[str, Any], tokenizer_overrides: Optional[dict[str, Any]] = None) -> argparse.Namespace:
    """Our parser's defaults, the saved model-defining flags, one process, and tokenizer overrides."""
    parser = build_parser("export")
    args = parser.parse_args([])
    for name in [*model_flag_names(parser), *RUN_FLAGS]:
        if name in saved:
            setattr(args, name, saved[name])
    vars(args).update(SINGLE_PROCESS)
    for name, value in (tokenizer_overrides or {}).items():
        if value is not None:
            setattr(args, name, value)
    return args


def _saved_routing_state(ckpt_dir: str) -> Optional[RoutingState]:
    try:
        with open(os.path.join(ckpt_dir, checkpointing.META_FILE)) as handle:
            return RoutingState(**json.load(handle)["routing_state"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _saved_padded_vocab(ckpt_dir: str) -> Optional[int]:
    try:
        with open(os.path.join(ckpt_dir, checkpointing.META_FILE)) as handle:
            return int(json.load(handle)["padded_vocab_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _tokenizer(args: argparse.Namespace) -> Optional[FastTokenizer]:
    if args.tokenizer_type is None:
        return None
    return build_tokenizer_from_args(args)


def check_tokenizer_against_data(saved: dict[str, Any], tokenizer: FastTokenizer) -> None:
    """DataInputError when the training data's ``PREFIX.tokenizer.json`` (written by preprocessing)
    names another tokenizer than the one exported: e.g. a ``--vocab-file`` override pointing at the
    wrong file. Prefixes whose record is not reachable from here are not checked."""
    paths = {name: saved.get(name) for name in PATH_FLAGS}
    try:
        data = GPTDataConfig(seq_length=1, **paths)
    except DataInputError:  # no data flags recorded, or not parseable: nothing to compare with
        return
    for prefix, flag in data.prefixes():
        if os.path.isfile(record_path(prefix)):
            check_tokenizer_record(prefix, tokenizer, flag)


def load_serving_model(
    root: str, iteration: Optional[int] = None, tokenizer_overrides: Optional[dict[str, Any]] = None
) -> ServingModel:
    """Load checkpoint ``root`` (newest, or ``iteration``; or ``root`` names an ``iter_XXXXXXX``
    directory) into a TP=PP=EP=1 GPT-MoE in eval mode.

    Needs torch.distributed and megatron's parallel state initialised as a world of one.

    Raises:
        InputError: not a GPT-MoE checkpoint, tokenizer files missing, or a model that does not fit.
    """
    ckpt_dir = checkpointing.locate(root, iteration)  # root may also name an iter_XXXXXXX directory
    root, iteration = os.path.dirname(ckpt_dir), int(os.path.basename(ckpt_dir)[len("iter_"):])
    if holds_key_prefix(ckpt_dir, BERT_KEY_PREFIX):
        raise InputError(f"{ckpt_dir} is a BERT checkpoint: only GPT-MoE checkpoints (pretrain_gpt_moe.py) export")
    saved = checkpoint_flags(ckpt_dir)
    args = export_args(saved, tokenizer_overrides)
    tokenizer = _tokenizer(args)
    if tokenizer is not None:
        check_tokenizer_against_data(saved, tokenizer)
    vocab = _saved_padded_vocab(ckpt_dir)
    if vocab is None:
        if tokenizer is None:
            raise InputError(f"{ckpt_dir} records neither its vocabulary size nor a tokenizer: pass --tokenizer-type")
        vocab = padded_vocab_size(tokenizer.vocab_size, args.make_vocab_size_divisible_by, 1)
    if tokenizer is not None and tokenizer.vocab_size > vocab:
        raise InputError(
            f"the tokenizer has {tokenizer.vocab_size} ids, more than the checkpoint's vocabulary ({vocab}): "
            "pass the tokenizer flags the model was trained with"
        )
    run = build_run_config(args, vocab, world_size=1)
    model = build_gpt_model(run.model)
    checkpointing.load_checkpoint(
        root, [model], load_rng=False, run_meta=architecture_meta(run.model),
        meta_keys=list(architecture_meta(run.model)), iteration=iteration,
    )
    state = None
    if run.model.num_moe_experts:
        state = _saved_routing_state(ckpt_dir) or run.model.moe_router.final_state(run.training.train_iters)
        PhaseController(run.model).apply_state([model], state)
    model.eval()
    return ServingModel(model, run, state, iteration, os.path.abspath(root), tokenizer)
