"""``--dry-run``: validate a full configuration and print model size and a per-GPU memory estimate.

Nothing trains and no multi-rank process group is needed, so an 8-GPU or multi-node configuration
is checked on a laptop: the world size comes from ``WORLD_SIZE`` (the example scripts set it to
NNODES x GPUS_PER_NODE in dry-run mode), flags are validated against it by ``build_run_config``
(the entry script did that before calling here), and the model is *built* by the task's own
``build_model`` on PyTorch's meta device (no memory, no initialisation cost) with TP = PP = EP = 1 in
a private world of one gloo process. Building validates the layer specs for this config and gives
exact parameter counts for every model family and router; ``param_inventory.py`` splits
them per pipeline stage / TP / EP, ``memory_estimate.py`` turns them into bytes (its
docstring has the formula).
"""

from __future__ import annotations

import dataclasses
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import List

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_evomoe import memory_estimate as mem
from megatron_evomoe.initialize import adapt_megatron
from megatron_evomoe.param_inventory import ParamInventory, take_inventory
from megatron_evomoe.models.layer_specs import moe_layer_pattern
from megatron_evomoe.moe.evolution import describe_schedule

GIB = 1024.0**3


@contextmanager
def _world_of_one():
    """A gloo world of one process with megatron's groups at size 1 (reused if one exists)."""
    if dist.is_initialized():
        yield
        return
    adapt_megatron()
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)  # no TCP port needed
    parallel_state.initialize_model_parallel()
    try:
        yield
    finally:
        parallel_state.destroy_model_parallel()
        dist.destroy_process_group()


def count_parameters(run, task) -> ParamInventory:
    """Build the whole model (TP = PP = EP = 1) on the meta device and classify its parameters."""
    config = dataclasses.replace(
        run.model,
        tensor_model_parallel_size=1, pipeline_model_parallel_size=1, expert_model_parallel_size=1,
        expert_tensor_parallel_size=1, sequence_parallel=False,
        use_cpu_initialization=True, perform_initialization=True,  # sets megatron's TP attributes
    )
    with _world_of_one(), torch.device("meta"):
        model = task.build_model(config, True, True)
    return take_inventory(
        model.named_parameters(), run.model.num_layers, run.layout.pipeline_model_parallel_size,
        run.model.num_moe_experts or 0,
    )


@dataclass
class DryRunReport:
    """What ``--dry-run`` found (bytes per rank of the most loaded pipeline stage)."""

    inventory: ParamInventory
    experts_per_token: float
    peak_experts_per_token: float
    stages: List[mem.RankMemory]

    @property
    def worst(self) -> mem.RankMemory:
        return max(self.stages, key=lambda m: m.total_peak)


