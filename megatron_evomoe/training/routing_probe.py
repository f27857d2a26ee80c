"""``--log-routing-probe N``: where N fixed validation tokens are routed, at every log interval.

The logged statistics (tokens per expert, experts per token) are aggregates; the paper's Fig. 4b
(the expert chosen for one token over training) and Table VII (the top tokens of each expert) need
per-token routing. The probe takes the first N tokens of the validation split (the first
ceil(N / seq_length) samples, the same every time), runs them through the model in eval mode in one
forward-only pass of megatron's schedule (so pipeline stages, TP/SP and EP work as in evaluation),
and reads each MoE layer's routing decision through a forward hook on its router. The log record
gets::

    "routing_probe": {"token_ids": [N], "experts": [[N] per MoE layer], "num_experts": [[N] per MoE layer]}

``experts`` is the expert with the largest gate weight among those the token visits (-1: none,
which is every token while EvoMoE trains its shared expert: the router does not run then);
``num_experts`` how many it visits (DTS: 0..E). It is the router's decision before capacity dropping.
:meth:`RoutingProbe.route` also returns each token's gate entropy and top-1/top-2 margin (from the
router's full gate, ``RoutingDecision.gate``), which ``--log-moe-diagnostics`` averages.

Hot path: with N = 0 (default) nothing here is built or called. With N > 0 the probe runs only at
log iterations, in eval mode (no dropout, no gumbel noise, no routing statistics recorded), under
a forked RNG, so the training trajectory is the same with and without it (tested bitwise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.pipeline_parallel import get_forward_backward_func
from torch.utils.data import default_collate

from megatron_evomoe import compat
from megatron_evomoe.moe.evolution import moe_layers
from megatron_evomoe.training.routing_metrics import moe_layer_index


def build_routing_probe(run, valid_dataset) -> Optional["RoutingProbe"]:
    """The probe of ``--log-routing-probe`` (None when off, without MoE layers or validation data)."""
    num_tokens = run.training.log_routing_probe
    if num_tokens <= 0 or not run.model.num_moe_experts or valid_dataset is None:
        return None
    return RoutingProbe(run, valid_dataset, num_tokens)


def gate_entropy_and_margin(gate: torch.Tensor) -> torch.Tensor:
    """``[2, T]``: per token the entropy -sum_i p_i ln p_i (nats) of the gate normalised to sum 1,
    and the margin p_(1) - p_(2) between its two largest weights (p_(2) = 0 with one expert)."""
    p = gate.float()
    p = p / p.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(p.dtype).tiny)
    entropy = -torch.special.xlogy(p, p).sum(dim=-1)
    top = p.topk(min(2, p.shape[-1]), dim=-1).values
    second = top[:, 1] if top.shape[-1] > 1 else torch.zeros_like(top[:, 0])
    return torch.stack([entropy, top[:, 0] - second])


@dataclass
class ProbeResult:
    """One probe pass, in reading order, per MoE layer (``[layer][token]``).

    ``gate_entropy`` / ``gate_margin`` are NaN for tokens whose router has no gate distribution (or
    did not run).
    """

    token_ids: List[int]
    experts: List[List[int]]
    num_experts: List[List[int]]
    gate_entropy: List[List[float]]
    gate_margin: List[List[float]]

    def record_entry(self) -> Dict[str, list]:
        """The ``routing_probe`` entry of the log record (per-token decisions only)."""
        return {"token_ids": self.token_ids, "experts": self.experts, "num_experts": self.num_experts}


class RoutingProbe:
    """Routes a fixed validation batch and reports the per-token decisions of every MoE layer."""

    def __init__(self, run, valid_dataset, num_tokens: int):
        seq = run.training.seq_length
        num_samples = math.ceil(num_tokens / seq)
        if len(valid_dataset) < num_samples:
            raise ValueError(
                f"--log-routing-probe {num_tokens} needs {num_samples} validation samples of {seq} tokens; "
                f"the validation split has {len(valid_dataset)}"
            )
        self.run = run
        self.num_tokens = num_tokens
        self.batch = default_collate([valid_dataset[i] for i in range(num_samples)])
        self.token_ids: List[int] = self.batch["tokens"].reshape(-1)[:num_tokens].tolist()
        self.layer_index = moe_layer_index(run.model)

    def route(self, session, task) -> ProbeResult:
        """Run the probe batch through ``session.model`` (all ranks) and return every token's routing."""
        captured: Dict[int, torch.Tensor] = {}
        hooks = [
            layer.router.register_forward_hook(self._hook(captured, layer.layer_number))
            for layer in moe_layers(session.model)
        ]
        for chunk in session.model:
            chunk.eval()
        devices = [torch.cuda.current_device()] if compat.device_is_cuda() else []
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=devices):
                self._forward(session, task)
        finally:
            for hook in hooks:
                hook.remove()
            for chunk in session.model:
                chunk.train()
        return self._assemble(self._gather(captured))

    # ------------------------------------------------------------------------------- internals
    def _hook(self, captured: Dict[int, torch.Tensor], layer_number: int):
        def record(module, inputs, decision):
            routed = decision.routing_map
            none = torch.full((routed.shape[0],), -1, dtype=torch.long, device=routed.device)
            weights = decision.probs.float().masked_fill(~routed, float("-inf"))
            top = torch.where(routed.any(dim=1), weights.argmax(dim=1), none)
            if decision.gate is None:
                gate_stats = torch.full((2, routed.shape[0]), float("nan"), device=routed.device)
            else:
                gate_stats = gate_entropy_and_margin(decision.gate)
            rows = [top.double(), routed.sum(dim=1).double(), *gate_stats.double()]
            captured[layer_number] = torch.stack(rows).cpu()  # [4, tokens of this rank]

        return record

    def _forward(self, session, task) -> None:
        batch = self.batch
        if compat.device_is_cuda():
            batch = {k: v.cuda(non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

        def forward_step(data_iterator, model):
            return task.forward_step(next(data_iterator), model)

        seq = self.run.training.seq_length
        get_forward_backward_func()(
            forward_step_func=forward_step,
            data_iterator=iter([batch]),
            model=session.model,
            num_microbatches=1,
            seq_length=seq,
            micro_batch_size=batch["tokens"].shape[0],
            decoder_seq_length=seq,
            forward_only=True,
        )

    def _gather(self, captured: Dict[int, torch.Tensor]) -> Dict[int, List[tuple]]:
        """``{moe layer index: [(tp rank, [4, s_local * b]) ...]}`` from data-parallel rank 0 of every
        stage (other data-parallel ranks routed the same tokens)."""
        mine = {}
        if parallel_state.get_data_parallel_rank() == 0:
            tp_rank = parallel_state.get_tensor_model_parallel_rank()
            mine = {self.layer_index[n]: [(tp_rank, t.tolist())] for n, t in captured.items()}
        if not (dist.is_initialized() and dist.get_world_size() > 1):
            return mine
        everything = [None] * dist.get_world_size()
        dist.all_gather_object(everything, mine)
        merged: Dict[int, List[tuple]] = {}
        for part in everything:
            for layer, pieces in part.items():
                merged.setdefault(layer, []).extend(pieces)
        return merged

    def _assemble(self, merged: Dict[int, List[tuple]]) -> ProbeResult:
        """Undo megatron's ``[s, b]`` token order (and the sequence split over TP ranks) to reading
        order, keep the first N tokens."""
        b = self.batch["tokens"].shape[0]
        n = self.num_tokens
        experts, counts, entropy, margin = [], [], [], []
        for layer in range(len(self.layer_index)):
            pieces = sorted(merged.get(layer, []), key=lambda piece: piece[0])
            if not pieces:  # no router ran (EvoMoE's shared-expert phase)
                experts.append([-1] * n)
                counts.append([0] * n)
                entropy.append([float("nan")] * n)
                margin.append([float("nan")] * n)
                continue
            # MoE with TP needs sequence parallelism: TP rank r routed the r-th slice of the sequence.
            table = torch.cat([torch.tensor(data, dtype=torch.float64) for _, data in pieces], dim=1)  # [rows, s * b]
            rows = table.shape[0]
            table = table.view(rows, -1, b).transpose(1, 2).reshape(rows, -1)[:, :n]
            experts.append(table[0].long().tolist())
            counts.append(table[1].long().tolist())
            gate = table[2:4] if rows >= 4 else torch.full((2, table.shape[1]), float("nan"), dtype=torch.float64)
            entropy.append(gate[0].tolist())
            margin.append(gate[1].tolist())
        return ProbeResult(self.token_ids, experts, counts, entropy, margin)
