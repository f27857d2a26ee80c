"""The router interface every gate implements (DESIGN.md "Seams: Router").

A router maps the tokens of one micro-batch on this rank to a :class:`RoutingDecision`: a gate
weight per (token, expert) and a boolean routing map. A token may go to 0..E experts (the DTS gate
is content based), so nothing here assumes a fixed k. Routers never move tokens between ranks; they
may all-reduce *statistics* over the sequence-parallel group so that losses equal those of the
unsplit sequence. Phase and temperature come from the phase controller through
:meth:`Router.set_routing_state`, never from the iteration counter inside ``forward``.

A router class is everything the rest of the code knows about that router: its ``Config``
(hyper-parameters, flags, run-dependent defaults, phases; ``moe/router_config.py``) and the class
attributes below (losses it logs, what it needs, its gate FLOPs). Adding a router is one file under
``moe/routers/`` and one line in the registry (``moe/routers/__init__.py``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.moe.moe_utils import get_default_pg_collection

from megatron_evomoe.config import ModelConfig
from megatron_evomoe.moe.balance import count_weighted_balance_loss
from megatron_evomoe.moe.router_config import RouterConfig, RoutingState


@dataclass
class RoutingDecision:
    """What a router decided for ``T`` tokens and ``E`` experts.

    Attributes:
        probs: ``[T, E]`` float32 weight of each expert's output in the token's output; zero where
            the token does not visit the expert.
        routing_map: ``[T, E]`` bool, True where the token visits the expert.
        aux_loss: differentiable scalar, already multiplied by its coefficient, added to the
            training loss (None when the router has none in its current phase).
        logged_losses: detached scalars for the logs, e.g. ``{"balance": ..., "distill": ...}``
            (each already multiplied by its coefficient).
        gate: ``[T, E]`` the full distribution over experts the routing was chosen from (Switch's
            and GShard's softmax, DTS's g' at the current tau, DSelect-k's weights), for
            diagnostics (gate entropy, top-1/top-2 margin); None for routers without one (BASE,
            Hash, StableMoE).
    """

    probs: torch.Tensor
    routing_map: torch.Tensor
    aux_loss: Optional[torch.Tensor] = None
    logged_losses: Dict[str, torch.Tensor] = field(default_factory=dict)
    gate: Optional[torch.Tensor] = None


class Router(MegatronModule, ABC):
    """Base class: owns the expert count, the sequence-parallel group and the routing state."""

    Config = RouterConfig
    """The router's hyper-parameters and phases (each router nests its own subclass)."""

    LOSS_NAMES: tuple = ("balance",)
    """Names of the entries this router puts in ``RoutingDecision.logged_losses`` (fixed per class,
    so every rank reduces the same table even when a pipeline stage holds no MoE layer)."""

    @classmethod
    def megatron_loss_names(cls, options: RouterConfig) -> Dict[str, Tuple[str, float]]:
        """The entries of ``LOSS_NAMES`` that megatron-core logs under a name of its own:
        ``{loss name: (megatron-core's name, the coefficient the logged value carries)}``.

        TensorBoard shows them under megatron's tags, without the coefficient, as megatron-core's
        ``track_moe_metrics`` does. Default: the balance loss of :meth:`add_balance_loss` (the
        Switch form) is megatron's ``load_balancing_loss``; a router whose ``balance`` is another
        formula returns ``{}`` and keeps our tag.
        """
        if "balance" in cls.LOSS_NAMES and options.aux_loss_coeff > 0:
            return {"balance": ("load_balancing_loss", options.aux_loss_coeff)}
        return {}

    NEEDS_TOKEN_IDS: bool = False
    """Whether ``forward`` routes by token id (the ids reach it through megatron's ``padding_mask``,
    ``moe/token_ids.py``)."""

    def __init__(self, config: ModelConfig, pg_collection: Optional[ProcessGroupCollection] = None):
        super().__init__(config)
        if pg_collection is None:
            pg_collection = get_default_pg_collection()
        self.num_experts: int = config.num_moe_experts
        self.options = config.moe_router  # this router's Config
        self.tp_group = pg_collection.tp
        self.ep_group = pg_collection.ep
        self.layer_number: Optional[int] = None
        self.routing_state = RoutingState()

    def set_layer_number(self, layer_number: int) -> None:
        """Called by megatron's TransformerLayer; seeds and logs use it."""
        self.layer_number = layer_number

    def set_routing_state(self, state: RoutingState) -> None:
        """Receive phase/temperature from the controller (once per optimizer step)."""
        self.routing_state = state

    @classmethod
    def gate_flops(cls, config: ModelConfig, state: RoutingState) -> float:
        """Forward FLOPs per token of this router's gate in ``state`` (for the FLOPs accounting).

        Default: one ``[h] x [h, E]`` product, 2*h*E.
        """
        return 2.0 * config.hidden_size * config.num_moe_experts

    @classmethod
    def architecture_meta(cls, config: ModelConfig) -> Dict[str, Any]:
        """This router's flags that change a parameter's shape (a checkpoint must agree on them)."""
        return {}

    FIXED_TOPK: bool = True
    """Whether every token selects ``moe_router_topk`` experts (capacity is then sized from T * k,
    as Switch and GShard define it); False for content-based gates whose tokens visit a varying
    number of experts (DTS, DSelect-k), whose capacity is sized from the pairs actually selected."""

    NEEDS_TOKEN_COUNTS: bool = False
    """True for routers that are built from training-data token frequencies (balanced hash)."""

    def token_count_samples(self) -> int:
        """Training samples whose token counts :meth:`prepare_from_data` wants."""
        return 0

    def prepare_from_data(self, token_counts: torch.Tensor) -> None:
        """Receive ``[vocab]`` token counts of the training data before the first step.

        Called only when ``NEEDS_TOKEN_COUNTS``; not called again after a resume if the router's
        own state (a persistent buffer, saved in checkpoints) says it is already prepared.
        """

    def is_prepared(self) -> bool:
        """Whether :meth:`prepare_from_data` state is present (e.g. restored from a checkpoint)."""
        return True

    @abstractmethod
    def forward(self, hidden: torch.Tensor, token_ids: Optional[torch.Tensor]) -> RoutingDecision:
        """Route ``hidden`` ``[T, h]`` (``token_ids`` ``[T]`` int64 or None) to experts."""

    # ----------------------------------------------------------------- helpers for subclasses
    def sequence_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum a statistic over the sequence shards of the TP group (identity without SP).

        Under sequence parallelism each TP rank routes a slice of the sequence; summing counts over
        the TP group makes balance losses equal those of the whole sequence.
        """
        if self.config.sequence_parallel and self.tp_group.size() > 1:
            tensor = tensor.clone()
            dist.all_reduce(tensor, group=self.tp_group)
        return tensor

    def sequence_token_count(self, num_local_tokens: int, device) -> torch.Tensor:
        """Tokens of the whole sequence batch: this rank's count summed over the sequence shards."""
        return self.sequence_sum(torch.tensor(float(num_local_tokens), device=device))

    def add_balance_loss(self, decision: RoutingDecision, probs: torch.Tensor, counted_map: torch.Tensor) -> None:
        """Attach alpha * N * sum_i (count_i / T) * (sum_x p_i(x) / T) to ``decision`` (training only).

        The Switch / GShard / EvoMoE eq. 10 form (``moe/balance.py``): ``probs`` ``[T, E]`` are the
        gate probabilities the loss pushes, ``counted_map`` ``[T, E]`` the (token, expert) pairs it
        counts. Logged as ``balance``.
        """
        coeff = self.options.aux_loss_coeff
        if not self.training or coeff <= 0:
            return
        counts = self.sequence_sum(counted_map.sum(0).float())
        num_tokens = self.sequence_token_count(probs.shape[0], probs.device)
        loss = count_weighted_balance_loss(probs.sum(0), counts, num_tokens, coeff)
        decision.aux_loss = loss if decision.aux_loss is None else decision.aux_loss + loss
        decision.logged_losses["balance"] = loss.detach()

    def gate_logits(self, hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """fp32 router logits ``[T, E]`` = hidden @ weight^T (routing decisions are precision sensitive)."""
        return fp32_gate_logits(hidden, weight)

    def new_gate_weight(self, rows: Optional[int] = None) -> torch.nn.Parameter:
        """A ``[rows or E, h]`` gate matrix, initialised like megatron's router.

        Marked ``sequence_parallel`` so that megatron's finalize_model_grads sums its gradient over
        the TP group when each TP rank saw a different slice of the sequence.
        """
        weight = torch.empty(rows or self.num_experts, self.config.hidden_size, dtype=torch.float32)
        if self.config.perform_initialization:
            self.config.init_method(weight)
        param = torch.nn.Parameter(weight.to(self.config.params_dtype))
        setattr(param, "sequence_parallel", self.config.sequence_parallel)
        return param


def orthogonal_centroids(tensor: torch.Tensor) -> None:
    """fairseq's BASE-layer init of expert centroids (also StableMoE's): orthogonal rows, gain 0.1,
    so experts start in distinct directions with small scores."""
    torch.nn.init.orthogonal_(tensor, gain=0.1)


class _GateLogits(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, input_noise):
        router_input = hidden.float()
        if input_noise is not None:
            router_input = router_input * input_noise(hidden).float()
        ctx.input_noise = input_noise
        ctx.save_for_backward(hidden, weight)
        return F.linear(router_input, weight.float())

    @staticmethod
    def backward(ctx, grad_logits):
        hidden, weight = ctx.saved_tensors
        noise = ctx.input_noise(hidden).float() if ctx.input_noise is not None else None
        grad_hidden = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_hidden = grad_logits @ weight.float()
            grad_hidden = (grad_hidden * noise if noise is not None else grad_hidden).to(hidden.dtype)
        if ctx.needs_input_grad[1]:
            router_input = hidden.float() if noise is None else hidden.float() * noise
            grad_weight = (grad_logits.t() @ router_input).to(weight.dtype)
        return grad_hidden, grad_weight, None


def fp32_gate_logits(
    hidden: torch.Tensor, weight: torch.Tensor, input_noise: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
) -> torch.Tensor:
    """fp32 ``(hidden * noise) @ weight^T`` ``[T, E]`` that keeps ``hidden`` for backward as it is.

    Autograd would keep the fp32 router input instead: a second ``[T, h]`` copy of the tokens in
    bf16 training, and, with input noise, a jittered copy in any precision, while the MoE layer
    keeps ``hidden`` anyway. ``input_noise(hidden)`` (multiplicative, e.g. Switch's jitter) must
    return the same tensor each time it is called: backward calls it again instead of keeping it.
    """
    return _GateLogits.apply(hidden, weight, input_noise)


def mark_sequence_parallel(module: torch.nn.Module, sequence_parallel: bool) -> None:
    """Tag every parameter of a router sub-module for the TP gradient all-reduce (see above)."""
    for param in module.parameters():
        setattr(param, "sequence_parallel", sequence_parallel)
