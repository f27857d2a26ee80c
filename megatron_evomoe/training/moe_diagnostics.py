"""``--log-moe-diagnostics``: numbers per MoE layer that let a run explain itself.

At every log interval the record gets, per MoE layer (TensorBoard: ``name/layer_k``):

* ``expert_similarity``: the mean over expert pairs of the cosine similarity of their weights (each
  expert's fc1 and fc2 flattened into one vector). Right after EvoMoE's diversify it is about
  (1 - r) at mask ratio r (exactly 1 at r = 0), and it falls as the spawned experts diverge;
  independently initialised experts (Switch, ...) start near 0. Not logged while EvoMoE trains its
  shared expert, whose experts are not in use yet. Experts spread over expert-parallel ranks are
  gathered in chunks, experts sharded over expert-tensor-parallel ranks sum their partial dot
  products, so the value does not depend on the layout.
* ``gate_entropy`` and ``gate_margin`` (need ``--log-routing-probe N``): over the probe's fixed
  tokens, routed in eval mode in the current routing state, the mean entropy -sum_i p_i ln p_i of
  the router's full gate distribution (nats; ln E is uniform, 0 is one-hot) and the mean gap between
  its largest and second largest weight. For routers without a gate distribution (BASE, Hash,
  StableMoE) and in EvoMoE's shared-expert phase they are absent.
* ``routing_fluctuation`` (needs the probe): the fraction of the probe tokens whose top-1 expert
  differs from the previous log's (StableMoE's routing fluctuation, measured between consecutive
  log intervals). Tokens no router routed at either log are left out; absent at the first log after
  a start or a resume.

At each routing phase change (EvoMoE's T_S and T_D; StableMoE's freeze) the next log record gets
``loss_jump[name]`` (``T_S``: leaving the shared-expert phase, ``T_D``: entering Top-1, otherwise the
new phase's name) with the iteration, the phases, and two measurements:

* ``eval_loss_before`` / ``eval_loss_after`` / ``eval_loss_jump``: the validation loss (the
  ``--eval-iters`` batches of every evaluation) with the same weights just before and just after
  the transition is applied, in eval mode. Nothing but the transition differs between the two,
  which makes it the least noisy measure of what the transition itself does to the model's output.
* ``train_loss_before`` / ``train_loss_after`` / ``train_loss_jump``: the training loss of the last
  step before the transition and of the first step after it (what a reader of the loss curve sees:
  two different batches, so batch-to-batch noise is part of it).

Cost: similarity is one pass over the expert weights per log interval (plus, under expert
parallelism, gathering them chunk by chunk); the gate statistics ride on the probe's forward pass;
the loss jumps cost two evaluations per phase change. The training trajectory is unchanged
(evaluation runs under a forked RNG, nothing is written to the model).
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_evomoe import compat
from megatron_evomoe.moe.diversify import expert_weights
from megatron_evomoe.moe.evolution import PhaseController, moe_layers
from megatron_evomoe.moe.schedule import EXPERT_DIVERSIFY, TOP1
from megatron_evomoe.training.collectives import sum_over_world
from megatron_evomoe.training.routing_metrics import moe_layer_index

GATHER_ELEMENTS = 1 << 24
"""Largest gathered block (experts x weight elements) when expert weights are gathered over ranks."""


# ------------------------------------------------------------------------------- pure functions
def mean_pairwise_cosine(gram: torch.Tensor) -> float:
    """Mean over the pairs i < j of G_ij / sqrt(G_ii G_jj) for a Gram matrix ``[E, E]`` (NaN for E < 2)."""
    num = gram.shape[0]
    if num < 2:
        return float("nan")
    gram = gram.double()
    norms = gram.diagonal().clamp_min(0).sqrt()
    cosine = gram / (norms[:, None] * norms[None, :]).clamp_min(torch.finfo(torch.float64).tiny)
    upper = torch.triu_indices(num, num, offset=1)
    return cosine[upper[0], upper[1]].mean().item()


def routing_fluctuation(previous: Sequence[int], current: Sequence[int]) -> Optional[float]:
    """Fraction of tokens whose top-1 expert changed; tokens unrouted (-1) in either are left out."""
    pairs = [(a, b) for a, b in zip(previous, current) if a >= 0 and b >= 0]
    if not pairs:
        return None
    return sum(a != b for a, b in pairs) / len(pairs)


def finite_mean(values: Sequence[float]) -> Optional[float]:
    """Mean of the finite values (None when there are none)."""
    kept = [v for v in values if v is not None and math.isfinite(v)]
    return sum(kept) / len(kept) if kept else None


def transition_name(old_phase: str, new_phase: str) -> str:
    """``T_S`` (leaving EvoMoE's shared-expert phase), ``T_D`` (entering Top-1), else the new phase."""
    if old_phase == EXPERT_DIVERSIFY:
        return "T_S"
    if new_phase == TOP1:
        return "T_D"
    return new_phase


# ----------------------------------------------------------------------------- expert similarity
@torch.no_grad()
def expert_gram(layer, max_elements: int = GATHER_ELEMENTS) -> torch.Tensor:
    """``[E, E]`` float64 Gram matrix of all experts of ``layer`` (every rank of its EP x expert-TP
    groups gets the whole matrix); expert order is the global expert index."""
    ep, expert_tp = layer.pg_collection.ep, layer.pg_collection.expt_tp
    weights = [expert_weights(layer.experts, i) for i in range(layer.num_local_experts)]
    num_experts = layer.num_local_experts * ep.size()
    device = weights[0][0].device
    gram = torch.zeros(num_experts, num_experts, dtype=torch.float64, device=device)
    chunk = max(1, max_elements // num_experts)
    for k in range(2):  # fc1, then fc2
        flat = [pair[k].detach().reshape(-1) for pair in weights]
        for start in range(0, flat[0].numel(), chunk):
            block = torch.stack([w[start:start + chunk].float() for w in flat])  # [local experts, c]
            if ep.size() > 1:
                parts = [torch.empty_like(block) for _ in range(ep.size())]
                dist.all_gather(parts, block, group=ep)
                block = torch.cat(parts)  # [E, c], EP rank r holds experts r*L ... (r+1)*L - 1
            gram += (block @ block.t()).double()
    if expert_tp.size() > 1:
        dist.all_reduce(gram, group=expert_tp)  # each rank held a slice of every expert
    return gram


def expert_similarity(model_chunks, config) -> List[float]:
    """Mean pairwise cosine similarity of the experts of every MoE layer, on every rank."""
    index = moe_layer_index(config)
    table = torch.zeros(len(index), dtype=torch.float64)
    writes = parallel_state.get_data_parallel_rank() == 0 and parallel_state.get_tensor_model_parallel_rank() == 0
    for layer in moe_layers(model_chunks):
        value = mean_pairwise_cosine(expert_gram(layer).cpu())
        if writes:  # one rank per pipeline stage: the others hold the same value
            table[index[layer.layer_number]] = value
    return sum_over_world(table).tolist()


# ------------------------------------------------------------------------------------ loss jumps
class TransitionLossJumps:
    """The loss on both sides of each routing phase change (see the module docstring).

    The loop calls :meth:`before_transition` and :meth:`after_transition` around the controller's
    ``before_step`` and :meth:`observe` with each step's training loss; :meth:`take` returns the
    transitions whose first step has run.
    """

    def __init__(self, controller: PhaseController, evaluate_loss: Optional[Callable[[], float]] = None):
        self.controller = controller
        self.evaluate_loss = evaluate_loss
        self.last_step: Optional[tuple] = None  # (iteration, training loss) of the latest step
        self.open: Optional[dict] = None  # the transition whose first step has not run yet
        self.finished: Dict[str, dict] = {}

    def phase_change(self, iteration: int) -> Optional[tuple]:
        """(old phase, new phase) when step ``iteration`` runs in another phase than the one before."""
        if iteration == 0:
            return None
        old = self.controller.routing_state(iteration - 1).phase
        new = self.controller.routing_state(iteration).phase
        return (old, new) if old != new else None

    def before_transition(self, iteration: int, model_chunks) -> None:
        change = self.phase_change(iteration)
        if change is None:
            return
        self.open = {"iteration": iteration, "from": change[0], "to": change[1]}
        if self.evaluate_loss is not None:
            # The previous step's state (after a resume nothing was applied yet).
            self.controller.apply_state(model_chunks, self.controller.routing_state(iteration - 1))
            self.open["eval_loss_before"] = self.evaluate_loss()
        if self.last_step is not None and self.last_step[0] == iteration - 1:
            self.open["train_loss_before"] = self.last_step[1]

    def after_transition(self, iteration: int) -> None:
        event = self.open
        if event is None or event["iteration"] != iteration or self.evaluate_loss is None:
            return
        event["eval_loss_after"] = self.evaluate_loss()
        event["eval_loss_jump"] = event["eval_loss_after"] - event["eval_loss_before"]

    def observe(self, iteration: int, loss: float) -> None:
        """The training loss of step ``iteration``."""
        event = self.open
        if event is not None and event["iteration"] == iteration:
            event["train_loss_after"] = loss
            if "train_loss_before" in event:
                event["train_loss_jump"] = loss - event["train_loss_before"]
            self.finished[transition_name(event["from"], event["to"])] = event
            self.open = None
        self.last_step = (iteration, loss)

    def take(self) -> Dict[str, dict]:
        finished, self.finished = self.finished, {}
        return finished


# ------------------------------------------------------------------------------------ the record
class MoEDiagnostics:
    """What ``--log-moe-diagnostics`` adds to the log records of one run."""

    def __init__(self, config, controller: PhaseController, evaluate_loss: Optional[Callable[[], float]] = None):
        self.config = config
        self.controller = controller
        self.jumps = TransitionLossJumps(controller, evaluate_loss)
        self.previous_experts: Optional[List[List[int]]] = None

    def log_entries(self, model_chunks, iteration: int, probed=None) -> Dict[str, object]:
        """Entries of the log record after step ``iteration - 1`` (``probed``: the probe's
        :class:`~megatron_evomoe.training.routing_probe.ProbeResult` of this log, if any)."""
        entries: Dict[str, object] = {}
        if self.controller.routing_state(iteration - 1).phase != EXPERT_DIVERSIFY:
            entries["expert_similarity"] = expert_similarity(model_chunks, self.config)
        if probed is not None:
            for key, per_token in (("gate_entropy", probed.gate_entropy), ("gate_margin", probed.gate_margin)):
                values = [finite_mean(layer) for layer in per_token]
                if any(v is not None for v in values):
                    entries[key] = values
            if self.previous_experts is not None:
                values = [routing_fluctuation(p, c) for p, c in zip(self.previous_experts, probed.experts)]
                if any(v is not None for v in values):
                    entries["routing_fluctuation"] = values
            self.previous_experts = probed.experts
        jumps = self.jumps.take()
        if jumps:
            entries["loss_jump"] = jumps
        return entries


def build_moe_diagnostics(run, controller: PhaseController, evaluate_loss: Optional[Callable[[], float]]):
    """The diagnostics of ``--log-moe-diagnostics`` (None when off or without MoE layers)."""
    if not run.training.log_moe_diagnostics or not run.model.num_moe_experts:
        return None
    return MoEDiagnostics(run.model, controller, evaluate_loss)


def without_rng_side_effects(function: Callable[[], float]) -> Callable[[], float]:
    """``function`` run under a forked RNG, so that calling it leaves the training trajectory alone."""

    def call() -> float:
        devices = [torch.cuda.current_device()] if compat.device_is_cuda() else []
        with torch.random.fork_rng(devices=devices):
            return function()

    return call
