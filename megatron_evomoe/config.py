"""Configuration dataclasses: the validated result of the command line.

``ModelConfig`` *is* megatron-core's ``TransformerConfig`` (a subclass), extended by the options of
this repository's MoE layer, so one object travels from the flags to every megatron module and to
our routers and dispatchers. The other dataclasses hold what megatron-core has no place for
(training loop, EvoMoE phases, router hyper-parameters). Flags are defined in ``arguments.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from megatron.core.transformer.transformer_config import TransformerConfig

# Defined beside the dispatchers (importable without megatron-core); re-exported here.
from megatron_evomoe.moe.dispatch.options import DISPATCHER_TYPES, DispatchOptions  # noqa: F401

ROUTER_TYPES = ("switch", "gshard", "base", "hash", "stablemoe", "dselectk", "dts")

# The aux-loss coefficient each router's paper uses when --moe-aux-loss-coeff is not given.
DEFAULT_AUX_LOSS_COEFF = {
    "switch": 0.01,  # Fedus et al. 2021
    "gshard": 0.01,  # Lepikhin et al. 2020 (as in fairseq/megatron)
    "base": 0.0,  # BASE layers balance by construction: no aux loss
    "hash": 0.0,  # fixed routing: nothing to balance
    "stablemoe": 0.3,  # Dai et al. 2022, balance loss alpha
    "dselectk": 0.0,  # DSelect-k has an entropy regulariser instead (dselectk_entropy_coeff)
    "dts": 0.1,  # EvoMoE eq. 10, alpha = 0.1
}

def default_grouped_gemm(on_gpu: bool, half_precision: bool) -> bool:
    """``--moe-grouped-gemm`` when the flag is not given: on where the grouped GEMM measured faster
    than the per-expert loop (docs/measurement.md, "Grouped GEMM or the per-expert loop").

    fp32 on the CPU: 0.86-1.00x the loop's forward+backward time in all 12 configurations measured
    (4-64 experts, 512-8192 tokens), so on. bf16 on the CPU: 1.01-1.20x, so off. GPUs were not
    measured here (none was available): there Megatron-LM's default, off, stands.
    """
    return not on_gpu and not half_precision


@dataclass
class RouterOptions:
    """Hyper-parameters of the routers; each field names the router that reads it."""

    router_type: str = "switch"
    """Which router (``--moe-router-type``)."""
    aux_loss_coeff: float = 0.01
    """Coefficient of the router's balance loss (resolved from DEFAULT_AUX_LOSS_COEFF when unset)."""
    jitter_eps: float = 0.0
    """switch: multiplicative jitter noise U(1-eps, 1+eps) on the router input during training
    (the flag's default is the Switch paper's 0.01, ``routers.switch.SWITCH_JITTER_EPS``)."""
    gshard_random_routing: bool = True
    """gshard: in training, send a token to its 2nd expert only if 2 * g2 > u, u ~ U(0, 1), with g2
    normalised over the top-2 pair (GShard Algorithm 1; on by default)."""
    base_auction_epsilon: float = 1e-4
    """base: the auction's bid increment relative to the score range; the assignment's total score
    is within T * epsilon * range of the optimum (smaller is more exact, may take more rounds)."""
    base_auction_max_rounds: int = 10000
    """base: cap on bidding rounds; afterwards the remaining tokens fill free slots greedily."""
    hash_type: str = "random"
    """hash: 'random' (a fixed random token->expert table per layer) or 'balanced' (built from
    training-data token frequencies, most frequent tokens first into the emptiest expert)."""
    hash_frequency_samples: int = 2000
    """hash: training samples read to count token frequencies for the balanced hash."""
    stablemoe_stage1_iters: int = 0
    """stablemoe: iterations of stage 1 (routing learned and distilled); frozen afterwards."""
    stablemoe_distill_coeff: float = 0.3
    """stablemoe: weight of the distillation cross-entropy (mean over tokens)."""
    stablemoe_distill_dim: int = 50
    """stablemoe: size of the lightweight distilled router's word embedding."""
    dselectk_gamma: float = 1.0
    """dselectk: width of the smooth-step function (its polynomial region is [-gamma/2, gamma/2])."""
    dselectk_entropy_coeff: float = 1e-3
    """dselectk: weight of the selectors' entropy (mean over tokens) that drives them to be binary.
    The official implementation uses 1e-6 on a *sum* over the batch; the flag's default is that
    scale, 1e-6 x tokens per micro-batch (``routers.dselectk.official_entropy_coeff``)."""


