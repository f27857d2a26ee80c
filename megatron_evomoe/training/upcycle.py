"""Upcycle a dense GPT checkpoint into an MoE checkpoint (``tools/upcycle_checkpoint.py``).

EvoMoE's expert-diversify already is upcycling: N experts spawned from one trained FFN. Here the FFN
is that of a dense model trained elsewhere (ours, or Megatron-LM's ``torch_dist``), so stage 1 need
not be trained again. Every MoE layer (``--moe-layer-freq``, Megatron-LM's meaning) gets
``--num-experts`` experts spawned from the dense layer's FFN:

* ``--method evomoe`` (default): masked copies, exactly as the diversify step makes them (same masks,
  seeded by the seed, the layer and the global expert index; ``moe/diversify.py``). Under the DTS
  router (default) it *is* the diversify step (``PhaseController.diversify``) run on a shared expert
  holding the dense FFN, which also draws the DTS gate; so the experts equal those of a run that
  diversified at T_S.
* ``--method copy``: unchanged copies, as Megatron-LM's ``--moe-use-upcycling`` makes them (the
  diversify with mask ratio 0).

What carries over: every other weight, and its fp32 master copy and Adam moments. The experts'
moments follow the diversify rule (``--evomoe-optimizer-state``: the dense FFN's moments under the
expert's mask, or zeros); a new router starts with zero moments. Megatron keeps one Adam step for all
parameters: it stays. The training position and LR schedule are kept, or restarted with
``--reset-iteration``.

The checkpoint is written at the dense checkpoint's iteration N (0 with ``--reset-iteration``) and
records that its experts were spawned before step N (the phase controller's state), so the run
resumed from it does not spawn them again. Under DTS that run passes ``--evomoe-shared-expert-iters
N``: its gate then starts at step N in gate-sparsify at tau max. Everything is read and written in
one process: the checkpoint format is keyed in model space, so the input may come from any TP/PP/EP
layout and the output loads under any other. The whole dense and MoE models and their optimizer
states are held in host memory at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
from dataclasses import dataclass
from typing import List, Optional

import torch

from megatron_evomoe import initialize
from megatron_evomoe.arguments import OneLineErrorParser, parse_args
from megatron_evomoe.config_flags import flag_specs, values_from_args
from megatron_evomoe.errors import InputError
from megatron_evomoe.help_format import HelpFormatter
from megatron_evomoe.moe.diversify import spawn_from
from megatron_evomoe.moe.evolution import PhaseController, moe_layers
from megatron_evomoe.moe.router_config import RunShape
from megatron_evomoe.moe.routers import available_routers
from megatron_evomoe.moe.routers.dts import DTSRouter
from megatron_evomoe.moe_layer_freq import LayerFreq, moe_layer_pattern, parse_moe_layer_freq
from megatron_evomoe.router_arguments import add_router_args
from megatron_evomoe.run_config import RunConfig, build_run_config
from megatron_evomoe.training import checkpointing
from megatron_evomoe.training.checkpointing import CheckpointError, TrainState, unwrap_model
from megatron_evomoe.training.entry import quiet_megatron
from megatron_evomoe.training.loop import CONTROLLER_STATE, build_model_chunks, run_meta
from megatron_evomoe.training.megatron_lm_args import megatron_lm_common
from megatron_evomoe.training.optimizer import build_optimizer, inner_optimizers
from megatron_evomoe.training.optimizer_checkpoint import adam_step, allocate_state, set_adam_step
from megatron_evomoe.training.optimizer_state import apply_parameter_updates, optimizer_copy
from megatron_evomoe.training.upcycle_source import (
    DenseSource, architecture_flags, check_dense_gpt, gpt_task, load_dense,
)

METHODS = ("evomoe", "copy")
DEFAULT_ROUTER = "dts"
"""EvoMoE's Dense-To-Sparse gate: the upcycled run starts in gate-sparsify at tau max."""

SPAWN_FIELDS = ("mask_ratio", "mask_granularity", "mask_rescale", "optimizer_state")
"""The DTS router's options that say how experts are spawned (read for any router)."""


