"""The dense GPT checkpoint that ``tools/upcycle_checkpoint.py`` upcycles, read into a dense model.

Two kinds are read, both megatron-core ``torch_dist`` checkpoints whose ``common.pt`` holds
Megatron-LM's ``args`` (the architecture under Megatron-LM's names):

* ours (``run_meta.json`` beside it): weights, Adam state (keyed in model space, so any TP/PP/EP/DP
  layout reads it), LR schedule and training position, with checksums verified;
* Megatron-LM's, written by megatron-core's ``GPTModel`` with this repository's architecture flags:
  weights, the training position and the LR schedule (converted from samples to iterations); its
  optimizer state is in Megatron-LM's own layout and is not read, so Adam starts afresh.

Both are read into one process (TP = PP = EP = 1): ``dist_checkpointing`` reshards whatever layout
wrote them. Each problem with the input is one :class:`CheckpointError` line naming the directory.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.validation import StrictHandling

from megatron_evomoe.arguments import parse_args
from megatron_evomoe.models.gpt import build_gpt_model
from megatron_evomoe.run_config import RunConfig, architecture_meta, build_run_config
from megatron_evomoe.training import checkpoint_files, checkpointing
from megatron_evomoe.training.checkpointing import CheckpointError, TrainState, unwrap_model
from megatron_evomoe.training.loop import Task, build_model_chunks, run_meta
from megatron_evomoe.training.optimizer import build_optimizer


MEGATRON_LM_DEFAULTS = {
    "position_embedding_type": ("learned_absolute", "learned_absolute", "position embeddings"),
    "normalization": ("LayerNorm", "LayerNorm", "normalization"),
    "add_bias_linear": (False, True, "linear biases (Megatron-LM: --disable-bias-linear turns them off)"),
    "add_qkv_bias": (False, False, "QKV biases"),
    "swiglu": (False, False, "SwiGLU"),
    "squared_relu": (False, False, "squared ReLU"),
    "openai_gelu": (False, False, "the tanh GeLU (--openai-gelu)"),
    "apply_layernorm_1p": (False, False, "--apply-layernorm-1p"),
    "untie_embeddings_and_output_weights": (False, False, "untied input/output embeddings"),
    "group_query_attention": (False, False, "grouped-query attention"),
    "use_rotary_position_embeddings": (False, False, "rotary position embeddings"),
}
"""``args`` attribute -> (the value this repository's GPT has, Megatron-LM's default where the
attribute is absent, what it is called in the error)."""


@dataclass
class DenseSource:
    """The dense run, loaded.

    Attributes:
        run: its configuration (TP = PP = EP = 1, one process).
        model: its model chunks (megatron DDP around our GPT), holding the loaded weights.
        optimizer: megatron's optimizer, holding the loaded Adam state (empty for Megatron-LM's).
        train_state: where training stood (iteration, consumed samples, FLOPs).
        scheduler_state: the LR scheduler's ``state_dict`` counted in iterations (None: unknown).
        args: Megatron-LM's ``args`` from ``common.pt``.
        ckpt_dir: the ``iter_XXXXXXX`` directory read.
        kind: "ours" or "Megatron-LM".
    """

    run: RunConfig
    model: List
    optimizer: Any
    train_state: TrainState
    scheduler_state: Optional[Dict[str, Any]]
    args: argparse.Namespace
    ckpt_dir: str
    kind: str


def check_dense_gpt(args: argparse.Namespace, ckpt_dir: str) -> None:
    """Raise CheckpointError unless ``args`` describe a dense GPT of this repository's architecture."""
    num_experts = getattr(args, "num_experts", None)
    if num_experts:
        raise CheckpointError(f"{ckpt_dir} is not dense (it has --num-experts {num_experts}): upcycle a dense checkpoint")
    fmt = getattr(args, "ckpt_format", "torch_dist")
    if fmt != "torch_dist":
        raise CheckpointError(f"{ckpt_dir} was saved with --ckpt-format {fmt}: upcycling reads torch_dist checkpoints")
    for name, (ours, megatron_default, what) in MEGATRON_LM_DEFAULTS.items():
        value = getattr(args, name, megatron_default)
        if value != ours:
            raise CheckpointError(
                f"{ckpt_dir} does not have this repository's GPT architecture: {what} is {value!r} (args.{name}), "
                f"expected {ours!r}"
            )
    heads, hidden = args.num_attention_heads, args.hidden_size
    kv_channels = getattr(args, "kv_channels", None)
    if kv_channels not in (None, hidden // heads):
        raise CheckpointError(f"{ckpt_dir}: --kv-channels {kv_channels} differs from hidden size / heads = {hidden // heads}")
    if getattr(args, "padded_vocab_size", None) is None:
        raise CheckpointError(f"{ckpt_dir}/common.pt args lack padded_vocab_size: cannot size the embedding")


def architecture_flags(args: argparse.Namespace, seed: int) -> List[str]:
    """Our training flags for the architecture ``args`` describe (Megatron-LM's names, ours alike),
    with the dense run's precision and optimizer kind (the optimizer state's format follows them)."""
    ffn = getattr(args, "ffn_hidden_size", None) or 4 * args.hidden_size
    epsilon = getattr(args, "norm_epsilon", getattr(args, "layernorm_epsilon", 1e-5))
    flags = [
        "--num-layers", args.num_layers, "--hidden-size", args.hidden_size,
        "--num-attention-heads", args.num_attention_heads, "--ffn-hidden-size", ffn,
        "--seq-length", args.seq_length,
        "--max-position-embeddings", getattr(args, "max_position_embeddings", None) or args.seq_length,
        "--norm-epsilon", epsilon, "--init-method-std", getattr(args, "init_method_std", 0.02),
        "--hidden-dropout", getattr(args, "hidden_dropout", 0.1),
        "--attention-dropout", getattr(args, "attention_dropout", 0.1),
        "--seed", seed, "--train-iters", getattr(args, "train_iters", None) or 1,
        # required flags (no defaults); the dense run's values where it has them, only shapes matter here
        "--micro-batch-size", getattr(args, "micro_batch_size", None) or 1, "--lr", getattr(args, "lr", None) or 1e-4,
    ]
    if getattr(args, "bf16", False):
        flags.append("--bf16")
    elif getattr(args, "fp16", False):
        flags.append("--fp16")
    if getattr(args, "use_distributed_optimizer", False):
        # The same optimizer kind as the dense run: an fp32 run's distributed optimizer keeps master
        # weights that a plain fp32 optimizer does not, so a checkpoint without them would not resume.
        flags.append("--use-distributed-optimizer")
    return [str(flag) for flag in flags]


def dense_run(args: argparse.Namespace, seed: int) -> RunConfig:
    """The RunConfig of ``args``' dense architecture in one process.

    Its ``--moe-layer-freq`` is the saved one (Megatron-LM's default 1 where absent): megatron-core
    keys the layers of a dense model by it (one stacked tensor per weight for 1, per layer above).
    """
    freq = getattr(args, "moe_layer_freq", 1)
    flags = architecture_flags(args, seed) + ["--moe-layer-freq", str(freq if isinstance(freq, int) else 1)]
    return build_run_config(parse_args(flags), int(args.padded_vocab_size), world_size=1)


def gpt_task() -> Task:
    """A Task that only builds the model (the upcycling reads and writes weights, it trains nothing)."""
    return Task("gpt", lambda config, pre, post: build_gpt_model(config, pre, post), None, None)


def load_dense(root: str, iteration: Optional[int], seed: Optional[int]) -> DenseSource:
    """Read the dense checkpoint under ``root`` (process groups of one process must be initialised).

    ``seed`` None takes the dense run's own ``--seed``.
    """
    ckpt_dir = checkpointing.locate(root, iteration)
    args, common = checkpointing.read_args(ckpt_dir)
    check_dense_gpt(args, ckpt_dir)
    ours = os.path.isfile(os.path.join(ckpt_dir, checkpointing.META_FILE))
    if ours and "bert_binary_head" in _saved_meta(ckpt_dir):
        raise CheckpointError(f"{ckpt_dir} is a BERT checkpoint: upcycling reads GPT checkpoints")
    seed = getattr(args, "seed", 1234) if seed is None else seed
    run = dense_run(args, seed)
    model = build_model_chunks(run, gpt_task())
    optimizer = build_optimizer(run.optimizer, model)
    if ours:
        state, _ = checkpointing.load_checkpoint(
            os.path.dirname(ckpt_dir), model, optimizer, load_rng=False, run_meta=run_meta(run),
            meta_keys=list(architecture_meta(run.model)) + ["precision"], iteration=_iteration(ckpt_dir),
        )
        schedule = common.get("opt_param_scheduler")
        return DenseSource(run, model, optimizer, state, schedule, args, ckpt_dir, "ours")
    _load_megatron_lm_weights(ckpt_dir, model)
    optimizer.reload_model_params()  # bf16/fp16: the master copies take the loaded weights
    state = TrainState(
        iteration=int(common.get("iteration", getattr(args, "iteration", 0)) or 0),
        consumed_samples=int(getattr(args, "consumed_train_samples", 0) or 0),
        floating_point_operations=float(common.get("num_floating_point_operations_so_far", 0.0) or 0.0),
    )
    state.consumed_tokens = state.consumed_samples * int(args.seq_length)
    schedule = samples_to_iterations(common.get("opt_param_scheduler"), getattr(args, "global_batch_size", None))
    return DenseSource(run, model, optimizer, state, schedule, args, ckpt_dir, "Megatron-LM")


def samples_to_iterations(schedule: Optional[Dict[str, Any]], global_batch_size: Optional[int]):
    """Megatron-LM's LR scheduler state counts samples (it steps by the global batch); ours counts
    iterations. None when there is no schedule or the batch size is unknown."""
    if not schedule or not global_batch_size:
        return None
    converted = copy.deepcopy(schedule)
    for key in ("num_steps", "lr_warmup_steps", "lr_decay_steps", "wd_incr_steps"):
        if converted.get(key) is not None:
            converted[key] = int(converted[key]) // int(global_batch_size)
    return converted


def _load_megatron_lm_weights(ckpt_dir: str, model: List) -> None:
    """As Megatron-LM's loader: the content metadata says how tensors are keyed; weights under "model"."""
    module = unwrap_model(model[0])
    try:
        metadata = dist_checkpointing.load_content_metadata(ckpt_dir)
        template = {"model": module.sharded_state_dict(metadata=metadata)}
        loaded = dist_checkpointing.load(template, ckpt_dir, strict=StrictHandling.ASSUME_OK_UNEXPECTED)
    except BaseException as exc:  # noqa: BLE001 - CheckpointException is a BaseException
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise CheckpointError(checkpoint_files.load_failure_reason(ckpt_dir, exc)) from exc
    result = module.load_state_dict(loaded["model"], strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("_extra_state")]
    if missing:
        raise CheckpointError(f"{ckpt_dir} does not hold this architecture's weights: missing {missing[:3]}")


def _saved_meta(ckpt_dir: str) -> dict:
    try:
        return json.load(open(os.path.join(ckpt_dir, checkpointing.META_FILE)))
    except (OSError, ValueError):
        return {}


def _iteration(ckpt_dir: str) -> int:
    return checkpointing.iteration_of(ckpt_dir)
