"""Hash-layer router (Roller et al. 2021, "Hash Layers For Large Sparse Models").

Each token goes to the one expert given by a fixed lookup table of its *token id*, whatever its
position, context or batch; the expert output is used with weight 1 (no gate, no parameters, no
balance loss). Two tables (``--hash-type``):

* ``random``: every vocabulary id gets a uniformly random expert, drawn from (--seed, layer
  number) so each MoE layer hashes differently and every rank and layout builds the same table;
* ``balanced``: built before training from the training data's token frequencies by giving the
  most frequent tokens, one by one, to the currently emptiest expert (least total frequency; ties:
  fewest distinct tokens, then lowest index), so frequent tokens are spread over experts and the
  expected load is even; tokens absent from the counted data then go to the experts with the
  fewest distinct tokens. Counts come from ``--hash-frequency-samples`` training samples
  (``training/router_data.py``).

The table is a persistent int64 buffer: it is saved in every checkpoint and restored on resume (the
balanced table is then not rebuilt). Token ids reach the router on every pipeline stage through the
MoE layer (``moe/token_ids.py``).
"""

from __future__ import annotations

import heapq
from typing import Optional

import torch
import torch.nn.functional as F

from megatron_evomoe.moe.router import Router, RoutingDecision
from megatron_evomoe.moe.router_config import RoutingState
from megatron_evomoe.moe.serving_gate import TOKEN_TABLE, ServingGate, gate_tensor
from megatron_evomoe.moe.routers.hash_config import HashConfig
from megatron_evomoe.seeding import stable_seed

UNSET = -1
"""Table entry of a balanced table not yet built from data."""


def random_hash_table(vocab_size: int, num_experts: int, seed: int) -> torch.Tensor:
    """``[vocab_size]`` int64: an independent uniform expert for every token id."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, num_experts, (vocab_size,), generator=generator, dtype=torch.long)


def balanced_hash_table(token_counts: torch.Tensor, num_experts: int) -> torch.Tensor:
    """``[vocab]`` int64: most frequent tokens first, each to the expert with the least total count.

    Load ties go to the expert with fewer distinct tokens, then the lowest index. Tokens never seen
    (count 0) add no load, so the greedy rule would pile them all onto one expert; they are dealt
    out instead to the experts with the fewest distinct tokens. Deterministic.
    """
    count_list = token_counts.to(torch.int64).cpu().tolist()
    seen = sorted((token for token, count in enumerate(count_list) if count > 0), key=lambda t: (-count_list[t], t))
    unseen = [token for token, count in enumerate(count_list) if count <= 0]
    table = torch.empty(len(count_list), dtype=torch.long)
    by_load = [(0, 0, expert) for expert in range(num_experts)]  # (load, distinct tokens, expert)
    for token in seen:
        load, size, expert = heapq.heappop(by_load)
        table[token] = expert
        heapq.heappush(by_load, (load + count_list[token], size + 1, expert))
    by_size = [(size, expert) for _, size, expert in by_load]
    heapq.heapify(by_size)
    for token in unseen:
        size, expert = heapq.heappop(by_size)
        table[token] = expert
        heapq.heappush(by_size, (size + 1, expert))
    return table


def _layer_seed(seed: int, layer_number: Optional[int]) -> int:
    return stable_seed("hash_router", seed, layer_number)


class HashRouter(Router):
    """Fixed token-id -> expert routing from a random or frequency-balanced table."""

    Config = HashConfig

    LOSS_NAMES = ()
    NEEDS_TOKEN_IDS = True

    @classmethod
    def gate_flops(cls, config, state) -> float:
        """A table lookup: no floating-point work."""
        return 0.0

    def __init__(self, config, pg_collection=None):
        super().__init__(config, pg_collection)
        if config.vocab_size <= 0:
            raise ValueError("hash routing needs the vocabulary size (ModelConfig.vocab_size)")
        self.hash_type = self.options.hash_type
        self.NEEDS_TOKEN_COUNTS = self.hash_type == "balanced"
        table = torch.full((config.vocab_size,), UNSET, dtype=torch.long)
        if self.hash_type == "random":
            table = random_hash_table(config.vocab_size, self.num_experts, _layer_seed(config.seed, None))
        self.register_buffer("table", table, persistent=True)  # [vocab] expert of each token id

    def set_layer_number(self, layer_number: int) -> None:
        super().set_layer_number(layer_number)
        if self.hash_type == "random":
            fresh = random_hash_table(self.table.numel(), self.num_experts, _layer_seed(self.config.seed, layer_number))
            self.table.copy_(fresh.to(self.table.device))

    def token_count_samples(self) -> int:
        return self.options.hash_frequency_samples

    def prepare_from_data(self, token_counts: torch.Tensor) -> None:
        """Build the balanced table from ``[vocab]`` training-data token counts."""
        if self.hash_type != "balanced":
            return
        counts = torch.zeros(self.table.numel(), dtype=torch.int64)
        num = min(counts.numel(), token_counts.numel())
        counts[:num] = token_counts[:num].to(torch.int64).cpu()
        self.table.copy_(balanced_hash_table(counts, self.num_experts).to(self.table.device))

    def is_prepared(self) -> bool:
        return bool((self.table != UNSET).all())

    def serving_gate(self, state: RoutingState) -> Optional[ServingGate]:
        """The token-id table, weight 1 (None for a balanced table never built)."""
        if not self.is_prepared():
            return None
        return ServingGate(TOKEN_TABLE, {}, {"table": gate_tensor(self.table)})

    def forward(self, hidden: torch.Tensor, token_ids: Optional[torch.Tensor]) -> RoutingDecision:
        if token_ids is None:
            raise ValueError("hash routing needs the token ids (pass them to the model as padding_mask)")
        expert = self.table[token_ids]  # [T]
        if self.hash_type == "balanced" and not getattr(self, "_checked_prepared", False):
            if not self.is_prepared():
                raise RuntimeError("the balanced hash table was never built (prepare_from_data not called)")
            self._checked_prepared = True
        routing_map = F.one_hot(expert, self.num_experts).bool()  # [T, E]
        return RoutingDecision(probs=routing_map.to(torch.float32), routing_map=routing_map)
