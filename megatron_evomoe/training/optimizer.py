"""megatron-core's optimizer (Adam, fp32 master weights under bf16/fp16) and LR schedule.

The step is split so that a non-finite gradient norm skips the update (like Megatron-LM's skipped
iterations) instead of corrupting the weights: prepare grads -> global norm -> check -> clip ->
step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional

import torch
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer import optimizer as megatron_optimizer_module
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from megatron_evomoe import compat
from megatron_evomoe.config import LRScheduleConfig


def build_optimizer(config: OptimizerConfig, model_chunks: List[torch.nn.Module]):
    """megatron's (chained dense + expert) optimizer for DDP-wrapped ``model_chunks``."""
    with compat.cuda_type_names():
        return get_megatron_optimizer(config, model_chunks)


def inner_optimizers(optimizer) -> list:
    """The dense and expert optimizers inside megatron's ChainedOptimizer (or the one optimizer)."""
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


@dataclass
class StepOutcome:
    """Result of one optimizer step: whether weights changed, and the global gradient norm."""

    applied: bool
    grad_norm: Optional[float]


@torch.no_grad()
def optimizer_step(optimizer, clip_grad: float) -> StepOutcome:
    """Unscale/copy grads, compute the global norm, skip on inf/nan, clip, update."""
    found_inf = optimizer.prepare_grads()
    if found_inf:
        return StepOutcome(False, None)
    grad_norm = optimizer.get_grad_norm()
    grad_norm = float(grad_norm) if grad_norm is not None else 0.0
    if not math.isfinite(grad_norm):
        return StepOutcome(False, grad_norm)
    if clip_grad > 0:
        for inner in inner_optimizers(optimizer):
            params = inner.get_parameters()
            if params:
                megatron_optimizer_module.clip_grad_by_total_norm_fp32(
                    params, max_norm=clip_grad, total_norm=grad_norm
                )
    optimizer.step_with_ready_grads()
    return StepOutcome(True, grad_norm)


class ScheduleMismatch(ValueError):
    """A resumed run's LR schedule flags differ from the checkpoint's."""


class LRScheduler(OptimizerParamScheduler):
    """megatron's OptimizerParamScheduler (counted in iterations) plus polynomial decay.

    ``polynomial`` is fairseq's ``polynomial_decay`` used by the EvoMoE paper:
    lr = (max_lr - min_lr) * (1 - progress) ** power + min_lr after linear warm-up.

    On resume, as in Megatron-LM: a schedule value that differs from the checkpoint's is an error,
    unless ``--override-opt_param-scheduler`` (take the flags) or
    ``--use-checkpoint-opt_param-scheduler`` (keep the checkpoint's). The position in the schedule
    always comes from the checkpoint.
    """

    def __init__(self, optimizer, schedule: LRScheduleConfig, train_iters: int):
        decay_iters = schedule.decay_iters or train_iters
        self.polynomial_power = schedule.decay_power
        self.requested_style = schedule.decay_style
        self._flags = {
            "learning rate": "--lr",
            "minimum learning rate": "--min-lr",
            "warmup iterations": "--lr-warmup-iters",
            "total number of iterations": "--lr-decay-iters" if schedule.decay_iters else "--train-iters",
            "learning rate decay style": "--lr-decay-style",
            "polynomial decay power": "--lr-decay-power",
            "start weight decay": "--weight-decay",
            "end weight decay": "--weight-decay",
            "total number of weight decay iterations": "--train-iters",
        }
        super().__init__(
            optimizer,
            init_lr=0.0,
            max_lr=schedule.lr,
            min_lr=schedule.min_lr,
            lr_warmup_steps=schedule.warmup_iters,
            lr_decay_steps=max(decay_iters, schedule.warmup_iters + 1),
            lr_decay_style="linear" if schedule.decay_style == "polynomial" else schedule.decay_style,
            start_wd=schedule.weight_decay,
            end_wd=schedule.weight_decay,
            wd_incr_steps=max(train_iters, 1),
            wd_incr_style="constant",
            override_opt_param_scheduler=schedule.override_opt_param_scheduler,
            use_checkpoint_opt_param_scheduler=schedule.use_checkpoint_opt_param_scheduler,
        )

    def _check_and_set(self, cls_value, sd_value, name: str):
        if cls_value != sd_value and not (self.override_opt_param_scheduler or self.use_checkpoint_opt_param_scheduler):
            flag = self._flags.get(name, name)
            raise ScheduleMismatch(
                f"{flag}: the checkpoint's LR schedule has {name} {sd_value}, this run {cls_value}; pass "
                "--override-opt_param-scheduler to use this run's or --use-checkpoint-opt_param-scheduler "
                "to keep the checkpoint's"
            )
        return super()._check_and_set(cls_value, sd_value, name)

    def state_dict(self) -> dict:
        state = super().state_dict()
        state.update(requested_decay_style=self.requested_style, polynomial_power=self.polynomial_power)
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        if "requested_decay_style" in state_dict:  # absent from checkpoints of older versions
            self.requested_style = self._check_and_set(
                self.requested_style, state_dict["requested_decay_style"], "learning rate decay style"
            )
            if self.requested_style == "polynomial":
                self.polynomial_power = self._check_and_set(
                    self.polynomial_power, state_dict["polynomial_power"], "polynomial decay power"
                )
        super().load_state_dict(state_dict)
        # megatron copies --lr/--min-lr into every param group, and get_lr prefers those: they must
        # follow the schedule in force (the checkpoint's with --use-checkpoint-opt_param-scheduler).
        for group in self.optimizer.param_groups:
            group["max_lr"], group["min_lr"] = self.max_lr, self.min_lr
        self.step(0)

    def get_lr(self, param_group: dict) -> float:
        if self.requested_style != "polynomial":
            return super().get_lr(param_group)
        max_lr = param_group.get("max_lr", self.max_lr)
        min_lr = param_group.get("min_lr", self.min_lr)
        if self.lr_warmup_steps > 0 and self.num_steps <= self.lr_warmup_steps:
            return max_lr * self.num_steps / self.lr_warmup_steps
        if self.num_steps > self.lr_decay_steps:
            return min_lr
        progress = (self.num_steps - self.lr_warmup_steps) / (self.lr_decay_steps - self.lr_warmup_steps)
        return (max_lr - min_lr) * (1.0 - progress) ** self.polynomial_power + min_lr
