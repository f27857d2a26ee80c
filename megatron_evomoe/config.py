"""Configuration dataclasses: the validated result of the command line.

``ModelConfig`` *is* megatron-core's ``TransformerConfig`` (a subclass), extended by the options of
this repository's MoE layer, so one object travels from the flags to every megatron module and to
our routers and dispatchers. The other dataclasses hold what megatron-core has no place for
(training loop). A router's hyper-parameters are its own ``Config`` (``moe/routers/<name>.py``),
held in ``ModelConfig.moe_router``. Flags are defined in ``arguments.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from megatron.core.transformer.transformer_config import TransformerConfig

# Defined beside the dispatchers (importable without megatron-core); re-exported here.
from megatron_evomoe.moe.dispatch.options import DispatchOptions  # noqa: F401
from megatron_evomoe.moe.router_config import RouterConfig


def default_grouped_gemm(on_gpu: bool, half_precision: bool) -> bool:
    """``--moe-grouped-gemm`` when the flag is not given: on where the grouped GEMM measured faster
    than the per-expert loop (docs/measurement.md, "Grouped GEMM or the per-expert loop").

    fp32 on the CPU: 0.86-1.00x the loop's forward+backward time in all 12 configurations measured
    (4-64 experts, 512-8192 tokens), so on. bf16 on the CPU: 1.01-1.20x, so off. GPUs were not
    measured here (none was available): there Megatron-LM's default, off, stands.
    """
    return not on_gpu and not half_precision


@dataclass
class ModelConfig(TransformerConfig):
    """megatron-core's TransformerConfig plus this repository's MoE options."""

    moe_router_type: str = "switch"
    """Which router (``--moe-router-type``, a name of the registry in ``moe/routers/__init__.py``)."""
    moe_router: RouterConfig = field(default_factory=RouterConfig)
    """That router's ``Config`` (``router_config_class(moe_router_type)``), resolved for the run: its
    hyper-parameters, defaults and phases. ``run_config.build_run_config`` sets both fields."""
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
    num_workers: int = 0
    """DataLoader worker processes (--num-workers)."""
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
    exit_duration_in_mins: Optional[float] = None
    """Stop (after saving) once training has run this many minutes (all ranks agree on the step)."""
    moe_per_layer_logging: bool = False
    """Log each MoE layer's auxiliary losses, not only their mean over MoE layers."""
    dry_run: bool = False
    """Validate the configuration, print model size and memory estimate, do not train."""
    lr_schedule: LRScheduleConfig = field(default_factory=LRScheduleConfig)

    def num_microbatches(self, data_parallel_size: int) -> int:
        """Micro-batches each data-parallel rank runs per optimizer step."""
        return self.global_batch_size // (self.micro_batch_size * data_parallel_size)
