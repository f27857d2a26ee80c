"""All-gather dispatcher: every rank of the TP x EP group sees every token, computes its experts.

The reference path (no all-to-all): tokens of the expert-tensor-and-expert-parallel group are
all-gathered, each rank runs the (token, expert) pairs of its local experts, writes the weighted
results into a buffer of all gathered tokens, and a reduce-scatter returns to every rank the sums
for its own tokens. With expert tensor parallelism the reduce-scatter also adds the partial sums of
the TP-sharded expert FFNs. Simple and exact; it moves E/L times more data than needed, which is
what the all-to-all dispatchers fix.
"""

from __future__ import annotations

import torch
from megatron.core.tensor_parallel import (
    gather_from_sequence_parallel_region,
    reduce_scatter_to_sequence_parallel_region,
)

from megatron_evomoe.moe.dispatch.base import TokenDispatcher, local_slice, pairs_by_expert, scatter_add_rows


class AllGatherDispatcher(TokenDispatcher):
    """All-gather over TP x EP, local permutation, reduce-scatter back."""

    def dispatch(self, hidden, probs, routing_map):
        self._group_size = self.tp_ep_group.size()
        if self._group_size > 1:
            with torch.no_grad():
                routing_map = gather_from_sequence_parallel_region(
                    routing_map.to(torch.uint8), group=self.tp_ep_group
                ).bool()
            probs = gather_from_sequence_parallel_region(probs, group=self.tp_ep_group)
            hidden = gather_from_sequence_parallel_region(hidden, group=self.tp_ep_group)
        local_map = local_slice(routing_map, self.first_local_expert, self.num_local_experts)
        local_probs = local_slice(probs, self.first_local_expert, self.num_local_experts)
        token_index, expert_index, tokens_per_expert = pairs_by_expert(local_map)
        self._token_index = token_index
        self._num_gathered = hidden.shape[0]
        # Without a gather the rows come from this rank's own tokens, which the router keeps.
        self._local_source = hidden if self._group_size == 1 else None
        expert_input = hidden.index_select(0, token_index)
        expert_probs = local_probs[token_index, expert_index]
        return expert_input, tokens_per_expert.cpu(), expert_probs

    def local_gather(self):
        if self._local_source is None:
            return None
        return self._local_source, self._token_index

    def combine(self, expert_output):
        self._local_source = None
        output = scatter_add_rows(expert_output, self._token_index, self._num_gathered)
        if self._group_size > 1:
            output = reduce_scatter_to_sequence_parallel_region(output, group=self.tp_ep_group)
        return output
