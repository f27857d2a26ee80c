"""GPT-MoE of megatron_evomoe as a Hugging Face model (copied into every exported directory).

Self-contained: torch and transformers only, so that ``AutoModelForCausalLM.from_pretrained(dir,
trust_remote_code=True)`` loads an exported model without megatron_evomoe installed. The
architecture is that of ``megatron_evomoe.models.gpt``: learned absolute positions, pre-LayerNorm
layers, GeLU, no linear biases, tied input/output embeddings, and an MoE FFN on the layers that
``mlp_types`` marks. Each MoE layer routes with the trained model's final routing state, written
as one of a few plain gate kinds (``megatron_evomoe/moe/serving_gate.py`` defines them); the
experts' outputs are weighted by the gate and summed, without capacity (dropless).

``generate()`` works without a KV cache: every step runs the whole sequence again (simple, and
plenty for evaluation harnesses on small models).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast


class EvoMoEGPTConfig(PretrainedConfig):
    """Sizes, which layers are MoE, and each MoE layer's gate (kind and options, no tensors).

    Args:
        mlp_types: ``"dense"``, ``"moe"`` or ``"shared"`` (an MoE layer exported in EvoMoE's
            stage 1: a dense FFN of ``moe_intermediate_size``) per layer.
        moe_gates: per layer, None (dense) or ``{"kind": ..., **options}``.
    """

    model_type = "evomoe_gpt"

    def __init__(
        self,
        vocab_size: int = 128,
        hidden_size: int = 128,
        num_hidden_layers: int = 4,
        num_attention_heads: int = 4,
        intermediate_size: int = 512,
        moe_intermediate_size: Optional[int] = None,
        num_experts: int = 0,
        max_position_embeddings: int = 128,
        layer_norm_epsilon: float = 1e-5,
        mlp_types: Optional[list] = None,
        moe_gates: Optional[list] = None,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.moe_intermediate_size = moe_intermediate_size or intermediate_size
        self.num_experts = num_experts
        self.max_position_embeddings = max_position_embeddings
        self.layer_norm_epsilon = layer_norm_epsilon
        self.mlp_types = mlp_types or ["dense"] * num_hidden_layers
        self.moe_gates = moe_gates or [None] * num_hidden_layers
        kwargs.setdefault("tie_word_embeddings", False)  # the output layer reads wte directly
        super().__init__(**kwargs)


class MLP(nn.Module):
    """fc2(gelu(fc1(x))), no biases (megatron's MLP with GeLU)."""

    def __init__(self, hidden_size: int, ffn_size: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, ffn_size, bias=False)
        self.fc2 = nn.Linear(ffn_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def _one_hot(expert: torch.Tensor, num_experts: int) -> torch.Tensor:
    return F.one_hot(expert, num_experts).bool()


def _smooth_step(t: torch.Tensor, gamma: float) -> torch.Tensor:
    cubic = -2.0 / gamma**3 * t**3 + 3.0 / (2.0 * gamma) * t + 0.5
    return torch.where(t <= -gamma / 2, torch.zeros_like(t), torch.where(t >= gamma / 2, torch.ones_like(t), cubic))


class Gate(nn.Module):
    """One MoE layer's routing: tokens ``[T, h]`` (and their ids ``[T]``) -> (weights ``[T, E]`` fp32,
    routing map ``[T, E]`` bool). Gate arithmetic is fp32 whatever the model dtype."""

    def __init__(self, config: EvoMoEGPTConfig, spec: dict):
        super().__init__()
        self.kind = spec["kind"]
        self.options = {k: v for k, v in spec.items() if k != "kind"}
        num_experts, hidden = config.num_experts, config.hidden_size
        if self.kind in ("softmax_topk", "softmax_threshold", "sigmoid_choice"):
            self.weight = nn.Parameter(torch.zeros(num_experts, hidden, dtype=torch.float32))
        if self.kind == "token_table" or self.options.get("choice") == "table":
            self.register_buffer("table", torch.zeros(config.vocab_size, dtype=torch.long))
        if self.kind == "dselectk":
            k, m = self.options["num_selectors"], self.options["num_bits"]
            self.z_weight = nn.Parameter(torch.zeros(k * m, hidden, dtype=torch.float32))
            self.z_bias = nn.Parameter(torch.zeros(k * m, dtype=torch.float32))
            self.selector_weight = nn.Parameter(torch.zeros(k, hidden, dtype=torch.float32))
            self.selector_bias = nn.Parameter(torch.zeros(k, dtype=torch.float32))
        self.num_experts = num_experts

    def forward(self, tokens: torch.Tensor, token_ids: torch.Tensor):
        x = tokens.float()
        if self.kind == "token_table":
            routing_map = _one_hot(self.table[token_ids], self.num_experts)
            return routing_map.float(), routing_map
        if self.kind == "dselectk":
            return self._dselectk(x)
        logits = F.linear(x, self.weight.float())  # [T, E]
        if self.kind == "sigmoid_choice":
            expert = logits.argmax(dim=-1) if self.options["choice"] == "argmax" else self.table[token_ids]
            routing_map = _one_hot(expert, self.num_experts)
            return torch.sigmoid(logits.gather(1, expert.unsqueeze(1))) * routing_map, routing_map
        probs = torch.softmax(logits / self.options["temperature"], dim=-1)
        if self.kind == "softmax_threshold":
            routing_map = probs > self.options["threshold"]
            return probs * routing_map, routing_map
        top_k = self.options["top_k"]
        if top_k == 1:
            routing_map = _one_hot(probs.argmax(dim=-1), self.num_experts)
            return probs * routing_map, routing_map
        values, index = probs.topk(top_k, dim=-1)
        if self.options["normalize"]:
            values = values / values.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(probs.dtype).eps)
        routing_map = torch.zeros_like(probs, dtype=torch.bool).scatter_(1, index, True)
        return torch.zeros_like(probs).scatter(1, index, values), routing_map

    def _dselectk(self, x: torch.Tensor):
        k, m, gamma = self.options["num_selectors"], self.options["num_bits"], self.options["gamma"]
        z = F.linear(x, self.z_weight.float(), self.z_bias.float()).view(-1, k, m)
        selector_logits = F.linear(x, self.selector_weight.float(), self.selector_bias.float())  # [T, k]
        shifts = torch.arange(m - 1, -1, -1, device=x.device)
        codes = ((torch.arange(self.num_experts, device=x.device).unsqueeze(1) >> shifts) & 1).bool()  # [E, m]
        bits = _smooth_step(z, gamma).unsqueeze(2)  # [T, k, 1, m]
        r = torch.where(codes, bits, 1.0 - bits).prod(dim=-1)  # [T, k, E]
        weights = (torch.softmax(selector_logits, dim=-1).unsqueeze(-1) * r).sum(dim=1)
        return weights, weights > 0


class MoE(nn.Module):
    """Gate, then every expert on its tokens; outputs weighted by the gate and summed per token."""

    def __init__(self, config: EvoMoEGPTConfig, spec: dict):
        super().__init__()
        self.gate = Gate(config, spec)
        self.experts = nn.ModuleList(
            MLP(config.hidden_size, config.moe_intermediate_size) for _ in range(config.num_experts)
        )

    def forward(self, x: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        batch, seq, hidden = x.shape
        tokens = x.reshape(-1, hidden)
        weights, routing_map = self.gate(tokens, input_ids.reshape(-1))
        output = torch.zeros_like(tokens)
        for index, expert in enumerate(self.experts):
            rows = routing_map[:, index].nonzero(as_tuple=True)[0]
            if rows.numel():
                scaled = expert(tokens[rows]) * weights[rows, index].unsqueeze(-1).to(tokens.dtype)
                output.index_add_(0, rows, scaled)
        return output.view(batch, seq, hidden)


class Attention(nn.Module):
    """Causal self-attention; the fused QKV weight keeps megatron's layout (q, k, v per head)."""

    def __init__(self, config: EvoMoEGPTConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=False)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        batch, seq, hidden = x.shape
        qkv = self.qkv(x).view(batch, seq, self.num_heads, 3 * self.head_dim)
        q, k, v = (t.transpose(1, 2) for t in qkv.split(self.head_dim, dim=-1))  # [b, n, s, d]
        context = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None, scale=1.0 / math.sqrt(self.head_dim)
        )
        return self.proj(context.transpose(1, 2).reshape(batch, seq, hidden))


class Block(nn.Module):
    """Pre-LN: x + attn(ln1(x)), then + ffn(ln2(x)) (dense MLP or MoE)."""

    def __init__(self, config: EvoMoEGPTConfig, layer_index: int):
        super().__init__()
        eps = config.layer_norm_epsilon
        self.ln1 = nn.LayerNorm(config.hidden_size, eps=eps)
        self.attn = Attention(config)
        self.ln2 = nn.LayerNorm(config.hidden_size, eps=eps)
        layer_type = config.mlp_types[layer_index]
        self.is_moe = layer_type == "moe"
        if self.is_moe:
            self.mlp = MoE(config, config.moe_gates[layer_index])
        else:  # "dense", or "shared": an MoE layer still in EvoMoE's stage 1 (one shared expert)
            ffn = config.moe_intermediate_size if layer_type == "shared" else config.intermediate_size
            self.mlp = MLP(config.hidden_size, ffn)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor], input_ids: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), mask)
        h = self.ln2(x)
        return x + (self.mlp(h, input_ids) if self.is_moe else self.mlp(h))


