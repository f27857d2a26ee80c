"""StableMoE router (Dai et al. 2022, "StableMoE: Stable Routing Strategy for Mixture of Experts").

Stage 1 (phase ``stage1``, the first ``--stablemoe-stage1-iters`` steps) learns a routing strategy:

* s_{t,i} = E_i . h_t with learned expert centroids E (eq. 1); greedy top-1 a_t = argmax_i s_{t,i};
  the expert output is scaled by sigmoid(s_{t,a_t}) (eq. 3), which is how the centroids learn;
* balance loss (eq. 4): alpha * sum_i ((|A_i| - n/N) / (n/N)) * sum_{t in A_i} sigmoid(s_{t,i}),
  per token (``balance.stablemoe_balance_loss``), alpha = 0.3;
* the routing is distilled, as it is learned, into a lightweight router decoupled from the backbone:
  a word embedding D of the token id (dimension ``--stablemoe-distill-dim``, 50) and distilled
  centroids E^, scores s^_{t,i} = E^_i . D(x_t) (eq. 5), trained by the cross-entropy against the
  stage-1 choice a_t (eq. 6, mean over tokens, weight ``--stablemoe-distill-coeff`` 0.3). Only D and
  E^ receive the distillation gradient; the target carries none.

Stage 2 (phase ``stage2``) freezes the distilled router: a token's expert is
argmax_i s^_{t,i}, a function of its id alone. When the phase first becomes ``stage2`` the router
evaluates the distilled router once for the whole vocabulary into a persistent table (token id ->
expert), saved with every checkpoint; from then on routing is a lookup, so it can never change --
whatever the optimizer later does to D and E^, which get no gradient. The output is still scaled
by sigmoid(s_{t,a_t}) from the backbone centroids (eq. 10), which keep training. No aux loss in
stage 2 (the task loss only; the optional router z-loss, ``--moe-z-loss-coeff``, applies to the
scores s in both stages).

Evaluation in stage 1 routes with the distilled router, argmax_i s^_{t,i}, as the reference
implementation does (Hunter-DDM/stablemoe, ``BaseLayer.forward``: the distilled affinities are used
``if is_stage2() or not is_training``): the model is scored with the routing it will be frozen
with, not greedily on the backbone centroids. Fine-tuning and inference after training use the
state of the last training step (stage 2 once stage 1 is over).

Initialisation as in the reference: backbone centroids E and distilled centroids E^ orthogonal
with gain 0.1 (as fairseq's BASE layer), the word embedding D N(0, 1) (``torch.nn.Embedding``'s
default; the reference leaves it at that).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from megatron_evomoe.moe.balance import stablemoe_balance_loss
from megatron_evomoe.moe.router import Router, RoutingDecision, mark_sequence_parallel, orthogonal_centroids
from megatron_evomoe.moe.router_config import RoutingState
from megatron_evomoe.moe.serving_gate import SIGMOID_CHOICE, ServingGate, gate_tensor
from megatron_evomoe.moe.routers.stablemoe_config import STAGE1, STAGE2, StableMoEConfig
from megatron_evomoe.seeding import set_init_rule

UNSET = -1



class DistilledRouter(torch.nn.Module):
    """The lightweight router: word embedding D ``[vocab, d]`` and distilled centroids E^ ``[E, d]``."""

    def __init__(self, vocab_size: int, dim: int, num_experts: int):
        super().__init__()
        self.embedding = torch.nn.Parameter(torch.empty(vocab_size, dim))
        self.centroids = torch.nn.Parameter(torch.empty(num_experts, dim))
        for param, rule in ((self.embedding, torch.nn.init.normal_), (self.centroids, orthogonal_centroids)):
            rule(param.data)
            set_init_rule(param, rule)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        """``[T]`` ids -> ``[T, E]`` fp32 distilled scores s^."""
        return F.linear(self.embedding[token_ids].float(), self.centroids.float())

    @torch.no_grad()
    def vocabulary_choice(self) -> torch.Tensor:
        """``[vocab]`` argmax_i s^ for every token id."""
        return F.linear(self.embedding.float(), self.centroids.float()).argmax(dim=-1)


class StableMoERouter(Router):
    """Two-stage StableMoE routing; the phase comes from the controller (``stage1`` / ``stage2``)."""

    Config = StableMoEConfig

    LOSS_NAMES = ("balance", "distill")
    NEEDS_TOKEN_IDS = True

    @classmethod
    def megatron_loss_names(cls, options) -> dict:
        """Only the router z-loss: StableMoE's balance loss (its eq. 4) is not megatron's load_balancing_loss."""
        return cls.megatron_z_loss_name(options)

    @classmethod
    def gate_flops(cls, config, state) -> float:
        """Token-centroid scores 2*h*E (both stages: they scale the output), plus the distilled
        router's 2*d*E in stage 1 (its embedding lookup is free; stage 2 is a table lookup)."""
        scores = 2.0 * config.hidden_size * config.num_moe_experts
        if state.phase == STAGE2:
            return scores
        return scores + 2.0 * config.moe_router.stablemoe_distill_dim * config.num_moe_experts

    @classmethod
    def architecture_meta(cls, config) -> dict:
        return {"stablemoe_distill_dim": config.moe_router.stablemoe_distill_dim}

    def __init__(self, config, pg_collection=None):
        super().__init__(config, pg_collection)
        if config.vocab_size <= 0:
            raise ValueError("stablemoe needs the vocabulary size (ModelConfig.vocab_size)")
        self.weight = self.new_gate_weight()  # [E, h] backbone centroids
        with torch.no_grad():
            orthogonal_centroids(self.weight)
        set_init_rule(self.weight, orthogonal_centroids)
        self.distilled = DistilledRouter(config.vocab_size, self.options.stablemoe_distill_dim, self.num_experts)
        mark_sequence_parallel(self.distilled, config.sequence_parallel)
        self.register_buffer(
            "frozen_table", torch.full((config.vocab_size,), UNSET, dtype=torch.long), persistent=True
        )  # [vocab] stage-2 expert of each token id
        self.routing_state = RoutingState(phase=STAGE1)

    @property
    def in_stage2(self) -> bool:
        return self.routing_state.phase == STAGE2

    def set_routing_state(self, state: RoutingState) -> None:
        super().set_routing_state(state)
        if self.in_stage2 and not self.is_frozen():
            self.freeze()

    def is_frozen(self) -> bool:
        """Whether the stage-2 table exists (built here or restored from a checkpoint)."""
        return bool((self.frozen_table != UNSET).all())

    @torch.no_grad()
    def freeze(self) -> None:
        """Record the distilled router's choice for every token id; routing is fixed from now on."""
        self.frozen_table.copy_(self.distilled.vocabulary_choice())

    def serving_gate(self, state: RoutingState) -> ServingGate:
        """Expert = the frozen table's (stage 2), or the distilled router's choice, which evaluation in
        stage 1 uses and the freeze records; weight sigmoid(s) from the backbone centroids."""
        table = self.frozen_table if state.phase == STAGE2 and self.is_frozen() else self.distilled.vocabulary_choice()
        tensors = {"weight": gate_tensor(self.weight), "table": gate_tensor(table)}
        return ServingGate(SIGMOID_CHOICE, {"choice": "table"}, tensors)

    def forward(self, hidden: torch.Tensor, token_ids: Optional[torch.Tensor]) -> RoutingDecision:
        if token_ids is None:
            raise ValueError("stablemoe needs the token ids (pass them to the model as padding_mask)")
        scores = self.gate_logits(hidden, self.weight)  # [T, E] s_{t,i}
        if self.in_stage2:
            expert = self.frozen_table[token_ids]
        elif self.training:
            expert = scores.detach().argmax(dim=-1)
        else:  # evaluation before the freeze: the distilled router, as it will be frozen
            with torch.no_grad():
                expert = self.distilled(token_ids).argmax(dim=-1)
        routing_map = F.one_hot(expert, self.num_experts).bool()  # [T, E]
        gate = torch.sigmoid(scores.gather(1, expert.unsqueeze(1)))  # [T, 1] sigmoid(s_{t,a_t})
        decision = RoutingDecision(probs=gate * routing_map, routing_map=routing_map)
        if self.training and not self.in_stage2:
            self._stage1_losses(decision, gate, expert, token_ids)
        self.add_z_loss(decision, scores)  # both stages: the backbone centroids keep training
        return decision

    def _stage1_losses(self, decision, gate, expert, token_ids) -> None:
        """Balance (eq. 4) and distillation (eq. 6); per-rank partial sums under sequence parallelism."""
        options = self.options
        stats = self.balance_statistics(gate * decision.routing_map, decision.routing_map)  # [T, E] sigmoid on A_i
        if stats is not None:
            balance = stablemoe_balance_loss(
                stats.gate_sum, stats.counts, stats.num_tokens, options.aux_loss_coeff, stats.gate_num_tokens
            )
            self.add_loss(decision, "balance", balance)
        num_tokens = self.sequence_token_count(expert.numel(), gate.device)
        distill_sum = F.cross_entropy(self.distilled(token_ids), expert, reduction="sum")
        self.add_loss(decision, "distill", options.stablemoe_distill_coeff * distill_sum / num_tokens)
