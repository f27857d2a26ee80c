"""Per-rank bodies of the dispatcher tests (importable by spawned processes; no megatron import).

Every rank builds the inputs of *every* rank from seeds, so it can compute the exact result of the
whole MoE layer locally (:func:`reference`) and compare what the distributed dispatchers deliver.
Experts are small GELU FFNs whose weights depend only on the global expert index; with expert tensor
parallelism each rank holds a column/row shard of them, like megatron's expert MLPs.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.nn.functional as F

from megatron_evomoe.moe.capacity import apply_capacity, expert_capacity
from megatron_evomoe.moe.dispatch import dispatcher_class
from megatron_evomoe.moe.dispatch.options import DispatchOptions

HIDDEN, FFN = 8, 12


@dataclass(frozen=True)
class Case:
    """One layer call: shapes, dtype, routing style, capacity."""

    num_experts: int = 4
    num_tokens: int = 6
    dtype: torch.dtype = torch.float32
    routing: str = "random"  # random (0..E experts per token) | top1 | top2 | empty_expert | none
    capacity_factor: float | None = None
    seed: int = 0


# ------------------------------------------------------------------------------------- groups
def init_world() -> None:
    # One intra-op thread per rank: the processes already share the cores (the fixture's
    # OMP_NUM_THREADS comes after torch is imported, too late for torch's thread pool).
    torch.set_num_threads(1)
    if not dist.is_initialized():
        dist.init_process_group("gloo")


def groups(etp: int) -> SimpleNamespace:
    """ep / expt_tp / tp_ep groups laid out as megatron does (expert-TP fastest)."""
    world, rank = dist.get_world_size(), dist.get_rank()
    ep_lists = [list(range(t, world, etp)) for t in range(etp)]
    tp_lists = [list(range(g * etp, (g + 1) * etp)) for g in range(world // etp)]
    ep = tp = None
    for ranks in ep_lists:
        group = dist.new_group(ranks) if len(ep_lists) > 1 else dist.group.WORLD
        ep = group if rank in ranks else ep
    for ranks in tp_lists:
        group = dist.new_group(ranks)
        tp = group if rank in ranks else tp
    return SimpleNamespace(ep=ep, expt_tp=tp, tp_ep=dist.group.WORLD)


def make_dispatcher(name: str, pgs: SimpleNamespace, num_experts: int, ranks_per_node: int, **options):
    config = SimpleNamespace(
        num_moe_experts=num_experts,
        moe_dispatch=DispatchOptions(dispatcher_type=name, ranks_per_node=ranks_per_node, **options),
    )
    ep_rank, local = pgs.ep.rank(), num_experts // pgs.ep.size()
    return dispatcher_class(name)(local, list(range(ep_rank * local, (ep_rank + 1) * local)), config, pgs)


# ------------------------------------------------------------------------------------- inputs
def rank_inputs(case: Case, rank: int):
    """hidden [T, h], probs [T, E], routing_map [T, E] and the upstream gradient of ``rank``."""
    gen = torch.Generator().manual_seed(1000 * case.seed + rank)
    T, E = case.num_tokens, case.num_experts
    hidden = torch.randn(T, HIDDEN, generator=gen)
    logits = torch.randn(T, E, generator=gen)
    scores = torch.softmax(logits, -1)
    if case.routing == "top1":
        routing_map = torch.zeros(T, E, dtype=torch.bool).scatter_(1, logits.argmax(-1, keepdim=True), True)
    elif case.routing == "top2":
        routing_map = torch.zeros(T, E, dtype=torch.bool).scatter_(1, logits.topk(2, -1).indices, True)
    elif case.routing == "none":
        routing_map = torch.zeros(T, E, dtype=torch.bool)
    else:  # 0..E experts per token (DTS-like), and an expert nobody visits
        routing_map = torch.rand(T, E, generator=gen) < torch.rand(T, 1, generator=gen)
        routing_map[0] = False
        if T > 1:
            routing_map[1] = True
        if case.routing == "empty_expert":
            routing_map[:, E - 1] = False
    probs = scores * routing_map
    if case.capacity_factor is not None:
        capacity = expert_capacity(T, E, 1, case.capacity_factor)
        probs, routing_map = apply_capacity(probs, routing_map, capacity, "probs")
    grad = torch.randn(T, HIDDEN, generator=gen)
    return hidden.to(case.dtype), probs, routing_map, grad.to(case.dtype)


def expert_weights(case: Case, expert: int):
    gen = torch.Generator().manual_seed(77 + expert)
    w1 = torch.randn(FFN, HIDDEN, generator=gen) / HIDDEN**0.5
    w2 = torch.randn(HIDDEN, FFN, generator=gen) / FFN**0.5
    return w1.to(case.dtype), w2.to(case.dtype)


def expert_ffn(x, probs, w1, w2):
    """gelu(x W1^T) * p W2^T: the gate weight inside the FFN, as in megatron's expert MLP."""
    hidden = F.gelu(F.linear(x, w1)) * probs.unsqueeze(-1).to(x.dtype)
    return F.linear(hidden, w2)


