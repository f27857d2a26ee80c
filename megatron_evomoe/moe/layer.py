"""The MoE layer: router -> dispatcher -> experts -> combine (DESIGN.md "Seams").

It replaces megatron-core's MLP in the layer spec (``ModuleSpec(module=MoELayer,
submodules=MoESubmodules(experts=..., router=RouterClass))``). Experts are megatron-core expert MLPs
(SequentialMLP on CPU, grouped GEMM / TE on GPU). The router's aux loss rides on the layer output
through megatron's ``MoEAuxLossAutoScaler``, whose scale megatron's pipeline schedule sets for each
micro-batch (loss scale / number of micro-batches), so it works on every pipeline stage.

With ``--moe-recompute moe_aware`` the router and the experts are recomputed in backward from the
layer input and the dispatch all-to-all's output (``moe/recompute.py``); the dispatcher's
all-to-alls run once.

Routing token ids arrive in megatron's ``padding_mask`` argument: megatron-core threads that tensor
unchanged from ``GPTModel.forward`` to every MLP call, through activation recomputation and on every
pipeline stage (see ``moe/token_ids.py``).
"""

from __future__ import annotations

from typing import Optional

import torch
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.moe.moe_layer import MoESubmodules
from megatron.core.transformer.moe.moe_utils import MoEAuxLossAutoScaler, get_default_pg_collection
from megatron.core.transformer.spec_utils import build_module

from megatron_evomoe.config import ModelConfig
from megatron_evomoe.errors import InputError
from megatron_evomoe.moe.capacity import apply_capacity, expert_capacity
from megatron_evomoe.moe.dispatch.base import build_dispatcher
from megatron_evomoe.moe.dispatch.replay import REPLAY, recompute_phase
from megatron_evomoe.moe.recompute import SEGMENTS, MoERecompute, moe_recompute_scope
from megatron_evomoe.moe.regather import regather_on_backward
from megatron_evomoe.moe.router_config import RoutingState
from megatron_evomoe.moe.stats import RoutingStats
from megatron_evomoe.moe.token_ids import routing_token_ids


