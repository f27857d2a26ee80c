"""The model flags a checkpoint was trained with, saved beside it (``<save>/model_args.json``).

Why: fine-tuning must rebuild exactly the pretrained model (layers, experts, router, tokenizer,
vocabulary padding, binary head, ...). Repeating two dozen flags by hand is error prone, and the
checkpoint's own metadata only covers the main sizes. ``pretrain_bert_moe.py`` and
``finetune_glue.py`` write the flags of the model-defining argument groups here; ``finetune_glue.py``
uses a checkpoint's file as defaults (like Megatron-LM's ``--use-checkpoint-args``), so a flag given
on the command line still wins. Precision and communication flags are runtime choices and are
not inherited. Tokenizer paths are stored absolute.

The record also holds the padded vocabulary size (it depends on the TP size it was padded for, and
a checkpoint keeps it under any other layout), the model's name (its row in the GLUE table) and, for
a fine-tuned checkpoint, its task and number of outputs.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, Mapping, Optional

from megatron_evomoe.arguments import MODEL_GROUP, MOE_GROUP
from megatron_evomoe.bert_arguments import BERT_GROUP
from megatron_evomoe.data.flags import TOKENIZER_GROUP
from megatron_evomoe.errors import InputError
from megatron_evomoe.router_arguments import ROUTER_GROUP_PREFIX

MODEL_ARGS_FILE = "model_args.json"
MODEL_GROUPS = (MODEL_GROUP, MOE_GROUP, TOKENIZER_GROUP, BERT_GROUP)
"""Titles of the argument groups whose flags define the model (and every router's group:
``ROUTER_GROUP_PREFIX``)."""
RUNTIME_FLAGS = frozenset(
    {
        "bf16", "fp16", "loss_scale", "initial_loss_scale", "moe_token_dispatcher_type",
        "moe_ranks_per_node", "moe_a2a_alpha_intra", "moe_a2a_beta_intra", "moe_a2a_alpha_inter",
        "moe_a2a_beta_inter", "moe_a2a_calibrate", "moe_per_layer_logging",
    }
)
PATH_FLAGS = ("vocab_file", "merge_file", "tokenizer_model")
RENAMED_FLAGS = {"layernorm_epsilon": "norm_epsilon"}
"""Destinations renamed to Megatron-LM's since older records were written: old name -> new name."""


def model_flag_names(parser: argparse.ArgumentParser) -> list[str]:
    """Destinations of the model-defining flags of ``parser``."""
    names = []
    for group in parser._action_groups:  # argparse has no public accessor for groups
        if group.title in MODEL_GROUPS or (group.title or "").startswith(ROUTER_GROUP_PREFIX):
            names.extend(a.dest for a in group._group_actions if a.dest not in RUNTIME_FLAGS)
    return names


def save_model_args(
    root: str,
    flags: Mapping[str, Any],
    parser: argparse.ArgumentParser,
    model_name: str,
    padded_vocab_size: int,
    task: Optional[str] = None,
    num_outputs: Optional[int] = None,
) -> str:
    """Write ``root/model_args.json`` atomically (call on one rank); returns its path.

    ``flags``: the parsed command line (``RunConfig.flags``); the model-defining ones are written.

    ``padded_vocab_size`` is recorded because it depends on the tensor-parallel size it was padded
    for: a model saved under TP=2 must keep its embedding size when it is loaded under TP=1.
    """
    saved = {}
    for name in model_flag_names(parser):
        value = flags.get(name)
        if name in PATH_FLAGS and value:
            value = os.path.abspath(value)
        saved[name] = value
    record = {
        "flags": saved, "model_name": model_name, "padded_vocab_size": padded_vocab_size,
        "task": task, "num_outputs": num_outputs,
    }
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, MODEL_ARGS_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump(record, f, indent=1, sort_keys=True)
    os.replace(path + ".tmp", path)
    return path


def read_model_args(root: str) -> Optional[dict[str, Any]]:
    """The record saved in checkpoint directory ``root``, or None when it has none."""
    path = os.path.join(root, MODEL_ARGS_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path} is corrupt: {exc}") from None
    if not isinstance(record, dict) or not isinstance(record.get("flags"), dict):
        raise InputError(f"{path} is not a model-args record")
    return record


def flag_defaults(record: dict[str, Any], parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The saved flags that ``parser`` knows, as ``parser.set_defaults`` keywords."""
    known = set(model_flag_names(parser))
    flags = {RENAMED_FLAGS.get(name, name): value for name, value in record["flags"].items()}
    return {name: value for name, value in flags.items() if name in known}


def default_model_name(checkpoint_dir: Optional[str]) -> str:
    """The name of a model saved in ``checkpoint_dir`` (its directory name)."""
    if not checkpoint_dir:
        return "scratch"
    return os.path.basename(os.path.normpath(os.path.abspath(checkpoint_dir)))