@dataclass
class EvoMoEOptions:
    """EvoMoE phases (paper sec. III): shared expert -> diversify -> DTS gate -> Top-1."""

    shared_expert_iters: int = 0
    """T_S: iterations that train the single shared expert before experts are spawned. This and
    ``dts_anneal_iters`` / ``dts_top1_iter`` hold resolved values; their defaults (the paper's
    fractions of --train-iters) come from ``moe.schedule.resolve_evomoe_phases`` alone."""
    mask_ratio: float = 0.2
    """Fraction of each spawned expert's weights set to zero by the diversify mask."""
    mask_granularity: str = "element"
    """'element' masks individual weights; 'neuron' masks whole hidden units of the FFN."""
    mask_rescale: bool = False
    """Divide the kept weights by (1 - mask_ratio) at diversify so that a spawned expert's output
    keeps the shared expert's scale in expectation (``moe/diversify.py``). Off by default: the
    paper masks without rescaling."""
    optimizer_state: str = "masked_copy"
    """Adam moments of spawned experts at T_S: 'masked_copy' of the shared expert's (default) or
    'reset' to zero. megatron keeps one Adam step for all parameters, so after a reset the bias
    correction does not restart and the first updates of the spawned experts are larger than a
    fresh Adam's; masked_copy continues the shared expert's statistics, consistent with its weights."""
    expert_diversify: bool = True
    """False = ablation 'w/o expert-diversify': random experts and the DTS gate from iteration 0."""
    gate_sparsify: bool = True
    """False = ablation 'w/o gate-sparsify': after diversify, the Switch Top-1 gate instead of DTS."""
    dts_threshold: float = 0.001
    """c: experts whose gate weight is at most c are not computed for the token."""
    dts_max_temperature: float = 2.0
    dts_min_temperature: float = 0.3
    dts_anneal_iters: int = 0
    """Iterations over which tau goes from max to min, starting at T_S."""
    dts_temperature_schedule: str = "linear"
    """'linear', 'exponential' or 'cosine'."""
    dts_top1_iter: int = 0
    """T_D: from here the gate is Top-1 (T_S + dts_anneal_iters unless --dts-top1-iter)."""
    dts_top1_noise: bool = False
    """Keep gumbel noise in the Top-1 phase (training only), as Algorithm 2 does; off by default
    (docs/routers.md says why)."""


@dataclass
class ModelConfig(TransformerConfig):
    """megatron-core's TransformerConfig plus this repository's MoE options."""

    moe_router: RouterOptions = field(default_factory=RouterOptions)
    evomoe: EvoMoEOptions = field(default_factory=EvoMoEOptions)
    moe_dispatch: DispatchOptions = field(default_factory=DispatchOptions)
    moe_recompute: str = "none"
    """'none' or 'moe_aware' (save layer input and all-to-all boundaries, recompute the rest)."""
    vocab_size: int = 0
    """Padded vocabulary size."""
    max_position_embeddings: int = 0
    """Learned absolute position embeddings (the paper's GPT/RoBERTa)."""
    seed: int = 1234
    """Seed of the layout-independent parameter initialisation."""


@dataclass
class LRScheduleConfig:
    """Learning-rate and weight-decay schedule, in iterations."""

    lr: float = 1e-4
    min_lr: float = 0.0
    decay_style: str = "linear"
    """'constant', 'linear', 'cosine' or 'polynomial' (fairseq's polynomial_decay)."""
    decay_power: float = 1.0
    """Exponent of the polynomial decay (1.0 = linear)."""
    warmup_iters: int = 0
    decay_iters: Optional[int] = None
    """Iterations to decay over (default: train_iters)."""
    weight_decay: float = 0.01
    override_opt_param_scheduler: bool = False
    """On resume, take the schedule from these values, not the checkpoint (Megatron-LM's flag)."""
    use_checkpoint_opt_param_scheduler: bool = False
    """On resume, keep the checkpoint's schedule. With neither flag, a difference is an error."""


@dataclass
class TrainingConfig:
    """The training loop: batch arithmetic, schedule, evaluation, checkpoints, logging."""

    train_iters: int = 100
    micro_batch_size: int = 1
    global_batch_size: int = 1
    seq_length: int = 128
    eval_interval: int = 1000
    eval_iters: int = 10
    eval_as_served: bool = False
    """Also evaluate with the final routing state (logged as val_served_loss / val_served_ppl)."""
    log_interval: int = 10
    save: Optional[str] = None
    save_interval: Optional[int] = None
    load: Optional[str] = None
    finetune: bool = False
    """Load only the model weights from --load and start at iteration 0."""
    no_load_optim: bool = False
    no_load_rng: bool = False
    ckpt_step: Optional[int] = None
    """Load this iteration from ``load`` instead of the tracker's (Megatron-LM's --ckpt-step)."""
    save_retain: Optional[int] = None
    """Keep only the newest N checkpoints in ``save`` (None: all)."""
    allow_nonfinite_load: bool = False
    """Load a checkpoint holding NaN/inf with a warning instead of refusing it."""
    tensorboard_dir: Optional[str] = None
    log_json: Optional[str] = None
    log_routing_probe: int = 0
    """Validation tokens whose per-layer expert is logged at each log interval (0: off)."""
    log_moe_diagnostics: bool = False
    """Log expert similarity, gate entropy / margin, routing fluctuation and the loss jump at each
    routing phase change (``training/moe_diagnostics.py``)."""
    seed: int = 1234
    max_skipped_iters: int = 10
    """Consecutive non-finite iterations after which training stops with an error (checkpoint_keeper.py)."""
    exit_interval: Optional[int] = None
    """Stop (after saving) when the iteration is a multiple of this."""
    exit_signal_handler: bool = False
    """On SIGTERM, save at the end of the current step and exit 0 (all ranks agree on the step)."""
    dry_run: bool = False
    """Validate the configuration, print model size and memory estimate, do not train."""
    lr_schedule: LRScheduleConfig = field(default_factory=LRScheduleConfig)

    def num_microbatches(self, data_parallel_size: int) -> int:
        """Micro-batches each data-parallel rank runs per optimizer step."""
        return self.global_batch_size // (self.micro_batch_size * data_parallel_size)