def estimate(run, inventory: ParamInventory, fine_tuning: bool = False) -> DryRunReport:
    """Per-stage memory of one rank from the inventory and the run's layout and batch.

    ``fine_tuning``: routers run in their final state (EvoMoE's Top-1), so there is no dense-DTS peak.
    """
    model, layout = run.model, run.layout
    tp, pp, ep = layout.tensor_model_parallel_size, layout.pipeline_model_parallel_size, layout.expert_model_parallel_size
    etp = layout.expert_tensor_parallel_size or tp
    dp = run.data_parallel_size
    expert_dp = max(1, run.world_size // (ep * etp * pp))
    mixed = bool(model.bf16 or model.fp16)
    topk = float(model.moe_router_topk or 1)
    peak_k = topk
    if model.num_moe_experts and not fine_tuning:  # fine-tuning routes in the final state: no dense start
        peak_k = model.moe_router.peak_experts_per_token(model.num_moe_experts)
    stages = []
    for stage, counts in enumerate(inventory.stages):
        dense, expert = counts.per_rank(tp, ep, etp)
        weights, grads, optimizer = mem.rank_static_bytes(
            dense, expert, mixed, run.optimizer.use_distributed_optimizer, dp, expert_dp
        )
        steady = stage_activation_bytes(run, stage, topk)
        peak = stage_activation_bytes(run, stage, peak_k)
        stages.append(mem.RankMemory(dense, expert, weights, grads, optimizer, steady, peak))
    return DryRunReport(inventory, topk, peak_k, stages)


def stage_activation_bytes(run, stage: int, experts_per_token: float, fused_attention: bool = True) -> float:
    """Activation bytes one rank of pipeline stage ``stage`` holds (``fused_attention=False``: the
    attention scores are materialised, as in SDPA's math kernel on the CPU)."""
    model, training, layout = run.model, run.training, run.layout
    tp, pp = layout.tensor_model_parallel_size, layout.pipeline_model_parallel_size
    shape = mem.ActivationShape(
        training.seq_length, training.micro_batch_size, model.hidden_size, model.ffn_hidden_size,
        model.num_attention_heads, tp, 2 if (model.bf16 or model.fp16) else 4, fused_attention=fused_attention,
    )
    per_stage = model.num_layers // pp
    return mem.stage_activation_bytes(
        shape=shape, moe_pattern=moe_layer_pattern(model)[stage * per_stage : (stage + 1) * per_stage],
        num_experts=model.num_moe_experts or 0, moe_ffn_hidden_size=model.moe_ffn_hidden_size or 0,
        experts_per_token=experts_per_token, in_flight=mem.in_flight_microbatches(stage, pp, run.num_microbatches),
        first_stage=stage == 0, last_stage=stage == pp - 1, vocab_size=model.vocab_size,
        recompute=model.recompute_granularity,
    )


def _b(count: float) -> str:
    return f"{count / 1e9:.3f}B" if count >= 1e8 else f"{count / 1e6:.2f}M"


def format_report(run, report: DryRunReport, name: str) -> str:
    """The console report (parameters, batch arithmetic, memory per GPU with the formula's terms)."""
    model, training, layout = run.model, run.training, run.layout
    inv = report.inventory
    tp, pp, ep = layout.tensor_model_parallel_size, layout.pipeline_model_parallel_size, layout.expert_model_parallel_size
    etp = layout.expert_tensor_parallel_size or tp
    dp = run.data_parallel_size
    moe = model.num_moe_experts
    pattern = moe_layer_pattern(model)
    tokens = training.global_batch_size * training.seq_length
    lines = [
        f"dry run of {name}: configuration valid for world size {run.world_size} "
        f"(TP {tp} x PP {pp} x DP {dp}; EP {ep}, expert TP {etp}); nothing was trained",
        f"model: {model.num_layers} layers ({sum(pattern)} MoE"
        + (f", {moe} experts each, router {model.moe_router_type}, top-{model.moe_router_topk}" if moe else "")
        + f"), hidden {model.hidden_size}, {model.num_attention_heads} heads, FFN {model.ffn_hidden_size}"
        + (f" (experts {model.moe_ffn_hidden_size})" if moe else "")
        + f", seq {training.seq_length}, vocab {model.vocab_size} (padded)",
        f"parameters: total {_b(inv.total)}"
        + (f" (routed experts {_b(inv.expert_total)} = {inv.num_moe_layers} layers x {moe} x "
           f"{_b(inv.expert_total / max(1, inv.num_moe_layers * moe))}"
           + (f"; EvoMoE shared experts {_b(inv.shared_expert_total)}, unused after T_S" if inv.shared_expert_total else "")
           + ")" if moe else "")
        + f"; active per token {_b(inv.active_per_token(report.experts_per_token))}"
        + (f" ({report.experts_per_token:g} expert/token)" if moe else "")
        + (f", up to {_b(inv.active_per_token(report.peak_experts_per_token))} while the DTS gate is dense"
           if report.peak_experts_per_token != report.experts_per_token else ""),
        f"batch: global {training.global_batch_size} = micro {training.micro_batch_size} x DP {dp} x "
        f"{run.num_microbatches} micro-batches; {tokens:,} tokens/iteration, "
        f"{tokens * training.train_iters:,} tokens in {training.train_iters} iterations",
    ]
    schedule_line = describe_schedule(model, training.train_iters) if moe else None
    if schedule_line:
        lines.append(schedule_line)
    mixed = bool(model.bf16 or model.fp16)
    per = mem.static_bytes_per_param(mixed)
    shard = " / DP (distributed optimizer)" if run.optimizer.use_distributed_optimizer else ""
    lines.append(
        f"per-GPU memory estimate ({'bf16/fp16' if mixed else 'fp32'}, Adam; bytes/param: weights {per.weights}, "
        f"grads {per.gradients}, optimizer {per.optimizer}{shard}; activations per Korthikanti et al. with fused "
        f"attention, see megatron_evomoe/memory_estimate.py):"
    )
    for stage, m in enumerate(report.stages):
        label = f"stage {stage}" if pp > 1 else "each GPU"
        peak = (f", {m.activations_peak / GIB:.2f} GiB at the DTS dense start ({report.peak_experts_per_token:g} "
                f"experts/token) -> {m.total_peak / GIB:.2f} GiB") if m.activations_peak != m.activations else ""
        lines.append(
            f"  {label}: {_b(m.dense_params + m.expert_params)} params (dense {_b(m.dense_params)}, experts "
            f"{_b(m.expert_params)}) | weights {m.weights / GIB:.2f} + grads {m.gradients / GIB:.2f} + optimizer "
            f"{m.optimizer / GIB:.2f} + activations {m.activations / GIB:.2f} GiB (micro-batch {training.micro_batch_size}, "
            f"{mem.in_flight_microbatches(stage, pp, run.num_microbatches)} in flight) = {m.total / GIB:.2f} GiB{peak}"
        )
    lines.append("  not included: CUDA context, fragmentation, communication buffers (keep 10-20% headroom)")
    return "\n".join(lines)


def print_dry_run(run, task, fine_tuning: bool = False) -> DryRunReport:
    """The ``dry_run`` hook of ``training.entry.main``: count, estimate, print (rank 0 only).

    The data files must exist (the tokenizer's were read to size the vocabulary already), so a dry
    run that passes is not followed by a training run that stops at a missing ``.bin``."""
    if run.data is not None:
        run.data.check_paths_exist()
    report = estimate(run, count_parameters(run, task), fine_tuning)
    if int(os.environ.get("RANK", "0")) == 0:
        print(format_report(run, report, task.name), flush=True)
    return report
