"""BASE layer router (Lewis et al. 2021, "BASE Layers: Simplifying Training of Large, Sparse Models").

Scores s_{t,e} = h_t . w_e with learned expert embeddings w_e (initialised orthogonal, gain 0.1, as
in fairseq's BaseLayer). Training: a *balanced* assignment -- every expert receives the same number
of tokens -- maximising sum_t s_{t, a_t}, solved by the auction algorithm of ``moe/auction.py`` over
all tokens of the token-exchange group (the ranks whose tokens the dispatcher pools: expert-parallel
x tensor-parallel under sequence parallelism). Inference: greedy top-1, a_t = argmax_e s_{t,e}.
No balance loss: balance holds by construction (``--moe-z-loss-coeff`` adds the router z-loss of
the scores).

Combine weight: BASE mixes the assigned expert as sigmoid(s_{t,a}) * expert(h) + (1 - sigmoid) * h,
where fairseq's expert network is itself residual (h + FFN(h)); that is h + sigmoid(s_{t,a}) *
FFN(h). Our MoE layer's output is added to the residual stream by the transformer layer, so the
weight of the expert output is sigmoid(s_{t,a}) -- the only path by which the expert embeddings
learn (the assignment itself carries no gradient).

Distributed: the scores ``[T, E]`` (no gradient) of every rank of the group are all-gathered in group
rank order, group rank 0 solves the auction and broadcasts the assignment, and each rank keeps its
own slice -- identical to solving the concatenated tokens on one rank, whatever the device's
tie-breaking. fairseq shuffles tokens across workers before a *per-worker* assignment to break
correlations inside a batch; solving over all tokens of the group makes that shuffle unnecessary.
Every rank of the group must route the same number of tokens (as the all-gather dispatcher assumes).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from megatron.core.transformer.moe.moe_utils import get_default_pg_collection

from megatron_evomoe.moe.auction import balanced_assignment
from megatron_evomoe.moe.router import Router, RoutingDecision, orthogonal_centroids
from megatron_evomoe.moe.router_config import RoutingState
from megatron_evomoe.moe.serving_gate import SIGMOID_CHOICE, ServingGate, gate_tensor
from megatron_evomoe.moe.routers.base_config import BaseConfig
from megatron_evomoe.seeding import set_init_rule


def assign_over_group(
    scores: torch.Tensor, group: Optional[dist.ProcessGroup], epsilon: float, max_rounds: int
) -> torch.Tensor:
    """Balanced assignment of the tokens of every rank of ``group``; returns this rank's ``[T]`` experts.

    Args:
        scores: ``[T, E]`` this rank's scores (detached); T must be equal on all ranks of the group.
        group: the ranks whose tokens are assigned jointly (None or size 1: this rank alone).
        epsilon, max_rounds: auction parameters (see :func:`balanced_assignment`).
    """
    if group is None or group.size() == 1:
        return balanced_assignment(scores, epsilon, max_rounds)
    size, rank = group.size(), group.rank()
    num_tokens = scores.shape[0]
    gathered = [torch.empty_like(scores) for _ in range(size)]
    dist.all_gather(gathered, scores.contiguous(), group=group)
    if rank == 0:
        assignment = balanced_assignment(torch.cat(gathered), epsilon, max_rounds)  # [size * T]
    else:
        assignment = torch.empty(size * num_tokens, dtype=torch.long, device=scores.device)
    dist.broadcast(assignment, src=dist.get_global_rank(group, 0), group=group)
    return assignment[rank * num_tokens : (rank + 1) * num_tokens]


class BaseRouter(Router):
    """Balanced assignment in training, greedy at inference, sigmoid gate on the chosen expert."""

    Config = BaseConfig

    LOSS_NAMES = ()

    def __init__(self, config, pg_collection=None):
        if pg_collection is None:
            pg_collection = get_default_pg_collection()
        super().__init__(config, pg_collection)
        self.weight = self.new_gate_weight()  # [E, h] expert embeddings w_e
        set_init_rule(self.weight, orthogonal_centroids)
        # The group whose tokens the dispatchers pool (EP x TP under sequence parallelism).
        self.assignment_group = pg_collection.tp_ep

    def serving_gate(self, state: RoutingState) -> ServingGate:
        """Inference routing: greedy argmax of the scores, weight sigmoid(score)."""
        return ServingGate(SIGMOID_CHOICE, {"choice": "argmax"}, {"weight": gate_tensor(self.weight)})

    def forward(self, hidden: torch.Tensor, token_ids: Optional[torch.Tensor]) -> RoutingDecision:
        scores = self.gate_logits(hidden, self.weight)  # [T, E] fp32
        if self.training:
            expert = assign_over_group(
                scores.detach(),
                self.assignment_group,
                self.options.base_auction_epsilon,
                self.options.base_auction_max_rounds,
            )
        else:
            expert = scores.detach().argmax(dim=-1)
        routing_map = F.one_hot(expert, self.num_experts).bool()  # [T, E]
        gate = torch.sigmoid(scores.gather(1, expert.unsqueeze(1)))  # [T, 1]
        decision = RoutingDecision(probs=gate * routing_map, routing_map=routing_map)
        self.add_z_loss(decision, scores)
        return decision