class EvoMoEGPTPreTrainedModel(PreTrainedModel):
    config_class = EvoMoEGPTConfig
    base_model_prefix = "transformer"
    _no_split_modules = ["Block"]

    def _init_weights(self, module: nn.Module) -> None:
        # Only for weights a directory lacks; exported directories hold all of them.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)


class EvoMoEGPTModel(EvoMoEGPTPreTrainedModel):
    """Embeddings (token + learned position), the layers and the final LayerNorm."""

    def __init__(self, config: EvoMoEGPTConfig):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.hidden_size)
        self.wpe = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.num_hidden_layers))
        self.ln_f = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.post_init()

    def get_input_embeddings(self):
        return self.wte

    def set_input_embeddings(self, value):
        self.wte = value

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``[b, s]`` ids (and an optional ``[b, s]`` 1/0 key mask) -> ``[b, s, h]`` hidden states."""
        seq = input_ids.shape[1]
        if seq > self.config.max_position_embeddings:
            raise ValueError(f"sequence of {seq} tokens is longer than max_position_embeddings "
                             f"({self.config.max_position_embeddings})")
        positions = torch.arange(seq, device=input_ids.device).unsqueeze(0)
        mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            # Padding (left or right): real tokens are numbered from 0 and attend only to real tokens;
            # every token attends to itself, so that no row of the softmax is empty.
            keep = attention_mask.bool()
            positions = (keep.long().cumsum(-1) - 1).clamp_min(0)
            causal = torch.ones(seq, seq, dtype=torch.bool, device=input_ids.device).tril()
            itself = torch.eye(seq, dtype=torch.bool, device=input_ids.device)
            mask = (causal & keep[:, None, None, :]) | itself  # [b, 1, s, s]; SDPA: True = may attend
        x = self.wte(input_ids) + self.wpe(positions)
        for layer in self.layers:
            x = layer(x, mask, input_ids)
        return self.ln_f(x)


class EvoMoEGPTForCausalLM(EvoMoEGPTPreTrainedModel, GenerationMixin):
    """Language-model logits over the (padded) vocabulary, from the input embedding matrix."""

    def __init__(self, config: EvoMoEGPTConfig):
        super().__init__(config)
        self.transformer = EvoMoEGPTModel(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.transformer.wte

    def set_input_embeddings(self, value):
        self.transformer.wte = value

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, **kwargs):
        # No KV cache: every step sees the whole sequence.
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        hidden = self.transformer(input_ids, attention_mask)
        logits = F.linear(hidden, self.transformer.wte.weight)
        loss = None
        if labels is not None:  # HF convention: labels are the inputs, shifted here
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1), ignore_index=-100
            )
        return CausalLMOutputWithPast(loss=loss, logits=logits)