# ---------------------------------------------------------------------------------- reference
def reference(case: Case, world: int, rank: int):
    """The layer output of ``rank`` and the gradients of its inputs, computed without communication.

    The loss is sum over ranks of <output_r, grad_r>; returns (output, d hidden, d probs, d W1 of
    every expert, d W2 of every expert).
    """
    weights = [[w.clone().requires_grad_() for w in expert_weights(case, e)] for e in range(case.num_experts)]
    loss, mine = 0.0, None
    for r in range(world):
        hidden, probs, routing_map, grad = rank_inputs(case, r)
        hidden.requires_grad_()
        probs.requires_grad_()
        out = torch.zeros(case.num_tokens, HIDDEN, dtype=case.dtype)
        for e in range(case.num_experts):
            idx = routing_map[:, e].nonzero().flatten()
            out = out.index_add(0, idx, expert_ffn(hidden[idx], probs[idx, e], *weights[e]))
        loss = loss + (out.float() * grad.float()).sum()
        if r == rank:
            mine = (out, hidden, probs)
    loss.backward()
    out, hidden, probs = mine
    return out.detach(), hidden.grad, probs.grad, [w[0].grad for w in weights], [w[1].grad for w in weights]


# ------------------------------------------------------------------------------------ one run
def run_layer(dispatcher, case: Case, pgs: SimpleNamespace):
    """Dispatch -> sharded experts -> combine -> backward; returns what the reference returns."""
    rank = dist.get_rank()
    etp, etp_rank = pgs.expt_tp.size(), pgs.expt_tp.rank()
    hidden, probs, routing_map, grad = rank_inputs(case, rank)
    hidden.requires_grad_()
    probs.requires_grad_()
    weights = []
    for e in dispatcher.local_expert_indices:
        w1, w2 = expert_weights(case, e)
        shard = slice(etp_rank * FFN // etp, (etp_rank + 1) * FFN // etp)
        weights.append((w1[shard].clone().requires_grad_(), w2[:, shard].clone().requires_grad_()))
    expert_input, tokens_per_expert, expert_probs = dispatcher.dispatch(hidden, probs, routing_map)
    assert tokens_per_expert.dtype == torch.int64 and tokens_per_expert.device.type == "cpu"
    assert int(tokens_per_expert.sum()) == expert_input.shape[0] == expert_probs.shape[0]
    outputs = []
    for (w1, w2), x, p in zip(
        weights, expert_input.split(tokens_per_expert.tolist()), expert_probs.split(tokens_per_expert.tolist())
    ):
        outputs.append(expert_ffn(x, p, w1, w2))
    expert_output = torch.cat(outputs) if outputs else expert_input[:0]
    out = dispatcher.combine(expert_output)
    (out.float() * grad.float()).sum().backward()
    return out.detach(), hidden.grad, probs.grad, [w[0].grad for w in weights], [w[1].grad for w in weights]


def compare(got, want, case: Case, dispatcher, pgs, label: str, want_is_local: bool = False) -> float:
    """Max abs difference of outputs and every gradient (weights: this rank's shards).

    ``want`` is the reference (weight gradients of every expert, unsharded) or, with
    ``want_is_local``, another dispatcher's result (this rank's shards).
    """
    etp, etp_rank = pgs.expt_tp.size(), pgs.expt_tp.rank()
    shard = slice(etp_rank * FFN // etp, (etp_rank + 1) * FFN // etp)
    out, d_hidden, d_probs, d_w1, d_w2 = got
    pairs = [(out, want[0]), (d_hidden, want[1]), (d_probs, want[2])]
    for i, e in enumerate(dispatcher.local_expert_indices):
        pairs.append((d_w1[i], want[3][i] if want_is_local else want[3][e][shard]))
        pairs.append((d_w2[i], want[4][i] if want_is_local else want[4][e][:, shard]))
    tol = 3e-2 if case.dtype == torch.bfloat16 else 1e-5
    worst = 0.0
    for a, b in pairs:
        assert a.shape == b.shape, f"{label}: shape {tuple(a.shape)} != {tuple(b.shape)}"
        diff = (a.float() - b.float()).abs().max().item() if a.numel() else 0.0
        scale = max(1.0, b.float().abs().max().item() if b.numel() else 1.0)
        assert diff <= tol * scale, f"{label}: max diff {diff} > {tol * scale}"
        worst = max(worst, diff)
    return worst


def check_dispatchers(names, cases, ranks_per_node: int, etp: int = 1, compare_to: str | None = None) -> float:
    """Run every case through every dispatcher; compare with the reference (and ``compare_to``).

    Raises AssertionError (with the case) on a mismatch; returns the largest difference seen.
    """
    pgs = groups(etp)
    world, rank = dist.get_world_size(), dist.get_rank()
    worst, dispatchers = 0.0, {}
    for case in cases:
        want = reference(case, world, rank)
        results = {}
        for name in names:
            key = (name, case.num_experts)
            if key not in dispatchers:
                dispatchers[key] = make_dispatcher(name, pgs, case.num_experts, ranks_per_node)
            results[name] = run_layer(dispatchers[key], case, pgs)
            worst = max(worst, compare(results[name], want, case, dispatchers[key], pgs, f"{name} {case}"))
        if compare_to is not None:
            for name in names:
                compare(results[name], results[compare_to], case, dispatchers[(name, case.num_experts)], pgs,
                        f"{name} vs {compare_to} {case}", want_is_local=True)
    return worst


def message_counts(ranks_per_node: int, num_experts: int) -> dict:
    """One dispatch + combine + backward per route with every chunk non-empty; this rank's log."""
    pgs = groups(1)
    case = Case(num_experts=num_experts, num_tokens=num_experts * 2)
    hidden, probs, _, _ = rank_inputs(case, dist.get_rank())
    routing_map = torch.ones(case.num_tokens, num_experts, dtype=torch.bool)
    out = {}
    for name in ("alltoall", "hierarchical", "hierarchical_2d"):
        dispatcher = make_dispatcher(name, pgs, num_experts, ranks_per_node)
        x, _, p = dispatcher.dispatch(hidden.clone().requires_grad_(), probs, routing_map)
        dispatcher.combine(x * p.unsqueeze(-1)).sum().backward()
        out[name] = dispatcher.comm_log.snapshot()
    return out


def auto_choices(ranks_per_node: int) -> dict:
    """Routes ``auto`` runs under α-β parameters that favour each of them."""
    pgs = groups(1)
    case = Case(num_experts=dist.get_world_size(), num_tokens=8, routing="top1")
    hidden, probs, routing_map, _ = rank_inputs(case, dist.get_rank())
    regimes = {
        # latency-bound network: fewest inter-node messages wins
        "latency": dict(alpha_intra=0.0, beta_intra=0.0, alpha_inter=1.0, beta_inter=0.0),
        # costly intra-node copies, free network: no detour through the leader
        "intra_bandwidth": dict(alpha_intra=0.0, beta_intra=1.0, alpha_inter=0.0, beta_inter=0.0),
    }
    out = {}
    for regime, params in regimes.items():
        dispatcher = make_dispatcher("auto", pgs, case.num_experts, ranks_per_node, **params)
        with torch.no_grad():
            x, _, _ = dispatcher.dispatch(hidden, probs, routing_map)
            dispatcher.combine(x)
        out[regime] = dict(dispatcher.comm_log.routes)
    return out


A2A = ["alltoall", "hierarchical", "hierarchical_2d", "auto"]


def checks_2x2() -> dict:
    """World 4 as 2 nodes x 2 ranks: everything against the reference and the allgather dispatcher."""
    from megatron_evomoe import compat  # the allgather reference runs megatron's gather helpers

    compat.apply_cpu_adaptations()
    init_world()
    cases = [
        Case(routing="random", seed=0),
        Case(routing="top1", seed=1),
        Case(routing="top2", num_experts=8, seed=2, num_tokens=9),
        Case(routing="empty_expert", num_experts=8, seed=3),
        Case(routing="none", seed=4),
        Case(routing="random", dtype=torch.bfloat16, seed=5),
        Case(routing="top2", capacity_factor=0.5, seed=6, num_tokens=10),
    ]
    return {
        "max_diff": check_dispatchers(["allgather", *A2A], cases, 2, compare_to="allgather"),
        "max_diff_etp2": check_dispatchers(
            ["allgather", *A2A], cases[:2] + cases[5:], 2, etp=2, compare_to="allgather"
        ),
        "messages": message_counts(2, 8),
        "auto": auto_choices(2),
    }


def checks_2x4() -> dict:
    """World 8 as 2 nodes x 4 ranks (no megatron import: the allgather reference is not used here)."""
    init_world()
    cases = [
        Case(routing="random", num_experts=8, seed=10),
        Case(routing="empty_expert", num_experts=16, seed=11, num_tokens=5),
        Case(routing="random", num_experts=8, dtype=torch.bfloat16, seed=12),
        Case(routing="top1", num_experts=8, capacity_factor=0.5, seed=13, num_tokens=12),
    ]
    report = {"max_diff": check_dispatchers(A2A, cases, 4, compare_to="alltoall"), "messages": message_counts(4, 8)}
    dist.barrier()
    return report