def build_parser() -> argparse.ArgumentParser:
    """The tool's flags: input, output, where the MoE layers go, how experts are spawned, the router."""
    parser = OneLineErrorParser(
        description="Upcycle a dense GPT checkpoint into an MoE checkpoint (EvoMoE's expert-diversify "
        "or plain copies)", allow_abbrev=False, formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--load", required=True,
        help="the dense checkpoint directory (ours, or Megatron-LM torch_dist), or one of its iter_XXXXXXX directories",
    )
    parser.add_argument("--ckpt-step", type=int, default=None, help="its iteration to read (default: the latest)")
    parser.add_argument("--save", required=True, help="directory of the MoE checkpoint to write")
    parser.add_argument("--num-experts", type=int, required=True, help="experts per MoE layer")
    parser.add_argument(
        "--moe-layer-freq", default="2",
        help="as in Megatron-LM: k (layer i is MoE iff i %% k == 0; the paper's is 2) or a list of 0/1 per "
        "layer such as \"([0]+[1]*3)*2\"",
    )
    parser.add_argument(
        "--method", choices=METHODS, default="evomoe",
        help="evomoe: experts are masked copies of the FFN, as EvoMoE's diversify spawns them (its "
        "--evomoe-mask-* flags); copy: unchanged copies (Megatron-LM's --moe-use-upcycling)",
    )
    parser.add_argument(
        "--reset-iteration", action="store_true",
        help="start the MoE run at iteration 0 with a fresh LR schedule (default: where the dense run stopped)",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of the masks and new routers (default: the dense run's)")
    add_router_args(parser, parser.add_argument_group("router of the MoE model"))
    parser.add_argument(
        "--router", dest="moe_router_type", choices=available_routers(), default=DEFAULT_ROUTER,
        help="the same as --moe-router-type",
    )
    parser.set_defaults(moe_router_type=DEFAULT_ROUTER)
    return parser


def router_dests() -> List[str]:
    """argparse destinations of the router flags (they go to the MoE run's configuration)."""
    scratch = argparse.ArgumentParser()
    add_router_args(scratch, scratch)
    return [action.dest for action in scratch._actions if action.dest != "help"]


@dataclass
class UpcycleResult:
    """What :func:`upcycle` wrote."""

    ckpt_dir: str
    iteration: int
    spawned: str
    """One line: how the experts were spawned."""
    resume_flags: List[str]
    """The MoE flags of a run that resumes from it."""


def check_request(args: argparse.Namespace) -> LayerFreq:
    """The flags and the input that can be checked before any model is built; returns the layer freq."""
    freq = parse_moe_layer_freq(args.moe_layer_freq)
    if args.num_experts < 1:
        raise InputError(f"--num-experts must be >= 1, got {args.num_experts}")
    ckpt_dir = checkpointing.locate(args.load, args.ckpt_step)
    if os.path.realpath(args.save) == os.path.realpath(os.path.dirname(ckpt_dir)):
        raise InputError(f"--save {args.save} is the dense checkpoint's directory: write the MoE checkpoint elsewhere")
    dense_args, _ = checkpointing.read_args(ckpt_dir)
    check_dense_gpt(dense_args, ckpt_dir)
    moe_layer_pattern(freq, dense_args.num_layers)
    return freq


def moe_run_config(dense: DenseSource, args: argparse.Namespace, freq: LayerFreq) -> RunConfig:
    """The MoE model's configuration: the dense architecture plus experts and router, one process."""
    flags = ["--num-experts", str(args.num_experts), "--moe-layer-freq", str(freq if isinstance(freq, int) else 1)]
    parsed = parse_args(architecture_flags(dense.args, dense.run.model.seed) + flags)
    for dest in router_dests():
        setattr(parsed, dest, getattr(args, dest))
    run = build_run_config(parsed, dense.run.model.vocab_size, world_size=1)
    if isinstance(freq, list):  # Megatron-LM's list form (the pattern was checked against --num-layers)
        run.model.moe_layer_freq = freq
        run.flags = {**run.flags, "moe_layer_freq": freq}
    return run


def spawn_options(args: argparse.Namespace, run: RunConfig) -> DTSRouter.Config:
    """EvoMoE's spawn options (mask ratio, granularity, rescaling, Adam rule) for ``--method``."""
    options = run.model.moe_router
    if not isinstance(options, DTSRouter.Config):  # another router: EvoMoE's flags still say how to spawn
        values = values_from_args(flag_specs(DTSRouter.Config, SPAWN_FIELDS), args, DTSRouter.Config)
        shape = RunShape(train_iters=1, tokens_per_microbatch=1,
                         use_distributed_optimizer=run.optimizer.use_distributed_optimizer)
        options = DTSRouter.Config(**values).resolved(shape)  # the Adam rule's default follows the optimizer
    if args.method == "copy":
        options = options.replace(mask_ratio=0.0, mask_rescale=False)
    return options


@torch.no_grad()
def _take(moe_optimizer, param, dense_optimizer, source, mask=None, masked_copy=True) -> None:
    """``param`` takes ``source``'s value and optimizer state; with ``mask`` it was already written
    (a spawned expert) and the moments follow the diversify rule (masked copy, or zeros)."""
    if mask is None:
        param.copy_(source)
    target, origin = optimizer_copy(moe_optimizer, param), optimizer_copy(dense_optimizer, source)
    # The dense run's fp32 master weight where it is the value taken; a spawned expert's is itself.
    # (Both optimizers are of one kind; a distributed optimizer's shard is the whole flattened
    # parameter in this one-process world.)
    target.main.copy_(origin.main if mask is None else target.slice_of(param.float()))
    for key in ("exp_avg", "exp_avg_sq"):
        if key not in target.state:
            continue
        moments = origin.state.get(key)
        if moments is None or (mask is not None and not masked_copy):
            target.state[key].zero_()
        else:
            target.state[key].copy_(moments if mask is None else moments * target.slice_of(mask.to(moments.dtype)))


def transfer(dense: DenseSource, run: RunConfig, model: List, optimizer, options: DTSRouter.Config) -> str:
    """Fill the MoE ``model`` and its ``optimizer`` from the dense run; returns how experts were spawned."""
    dense_params = dict(unwrap_model(dense.model[0]).named_parameters())
    for inner in inner_optimizers(optimizer):
        allocate_state(inner)
    used = set()
    for name, param in unwrap_model(model[0]).named_parameters():
        source_name = name.replace(".mlp.shared_expert.", ".mlp.")  # EvoMoE's shared expert is the dense FFN
        if source_name in dense_params:
            _take(optimizer, param, dense.optimizer, dense_params[source_name])
            used.add(source_name)
    through_diversify = run.model.moe_router.needs_shared_expert()
    masked_copy = options.optimizer_state == "masked_copy"
    for layer in moe_layers(model):
        prefix = f"decoder.layers.{layer.layer_number - 1}.mlp."
        source = dense_params[prefix + "linear_fc1.weight"], dense_params[prefix + "linear_fc2.weight"]
        used.update((prefix + "linear_fc1.weight", prefix + "linear_fc2.weight"))
        if not through_diversify:
            for item in spawn_from(layer, source, options, run.model.seed, 0, 1):
                _take(optimizer, item.weight, dense.optimizer, item.source, item.mask, masked_copy)
    if through_diversify:  # the diversify step itself, from a shared expert holding the dense FFN
        controller = PhaseController(run.model)
        controller.options = options
        message, updates = controller.diversify(model)
        apply_parameter_updates(optimizer, updates)
    else:
        message = (
            f"spawned {run.model.num_moe_experts} experts per MoE layer from the dense FFN (mask ratio "
            f"{options.mask_ratio}, {options.mask_granularity} masks, Adam moments: {options.optimizer_state})"
        )
    left = sorted(set(dense_params) - used)
    if left:
        raise CheckpointError(f"{dense.ckpt_dir}: dense weights with no place in the MoE model: {left[:3]}")
    set_adam_step(inner_optimizers(optimizer), adam_step(inner_optimizers(dense.optimizer)))
    return message


class _SavedSchedule:
    """The dense run's LR scheduler state, written unchanged."""

    def __init__(self, state: dict):
        self.state = state

    def state_dict(self) -> dict:
        return self.state


def upcycle(args: argparse.Namespace) -> UpcycleResult:
    """Read ``--load``, write the MoE checkpoint to ``--save`` (process groups of one process must be
    initialised: :func:`main` does it)."""
    freq = check_request(args)
    dense = load_dense(args.load, args.ckpt_step, args.seed)
    run = moe_run_config(dense, args, freq)
    model = build_model_chunks(run, gpt_task())
    optimizer = build_optimizer(run.optimizer, model)
    spawned = transfer(dense, run, model, optimizer, spawn_options(args, run))
    if args.method == "copy":
        spawned = "--method copy (unchanged copies of the dense FFN): " + spawned
    state = TrainState() if args.reset_iteration else dataclasses.replace(dense.train_state)
    controller = PhaseController(run.model)
    controller.experts_spawned_at = state.iteration
    meta = run_meta(run)
    meta.pop("routing_schedule", None)  # the resumed run's flags decide it
    meta["upcycled"] = {
        "from": os.path.abspath(dense.ckpt_dir), "format": dense.kind, "method": args.method,
        "experts_spawned_at": state.iteration, "reset_iteration": bool(args.reset_iteration),
    }
    keep_schedule = not args.reset_iteration and dense.scheduler_state is not None
    ckpt_dir = checkpointing.save_checkpoint(
        args.save, state, model, optimizer, _SavedSchedule(dense.scheduler_state) if keep_schedule else None,
        extra={CONTROLLER_STATE: controller.state_dict()}, run_meta=meta, common=megatron_lm_common(run, state),
    )
    freq_text = args.moe_layer_freq if isinstance(freq, list) else str(freq)
    resume = ["--num-experts", str(args.num_experts), "--moe-layer-freq", freq_text,
              "--moe-router-type", run.model.moe_router_type, *run.model.moe_router.spawned_experts_flags(state.iteration)]
    return UpcycleResult(ckpt_dir, state.iteration, spawned, resume)


def main(argv: Optional[List[str]] = None) -> int:
    """The command line; user errors are one line on stderr and exit code 2."""
    quiet_megatron()
    args = build_parser().parse_args(argv)
    try:
        check_request(args)  # before starting torch.distributed: bad input fails fast
        initialize.initialize(initialize.ParallelLayout(), args.seed if args.seed is not None else 1234)
        try:
            result = upcycle(args)
        finally:
            initialize.shutdown()
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{result.spawned}")
    print(f"wrote {result.ckpt_dir} (iteration {result.iteration})")
    print("resume with: " + shlex.join(["--load", args.save, *result.resume_flags]))
    return 0
