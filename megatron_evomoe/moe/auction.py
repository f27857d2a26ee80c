"""Balanced token-to-expert assignment by an auction algorithm (BASE layers, Lewis et al. 2021).

Problem: scores ``a[t, e]`` for ``T`` tokens and ``E`` experts; assign every token to one expert,
at most ``C = ceil(T / E)`` tokens per expert (exactly ``T / E`` each when ``E`` divides ``T``), so
that ``sum_t a[t, expert(t)]`` is maximal. It is a linear assignment problem in which each expert is
``C`` identical slots.

Algorithm: the forward auction (Bertsekas 1988) in Jacobi form -- every unassigned token bids in
the same round, so a round is a handful of tensor operations rather than a Python loop over tokens:

* each expert keeps its slots sorted by the bids that hold them; its *price* ``p_e`` is its cheapest
  slot (a free slot costs 0 until someone bids for it);
* an unassigned token values expert ``e`` at ``a[t, e] - p_e``; with best expert ``e*`` (value
  ``v1``) and the best value among the *other* experts ``v2`` it bids ``p_e* + (v1 - v2) + eps``,
  the most it can pay while ``e*`` stays its eps-best expert;
* each expert keeps the ``C`` highest of (held bids + new bids); displaced tokens bid again.

Why it is optimal: a held bid ``b`` satisfies ``a[t, e] - b >= max_{k != e} (a[t, k] - p_k) - eps``
when placed, prices only rise, and ``p_e <= b``; so at the end every token is eps-best at its
expert's price. With one price per expert (>= 0, zero where a slot stays free) that is the dual of
the capacity-constrained problem, hence ``sum >= optimum - T * eps``: exactly optimal whenever
``T * eps`` is below the gap to the second-best assignment.

eps is ``epsilon * (max score - min score)``. We do not use eps-scaling: measured on random,
skewed and duplicated score matrices, starting from zero prices with the final eps needed fewer
rounds (tokens bid their whole preference margin at once) than any eps-scaling schedule tried.
Groups of (near-)identical tokens competing for few slots raise prices by ~eps per round (a "price
war", roughly ``gap / eps`` rounds); ``max_rounds`` bounds that, after which the remaining tokens
are put greedily into free slots (the result stays balanced, optimality is then not guaranteed).
"""

from __future__ import annotations

import math

import torch


def expert_capacity_exact(num_tokens: int, num_experts: int) -> int:
    """Tokens per expert in a balanced assignment: ``ceil(T / E)``."""
    return int(math.ceil(num_tokens / num_experts))


@torch.no_grad()
def balanced_assignment(
    scores: torch.Tensor, epsilon: float = 1e-4, max_rounds: int = 10000
) -> torch.Tensor:
    """Assign each token to one expert, at most ``ceil(T/E)`` per expert, maximising the total score.

    Args:
        scores: ``[T, E]`` token-expert affinities (any float dtype; solved in float64 on its device).
        epsilon: bid increment relative to the score range; the total is within
            ``T * epsilon * (max - min)`` of the optimum.
        max_rounds: cap on bidding rounds; when reached, the remaining tokens are placed greedily
            into free slots (balanced, possibly sub-optimal).

    Returns:
        ``expert_T`` ``[T]`` int64, the expert of every token.
    """
    num_tokens, num_experts = scores.shape
    if num_experts == 1 or num_tokens == 0:
        return torch.zeros(num_tokens, dtype=torch.long, device=scores.device)
    values = scores.detach().to(torch.float64)
    score_range = float(values.max() - values.min())
    eps = epsilon * score_range if score_range > 0 else epsilon
    state = _AuctionState(values, expert_capacity_exact(num_tokens, num_experts))
    rounds = 0
    while rounds < max_rounds and state.bid_round(eps):
        rounds += 1
    if rounds >= max_rounds:
        state.fill_greedily()
    return state.token_expert.clone()


class _AuctionState:
    """Slot prices and owners ``[E, C]`` (each row sorted by price, descending) and every token's expert."""

    def __init__(self, values: torch.Tensor, capacity: int):
        num_tokens, num_experts = values.shape
        device = values.device
        self.values = values  # [T, E] float64
        self.capacity = capacity
        self.slot_price = values.new_zeros(num_experts, capacity)  # [E, C]
        self.slot_owner = torch.full((num_experts, capacity), -1, dtype=torch.long, device=device)
        self.token_expert = torch.full((num_tokens,), -1, dtype=torch.long, device=device)

    def bid_round(self, eps: float) -> bool:
        """One Jacobi round; returns False when every token is assigned."""
        bidders = (self.token_expert < 0).nonzero(as_tuple=True)[0]  # [B]
        if bidders.numel() == 0:
            return False
        price = self.slot_price[:, -1]  # [E] the cheapest slot of each expert
        net = self.values.index_select(0, bidders) - price  # [B, E]
        top2 = net.topk(2, dim=1)
        best = top2.indices[:, 0]
        bid = price[best] + (top2.values[:, 0] - top2.values[:, 1]) + eps  # [B]
        self._accept(bidders, best, bid)
        return True

    def _accept(self, bidders: torch.Tensor, best: torch.Tensor, bid: torch.Tensor) -> None:
        """Every expert that received bids keeps its ``C`` highest entries (held slots + bids)."""
        capacity = self.capacity
        targeted, row_of_bid = torch.unique(best, return_inverse=True)  # [K], [B]
        num_rows = targeted.numel()
        held_price = self.slot_price.index_select(0, targeted)  # [K, C]
        held_owner = self.slot_owner.index_select(0, targeted)
        entry_row = torch.cat([torch.arange(num_rows, device=best.device).repeat_interleave(capacity), row_of_bid])
        entry_price = torch.cat([held_price.flatten(), bid])
        entry_owner = torch.cat([held_owner.flatten(), bidders])
        # Sort by price (descending), then stably by row: each row's entries, highest first. Held
        # slots precede new bids in the concatenation, so an equal bid never displaces a holder.
        order = torch.sort(entry_price, descending=True, stable=True).indices
        order = order[torch.sort(entry_row[order], stable=True).indices]
        entries_per_row = torch.bincount(entry_row, minlength=num_rows)
        first = torch.cumsum(entries_per_row, 0) - entries_per_row
        keep = order[(first.unsqueeze(1) + torch.arange(capacity, device=first.device)).flatten()]
        new_owner = entry_owner[keep].view(num_rows, capacity)
        self.slot_price[targeted] = entry_price[keep].view(num_rows, capacity)
        self.slot_owner[targeted] = new_owner
        was_held = held_owner[held_owner >= 0]
        self.token_expert[was_held] = -1
        now_held = new_owner >= 0
        self.token_expert[new_owner[now_held]] = targeted.unsqueeze(1).expand_as(new_owner)[now_held]

    def fill_greedily(self) -> None:
        """After the round cap: put the unassigned tokens into free slots, highest score first."""
        free = (self.slot_owner < 0).sum(dim=1)  # [E]
        while True:
            waiting = (self.token_expert < 0).nonzero(as_tuple=True)[0]
            if waiting.numel() == 0:
                return
            net = self.values.index_select(0, waiting).masked_fill(free.unsqueeze(0) == 0, float("-inf"))
            best_value, best = net.max(dim=1)
            for expert in best.unique().tolist():
                mine = best == expert
                take = waiting[mine][best_value[mine].argsort(descending=True)[: int(free[expert])]]
                self.token_expert[take] = expert
                free[expert] -= take.numel()