class MoELayer(MegatronModule):
    """Mixture-of-experts FFN with a pluggable router and dispatcher.

    Args:
        config: the model config (``num_moe_experts``, ``moe_router``, ``moe_dispatch``, ...).
        submodules: ``experts`` (a megatron expert-MLP spec) and ``router`` (a Router class).
        layer_number: 1-based global layer number (megatron sets it).
        pg_collection: process groups (megatron's defaults when None).
    """

    def __init__(
        self,
        config: ModelConfig,
        submodules: MoESubmodules,
        layer_number: Optional[int] = None,
        pg_collection: Optional[ProcessGroupCollection] = None,
    ):
        super().__init__(config)
        if pg_collection is None:
            pg_collection = get_default_pg_collection()
        self.pg_collection = pg_collection
        ep_size, ep_rank = pg_collection.ep.size(), pg_collection.ep.rank()
        if config.num_moe_experts % ep_size != 0:
            raise InputError(
                f"--num-experts {config.num_moe_experts} is not divisible by "
                f"--expert-model-parallel-size {ep_size}"
            )
        self.num_local_experts = config.num_moe_experts // ep_size
        self.local_expert_indices = [
            ep_rank * self.num_local_experts + i for i in range(self.num_local_experts)
        ]
        self.layer_number = layer_number
        self.router = submodules.router(config=config, pg_collection=pg_collection)
        self.experts = build_module(
            submodules.experts, self.num_local_experts, config, pg_collection=pg_collection
        )
        self.dispatcher = build_dispatcher(
            config, self.num_local_experts, self.local_expert_indices, pg_collection
        )
        # EvoMoE stage 1: one shared FFN (a dense, data-parallel parameter: replicated on every EP
        # rank and averaged like any dense weight) that all tokens go through until T_S.
        self.shared_expert = None
        if submodules.shared_experts is not None:
            self.shared_expert = build_module(
                submodules.shared_experts,
                config=config,
                ffn_hidden_size=config.moe_ffn_hidden_size,
                tp_group=pg_collection.tp,
            )
        self.dense_phase = False
        self.stats = RoutingStats(config.num_moe_experts, type(self.router).loss_names(config))
        segments = moe_recompute_scope(config) == SEGMENTS  # else none, or the dispatcher replays
        self.recompute = MoERecompute("moe_aware" if segments else "none")

    def set_layer_number(self, layer_number: int) -> None:
        """Called by megatron's TransformerLayer after construction."""
        self.layer_number = layer_number
        self.router.set_layer_number(layer_number)

    def set_routing_state(self, state: RoutingState) -> None:
        """Phase / temperature for the coming step (from the phase controller)."""
        self.dense_phase = self.shared_expert is not None and self.config.moe_router.shared_expert_stage(state)
        self.router.set_routing_state(state)

    def forward(self, hidden_states: torch.Tensor, padding_mask: Optional[torch.Tensor] = None):
        """``hidden_states`` ``[s, b, h]`` -> (output ``[s, b, h]``, None bias)."""
        if self.dense_phase:
            return self._forward_shared_expert(hidden_states)
        tokens = hidden_states.reshape(-1, hidden_states.shape[-1])
        self.router.num_sequences = hidden_states.shape[1]  # [s, b, h]: per-sequence balance statistics
        token_ids = None
        if self.router.NEEDS_TOKEN_IDS:  # the ids ride in padding_mask (megatron-core 0.16.x; moe/token_ids.py)
            token_ids = routing_token_ids(padding_mask, hidden_states.shape[:2], self.pg_collection.tp)
        probs, routing_map, num_selected, aux_loss, logged_losses = self.recompute(self._route, tokens, token_ids)
        expert_input, tokens_per_expert, expert_probs = self.dispatcher.dispatch(tokens, probs, routing_map)
        with regather_on_backward(expert_input, self.dispatcher.local_gather()):
            expert_output = self.recompute(self._compute_experts, expert_input, tokens_per_expert, expert_probs)
        output = self.dispatcher.combine(expert_output).to(hidden_states.dtype)
        if aux_loss is not None:
            output = MoEAuxLossAutoScaler.apply(output, aux_loss)
        if self.training and recompute_phase() != REPLAY:  # megatron's recomputation: counted once
            self.stats.record(routing_map, logged_losses, num_selected)
        return output.view(hidden_states.shape), None

    def _route(self, tokens: torch.Tensor, token_ids: Optional[torch.Tensor]):
        """Router then capacity: ``(probs [T, E], routing_map [T, E], pairs the gate selected (int64
        scalar, before capacity), aux_loss | None, logged losses)``."""
        decision = self.router(tokens, token_ids)
        num_selected = decision.routing_map.sum()
        probs, routing_map = self._apply_capacity(decision.probs, decision.routing_map, num_selected)
        return probs, routing_map, num_selected, decision.aux_loss, decision.logged_losses

    def _compute_experts(self, expert_input, tokens_per_expert, expert_probs) -> torch.Tensor:
        """The local experts on their rows (grouped by expert); the gate weight is applied inside."""
        expert_output, _ = self.experts(expert_input, tokens_per_expert, expert_probs)
        return expert_output

    def _forward_shared_expert(self, hidden_states: torch.Tensor):
        """EvoMoE stage 1: every token through the shared expert; no gate, no balance loss."""
        output, bias = self.shared_expert(hidden_states)
        if bias is not None:
            output = output + bias
        if self.training and recompute_phase() != REPLAY:
            self.stats.record_dense(hidden_states.shape[0] * hidden_states.shape[1], hidden_states.device)
        return output, None

    def _apply_capacity(self, probs: torch.Tensor, routing_map: torch.Tensor, num_selected: torch.Tensor):
        """Capacity from T * k for fixed-k routers, from the selected pairs for content-based gates
        (``moe/capacity.py``); the balance loss counted the gate's choices before this."""
        factor = self.config.moe_expert_capacity_factor
        if factor is None:
            return probs, routing_map
        num_experts = self.config.num_moe_experts
        if self.router.FIXED_TOPK:
            capacity = expert_capacity(routing_map.shape[0], num_experts, self.config.moe_router_topk, factor)
        else:
            capacity = expert_capacity(int(num_selected), num_experts, 1, factor)
        return apply_capacity(probs, routing_map, capacity, self.config.moe_token_drop_policy)
