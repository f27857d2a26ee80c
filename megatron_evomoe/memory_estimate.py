"""Per-GPU memory estimate of a training configuration: weights + gradients + optimizer + activations.

**Static (per parameter a rank holds)**, megatron-core DDP + Adam as configured here:

* weights: 2 bytes (bf16/fp16) or 4 (fp32);
* gradients: 4 bytes (megatron DDP's fp32 gradient buffer, ``grad_reduce_in_fp32``);
* optimizer: Adam moments m, v in fp32 (8 bytes) + fp32 master weights with bf16/fp16 (4 bytes);
  with ``--use-distributed-optimizer`` divided by the data-parallel size of the parameter (dense:
  DP; experts: the expert-data-parallel size world / (EP x ETP x PP)).

So 18 bytes/param with bf16 (Megatron-LM's figure), 16 with fp32.

**Activations** (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
Models", Table 2 / eq. 1-2, written for 16-bit activations; n = s x b tokens of a micro-batch):

* attention block incl. its two layer norms: 15 n h bytes (QKV input, Q, K, V, softmax output
  with flash attention instead of the 5 a s^2 b score term, projection input, dropout mask, LN
  inputs); the score term 5 a s^2 b is added without fused attention (CPU);
* dense FFN: n (3 h + 4 f) (fc1 input, GeLU input and output, dropout mask) = 19 n h at f = 4h;
* MoE FFN with k experts per token: n (3 h + 13 E) for router input, fp32 logits/probabilities
  and routing map, plus per (token, expert) pair k n (2 h + 6 f_e + 20): the permuted token, fc1
  output, GeLU output and its prob-scaled copy (megatron's expert MLP scales the intermediate),
  and int64 dispatch/combine indices + fp32 prob. Top-1 at f_e = 4h: ~29 n h.

With TP and sequence parallelism every term is divided by TP (Korthikanti eq. 2; MoE needs SP);
with EP, balanced routing gives each rank its share of the pairs (the same per-rank figure). fp32
activations double the 16-bit figures. With 1F1B pipelining the first stage keeps min(PP, m)
micro-batches in flight (stage i: min(PP - i, m)); without PP one. Full recomputation keeps only
each layer's input (2 n h / TP) plus one layer's activations during its backward. The first stage
adds the embedding output (3 n h), the last the logits (2 bytes bf16 + 4 bytes fp32 softmax per
vocabulary entry per token, / TP).

EvoMoE: right after T_S the DTS gate at tau = 2 keeps nearly every expert (g' ~ 1/E > 0.001), so the
MoE layers briefly see k = E pairs per token; the estimate reports that peak beside the steady
top-k figure. Not included: CUDA context (~0.5-1 GB), allocator fragmentation, communication
buffers, the dispatcher's gathered tokens; keep 10-20% headroom.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional


@dataclass(frozen=True)
class ActivationShape:
    """What activation memory depends on (one micro-batch)."""

    seq_length: int
    micro_batch_size: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    tensor_parallel: int = 1
    bytes_per_value: int = 2
    fused_attention: bool = True

    @property
    def tokens(self) -> int:
        return self.seq_length * self.micro_batch_size

    def scale(self) -> float:
        """fp32 activations double the 16-bit figures; TP (+ SP) divides everything."""
        return (self.bytes_per_value / 2.0) / self.tensor_parallel


def attention_block_bytes(shape: ActivationShape) -> float:
    """Attention + both layer norms of one layer: 15 n h (+ 5 a s^2 b without fused attention)."""
    n, h = shape.tokens, shape.hidden_size
    scores = 0 if shape.fused_attention else 5 * shape.num_attention_heads * shape.seq_length**2 * shape.micro_batch_size
    return (15 * n * h + scores) * shape.scale()


def dense_ffn_bytes(shape: ActivationShape) -> float:
    """n (3 h + 4 f): 19 n h at f = 4 h."""
    n = shape.tokens
    return n * (3 * shape.hidden_size + 4 * shape.ffn_hidden_size) * shape.scale()


def moe_ffn_bytes(shape: ActivationShape, num_experts: int, moe_ffn_hidden_size: int, experts_per_token: float) -> float:
    """n (3 h + 13 E) + k n (2 h + 6 f_e + 20) (see the module docstring)."""
    n, h = shape.tokens, shape.hidden_size
    per_token = 3 * h + 13 * num_experts
    per_pair = 2 * h + 6 * moe_ffn_hidden_size + 20
    return n * (per_token + experts_per_token * per_pair) * shape.scale()


def in_flight_microbatches(stage: int, pipeline_parallel: int, num_microbatches: int) -> int:
    """Micro-batches whose activations stage ``stage`` holds at once under 1F1B (1 without PP)."""
    if pipeline_parallel == 1:
        return 1
    return max(1, min(pipeline_parallel - stage, num_microbatches))


def stage_activation_bytes(
    shape: ActivationShape,
    moe_pattern: List[bool],
    num_experts: int,
    moe_ffn_hidden_size: int,
    experts_per_token: float,
    in_flight: int,
    first_stage: bool,
    last_stage: bool,
    vocab_size: int,
    recompute: Optional[str] = None,
) -> float:
    """Activation bytes of one pipeline stage holding the layers ``moe_pattern`` (True: MoE)."""
    layers = [
        attention_block_bytes(shape)
        + (moe_ffn_bytes(shape, num_experts, moe_ffn_hidden_size, experts_per_token) if is_moe else dense_ffn_bytes(shape))
        for is_moe in moe_pattern
    ]
    if recompute == "full":
        kept = 2 * shape.tokens * shape.hidden_size * shape.scale()
        per_microbatch = kept * len(layers)
        extra_one_layer = max(layers, default=0.0)
    else:
        per_microbatch = sum(layers)
        extra_one_layer = 0.0
    n, h = shape.tokens, shape.hidden_size
    if first_stage:
        per_microbatch += 3 * n * h * shape.scale()
    total = per_microbatch * in_flight + extra_one_layer
    if last_stage:
        total += (2 + 4) * n * vocab_size / shape.tensor_parallel + 2 * n * h * shape.scale()
    return total


@dataclass(frozen=True)
class StaticBytes:
    """Bytes per parameter of weights, gradients and optimizer state (before ZeRO-style sharding)."""

    weights: int
    gradients: int
    optimizer: int


def static_bytes_per_param(mixed_precision: bool) -> StaticBytes:
    """bf16/fp16: 2 + 4 + (4 master + 8 Adam) = 18; fp32: 4 + 4 + 8 = 16."""
    if mixed_precision:
        return StaticBytes(weights=2, gradients=4, optimizer=12)
    return StaticBytes(weights=4, gradients=4, optimizer=8)


@dataclass
class RankMemory:
    """The estimate for one rank (bytes)."""

    dense_params: float
    expert_params: float
    weights: float
    gradients: float
    optimizer: float
    activations: float
    activations_peak: float

    @property
    def static(self) -> float:
        return self.weights + self.gradients + self.optimizer

    @property
    def total(self) -> float:
        return self.static + self.activations

    @property
    def total_peak(self) -> float:
        return self.static + self.activations_peak


def rank_static_bytes(
    dense_params: float,
    expert_params: float,
    mixed_precision: bool,
    distributed_optimizer: bool,
    data_parallel: int,
    expert_data_parallel: int,
) -> tuple[float, float, float]:
    """(weights, gradients, optimizer) bytes of a rank holding these parameters."""
    per = static_bytes_per_param(mixed_precision)
    params = dense_params + expert_params
    if distributed_optimizer:
        optimizer = per.optimizer * (dense_params / data_parallel + expert_params / expert_data_parallel)
    else:
        optimizer = per.optimizer * params
    return per.weights * params, per.gradients * params, optimizer
