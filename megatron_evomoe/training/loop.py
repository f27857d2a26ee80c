"""``pretrain``: the training loop on megatron-core's pipeline schedules.

One step: the phase controller sets routing state -> megatron's forward/backward function runs the
micro-batches (no pipelining, or 1F1B across pipeline stages) -> gradients are finalised (DP
all-reduce, SP/embedding reductions) -> a checked optimizer step -> LR schedule -> routing statistics
and FLOPs -> logs, evaluation, checkpoints. A model family plugs in through :class:`Task`.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, finalize_model_grads
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.transformer.module import Float16Module
from torch.utils.data import Dataset

from megatron_evomoe.device import batch_to_device, device_is_cuda
from megatron_evomoe.moe.evolution import PhaseController, describe_schedule, routing_schedule
from megatron_evomoe.moe.router_config import RoutingState
from megatron_evomoe.moe.routers import router_class
from megatron_evomoe.progress import ProgressClock
from megatron_evomoe.run_config import RunConfig, architecture_meta, precision_name
from megatron_evomoe.training import checkpointing
from megatron_evomoe.training.checkpoint_keeper import CheckpointKeeper
from megatron_evomoe.training.checkpointing import TrainState
from megatron_evomoe.training.collectives import sum_over_world
from megatron_evomoe.training.data_loading import build_iterator
from megatron_evomoe.training.exit_duration import ExitDuration, exit_duration
from megatron_evomoe.training.exit_signal import ExitSignalHandler, exit_signal_handler
from megatron_evomoe.training.flops import training_step_flops
from megatron_evomoe.training.interval_log import IntervalLog, console_line, log_record
from megatron_evomoe.training.log_writer import MetricsWriter, print_rank0
from megatron_evomoe.training.megatron_lm_args import megatron_lm_common
from megatron_evomoe.training.moe_diagnostics import build_moe_diagnostics, without_rng_side_effects
from megatron_evomoe.training.optimizer import LRScheduler, StepOutcome, build_optimizer, optimizer_step
from megatron_evomoe.training.optimizer_state import apply_parameter_updates
from megatron_evomoe.training.router_data import prepare_routers_from_data
from megatron_evomoe.training.routing_probe import build_routing_probe
from megatron_evomoe.training.routing_metrics import StepRouting, collect_step_routing
from megatron_evomoe.training.tensorboard_tags import tag_context


CONTROLLER_STATE = "phase_controller"
"""The checkpoint's ``extra`` entry holding :meth:`PhaseController.state_dict`."""


class TrainingStopped(RuntimeError):
    """Training cannot continue (non-finite steps or state); the message names the last good checkpoint."""


@dataclass
class Task:
    """What a model family contributes to the loop.

    Attributes:
        name: for logs.
        build_model: ``(model_config, pre_process, post_process) -> MegatronModule`` for this stage.
        build_datasets: ``(run, (train, valid, test) sample counts) -> (train, valid, test)`` datasets.
        forward_step: ``(batch, model) -> (output_tensor, loss_func)``; ``loss_func(output)`` returns
            ``(loss_sum, num_tokens, {"name": tensor([sum, count]), ...})`` as megatron's schedule wants.
        main_metric: the reported key whose mean is the evaluation loss (perplexity = exp of it).
    """

    name: str
    build_model: Callable
    build_datasets: Callable
    forward_step: Callable
    main_metric: str = "lm loss"


@dataclass
class TrainingSession:
    """The objects of a run, for callers that drive the loop themselves (tests, fine-tuning)."""

    run: RunConfig
    model: List[torch.nn.Module]
    optimizer: object
    scheduler: LRScheduler
    controller: PhaseController
    state: TrainState
    keeper: CheckpointKeeper = field(default_factory=lambda: CheckpointKeeper(None))


# ---------------------------------------------------------------------------------- model setup
def build_model_chunks(run: RunConfig, task: Task) -> List[torch.nn.Module]:
    """This rank's pipeline stage of the model, in Float16Module (bf16/fp16) and megatron DDP."""
    config = run.model
    model = task.build_model(
        config,
        parallel_state.is_pipeline_first_stage(),
        parallel_state.is_pipeline_last_stage(),
    )
    if device_is_cuda():
        model.cuda(torch.cuda.current_device())
    if config.fp16 or config.bf16:
        model = Float16Module(config, model)
    ddp = DistributedDataParallel(config=config, ddp_config=run.ddp, module=model)
    return [ddp]


def setup_session(run: RunConfig, task: Task) -> TrainingSession:
    """Build model, optimizer, scheduler and controller; load ``--load`` if given."""
    model = build_model_chunks(run, task)
    optimizer = build_optimizer(run.optimizer, model)
    scheduler = LRScheduler(optimizer, run.training.lr_schedule, run.training.train_iters)
    config = run.model
    config.no_sync_func = model[0].no_sync
    config.finalize_model_grads_func = finalize_model_grads
    config.grad_scale_func = optimizer.scale_loss
    controller = PhaseController(config)
    state = TrainState()
    training = run.training
    if training.load and checkpointing.has_checkpoint(training.load):
        state = load(run, model, optimizer, scheduler, controller)
    elif training.load:
        if training.finetune:
            raise checkpointing.CheckpointError(f"--finetune: no checkpoint in --load {training.load}")
        print_rank0(f"no checkpoint in {training.load} ({checkpointing.TRACKER_FILE} is missing): training from scratch")
    loaded_here = training.load and training.save and os.path.realpath(training.load) == os.path.realpath(training.save)
    keeper = CheckpointKeeper(training.save, training.save_retain, state.iteration if loaded_here else None)
    return TrainingSession(run, model, optimizer, scheduler, controller, state, keeper)


def run_meta(run: RunConfig) -> dict:
    """What a checkpoint records about the run (the architecture keys are checked on load)."""
    meta = architecture_meta(run.model)
    meta["precision"] = precision_name(run.model)
    if run.bert is not None:  # BERT: the pooler and NSP/SOP head exist only with it
        meta["bert_binary_head"] = run.bert.binary_head
    meta["world_size"] = run.world_size
    meta["layout"] = vars(run.layout)
    if run.model.num_moe_experts:
        meta["routing_schedule"] = routing_schedule(run.model)
    return meta


def load(run: RunConfig, model, optimizer, scheduler, controller) -> TrainState:
    """Resume (or, with --finetune, take only the weights) from ``--load``."""
    training = run.training
    finetune = training.finetune
    meta = run_meta(run)
    state, extra = checkpointing.load_checkpoint(
        training.load,
        model,
        optimizer=None if (finetune or training.no_load_optim) else optimizer,
        scheduler=None if finetune else scheduler,
        load_rng=not (finetune or training.no_load_rng),
        run_meta=meta,
        # The optimizer's state differs between fp32 and bf16/fp16 (master weights): compared when loaded.
        meta_keys=list(architecture_meta(run.model)) + ["bert_binary_head"]
        + ([] if (finetune or training.no_load_optim) else ["precision"]),
        iteration=training.ckpt_step,
        allow_nonfinite=training.allow_nonfinite_load,
    )
    if finetune or training.no_load_optim:
        # The optimizer was built from the initial weights: its fp32 master copies (bf16/fp16) must
        # take the loaded ones, or the first step would write the initial weights back.
        optimizer.reload_model_params()
    if finetune:
        return TrainState()
    controller.load_state_dict(extra.get(CONTROLLER_STATE))
    if training.no_load_optim:
        # Keep the LR schedule where it was even though the optimizer starts fresh.
        scheduler.step(0)
    print_rank0(f"loaded checkpoint of iteration {state.iteration} from {training.load}")
    return state


def checkpoint_routing_state(root: str) -> Optional[RoutingState]:
    """The routing state the newest checkpoint under ``root`` was trained with (None if unrecorded)."""
    try:
        path = os.path.join(checkpointing.checkpoint_dir(root, checkpointing.read_tracker(root)), checkpointing.META_FILE)
        with open(path) as handle:
            return RoutingState(**json.load(handle)["routing_state"])
    except (checkpointing.CheckpointError, OSError, ValueError, KeyError, TypeError):
        return None


def save(session: TrainingSession) -> None:
    """Checkpoint the session into ``--save``: as the latest one only if it is good (checkpoint_keeper.py).

    Raises TrainingStopped when the weights or optimizer state are non-finite.
    """
    outcome = _save(session)
    if outcome.nonfinite_tensor is not None and session.keeper.streak_start is None:
        raise TrainingStopped(
            f"non-finite values in {outcome.nonfinite_tensor} at iteration {session.state.iteration}; "
            f"stopping (state saved to {outcome.path} for inspection). {session.keeper.last_good_message()}"
        )


def _save(session: TrainingSession):
    meta = run_meta(session.run)
    if session.controller.applied_state is not None:
        meta["routing_state"] = asdict(session.controller.applied_state)

    def write(latest: bool) -> str:
        return checkpointing.save_checkpoint(
            session.run.training.save,
            session.state,
            session.model,
            session.optimizer,
            session.scheduler,
            extra={CONTROLLER_STATE: session.controller.state_dict()},
            run_meta=meta,
            common=megatron_lm_common(session.run, session.state),
            latest=latest,
        )

    outcome = session.keeper.save(session.state.iteration, write, session.model, session.optimizer)
    why = "" if outcome.good else (
        f" (not made latest: non-finite {outcome.nonfinite_tensor})" if outcome.nonfinite_tensor
        else " (not made latest: inside a non-finite streak)"
    )
    print_rank0(f"saved checkpoint {outcome.path}{why}")
    return outcome


def stop_for_nonfinite_steps(session: TrainingSession, consecutive_skips: int) -> TrainingStopped:
    """Save the state for inspection, un-make checkpoints from the streak on, and say what is left."""
    iteration = session.state.iteration
    saved = ""
    if session.run.training.save:
        saved = f" The state at the stop is in {_save(session).path}."
    demoted = session.keeper.demote_streak()
    if demoted:
        saved += f" Checkpoints from the start of the streak were renamed: {', '.join(demoted)}."
    first = iteration - consecutive_skips + 1
    span = f"iteration {first}" if first == iteration else f"iterations {first}-{iteration}"
    return TrainingStopped(
        f"{consecutive_skips} consecutive iterations had a non-finite loss or gradient norm ({span}); "
        f"stopping. {session.keeper.last_good_message()}{saved}"
    )


# -------------------------------------------------------------------------------------- a step
def advance_phase(session: TrainingSession, iteration: int) -> List[str]:
    """Put the model in step ``iteration``'s routing state; the optimizer's copy of any parameter
    a transition rewrote (EvoMoE's diversify) follows. Returns the transition's log lines."""
    transition = session.controller.before_step(iteration, session.model)
    apply_parameter_updates(session.optimizer, transition.updates)
    return transition.events


def _forward_step_func(task: Task):
    def forward_step(data_iterator, model):
        return task.forward_step(batch_to_device(next(data_iterator)), model)

    return forward_step


def run_microbatches(session: TrainingSession, task: Task, data_iterator, forward_only: bool) -> Dict[str, List[float]]:
    """Forward (and backward) over one global batch; returns ``{metric: [sum, count]}`` on all ranks."""
    run = session.run
    outputs = get_forward_backward_func()(
        forward_step_func=_forward_step_func(task),
        data_iterator=data_iterator,
        model=session.model,
        num_microbatches=run.num_microbatches,
        seq_length=run.training.seq_length,
        micro_batch_size=run.training.micro_batch_size,
        decoder_seq_length=run.training.seq_length,
        forward_only=forward_only,
    )
    return reduce_reported_metrics(outputs)


def reduce_reported_metrics(outputs: List[dict]) -> Dict[str, List[float]]:
    """Sum the ``[sum, count]`` pairs over micro-batches and data-parallel ranks, on every rank.

    Only the last pipeline stage holds losses and all its TP ranks hold the same ones, so only
    tensor-parallel rank 0 of the last stage contributes before the world all-reduce.
    """
    names = _agree_on_names(sorted({name for out in outputs for name in out}))
    local = torch.zeros(len(names), 2, dtype=torch.float64)
    contributes = parallel_state.is_pipeline_last_stage() and parallel_state.get_tensor_model_parallel_rank() == 0
    if contributes:
        for out in outputs:
            for i, name in enumerate(names):
                if name in out:
                    local[i] += out[name].detach().to("cpu", torch.float64)
    local = sum_over_world(local)
    return {name: local[i].tolist() for i, name in enumerate(names)}


def _agree_on_names(names: List[str]) -> List[str]:
    """Metric names from the last stage, known on every rank (other stages report none).

    Only pipeline-parallel runs need the exchange; then it is one small object all-gather per step.
    """
    if parallel_state.get_pipeline_model_parallel_world_size() == 1:
        return names
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, names)
    return sorted({name for ranks_names in gathered for name in ranks_names})


def metric_means(sums: Dict[str, List[float]]) -> Dict[str, float]:
    """``{name: sum / count}`` with the name in snake case (``lm loss`` -> ``lm_loss``)."""
    return {name.replace(" ", "_"): (s / c if c else float("nan")) for name, (s, c) in sums.items()}


def train_step(session: TrainingSession, task: Task, data_iterator) -> Tuple[Dict[str, float], Optional[float], bool]:
    """One optimizer step. Returns (metric means, grad norm, whether the update was applied)."""
    for chunk in session.model:
        chunk.zero_grad_buffer()
    session.optimizer.zero_grad()
    sums = run_microbatches(session, task, data_iterator, forward_only=False)
    means = metric_means(sums)
    if all(math.isfinite(v) for v in means.values()):
        outcome = optimizer_step(session.optimizer, session.run.optimizer.clip_grad)
    else:
        outcome = StepOutcome(False, None)  # a non-finite loss: skip the update
    applied = outcome.applied
    if applied:
        session.scheduler.step(1)
    return means, outcome.grad_norm, applied


def evaluate(session: TrainingSession, task: Task, valid_dataset: Dataset) -> Dict[str, float]:
    """Mean metrics over the first ``--eval-iters`` global batches of the validation set."""
    run = session.run
    for chunk in session.model:
        chunk.eval()
    iterator = build_iterator(
        valid_dataset, 0, run.training.micro_batch_size,
        parallel_state.get_data_parallel_rank(), run.data_parallel_size,
    )
    totals: Dict[str, List[float]] = {}
    with torch.no_grad():
        for _ in range(run.training.eval_iters):
            sums = run_microbatches(session, task, iterator, forward_only=True)
            for name, (s, c) in sums.items():
                acc = totals.setdefault(name, [0.0, 0.0])
                acc[0] += s
                acc[1] += c
    for chunk in session.model:
        chunk.train()
    means = metric_means(totals)
    key = task.main_metric.replace(" ", "_")
    result = {"val_loss": means.get(key, float("nan"))}
    result["val_ppl"] = math.exp(min(result["val_loss"], 50.0))
    for name, value in means.items():
        if name != key:
            result[f"val_{name}"] = value
    return result


def evaluate_as_served(session: TrainingSession, task: Task, valid_dataset: Dataset, current: Dict[str, float]) -> Dict[str, float]:
    """``val_served_loss`` / ``val_served_ppl``: the validation set scored in the final routing state.

    Where that routes like the current state (``PhaseController.serving_state``), the current
    values are the served ones; in EvoMoE's stage 1 there is no served model yet (nothing logged).
    """
    controller = session.controller
    iteration = session.state.iteration - 1
    served = controller.serving_state(iteration, session.run.training.train_iters)
    if served is None:
        if controller.in_shared_expert_stage(iteration):
            return {}
        return {"val_served_loss": current["val_loss"], "val_served_ppl": current["val_ppl"]}
    training_state = controller.applied_state or controller.routing_state(iteration)
    controller.apply_state(session.model, served)
    try:
        result = evaluate(session, task, valid_dataset)
    finally:
        controller.apply_state(session.model, training_state)
    return {"val_served_loss": result["val_loss"], "val_served_ppl": result["val_ppl"]}


def validation_loss(session: TrainingSession, task: Task, valid_dataset, interval: IntervalLog):
    """``() -> validation loss`` for measurements outside the evaluation schedule (None without
    validation data): its time is not training throughput, and it leaves the RNG as it found it."""
    if valid_dataset is None or session.run.training.eval_iters <= 0:
        return None

    def loss() -> float:
        start = time.time()
        value = evaluate(session, task, valid_dataset)["val_loss"]
        interval.start += time.time() - start
        return value

    return without_rng_side_effects(loss)


# -------------------------------------------------------------------------------------- pretrain
def step_flops(run: RunConfig, routing: StepRouting, routing_state) -> float:
    """FLOPs of one optimizer step from the tokens each MoE layer actually computed."""
    tokens = run.training.global_batch_size * run.training.seq_length
    gate = 0.0
    if run.model.num_moe_experts:
        gate = router_class(run.model.moe_router_type).gate_flops(run.model, routing_state)
    return training_step_flops(run.model, run.training.seq_length, tokens, routing.num_assignments, gate)


def pretrain(run: RunConfig, task: Task) -> TrainingSession:
    """Train ``task`` as configured by ``run`` (process groups must be initialised)."""
    time_limit = exit_duration(run.training.exit_duration_in_mins)  # the clock starts before set-up
    with exit_signal_handler(run.training.exit_signal_handler) as stop_signal:
        return _pretrain(run, task, stop_signal, time_limit)


def _pretrain(
    run: RunConfig, task: Task, stop_signal: Optional[ExitSignalHandler], time_limit: Optional[ExitDuration] = None
) -> TrainingSession:
    session = setup_session(run, task)
    training = run.training
    state = session.state
    num_samples = (
        training.train_iters * training.global_batch_size,
        (training.train_iters // training.eval_interval + 1) * training.eval_iters * training.global_batch_size,
        0,  # the loop never evaluates the test split
    )
    train_ds, valid_ds, _ = task.build_datasets(run, num_samples)
    if run.model.num_moe_experts and prepare_routers_from_data(session.model, train_ds, run.model.vocab_size):
        print_rank0("routers prepared from training-data token frequencies")
    dp_rank, dp_size = parallel_state.get_data_parallel_rank(), run.data_parallel_size
    train_iter = build_iterator(train_ds, state.consumed_samples, training.micro_batch_size, dp_rank, dp_size,
                                training.num_workers)
    writer = MetricsWriter(training.tensorboard_dir, training.log_json, tag_context(run, task.main_metric))
    probe = build_routing_probe(run, valid_ds)  # None unless --log-routing-probe N
    loss_names = router_class(run.model.moe_router_type).loss_names(run.model) if run.model.num_moe_experts else ()
    interval = IntervalLog()
    diagnostics = build_moe_diagnostics(  # None unless --log-moe-diagnostics
        run, session.controller, validation_loss(session, task, valid_ds, interval)
    )
    consecutive_skips = 0
    for chunk in session.model:
        chunk.train()
    print_rank0(f"training {task.name} from iteration {state.iteration} to {training.train_iters}")
    schedule_line = describe_schedule(run.model, training.train_iters) if run.model.num_moe_experts else None
    if schedule_line:
        print_rank0(schedule_line)
    clock = ProgressClock(training.train_iters, state.iteration)  # a resumed run: this process's rate
    while state.iteration < training.train_iters:
        iteration = state.iteration
        if diagnostics is not None:
            diagnostics.jumps.before_transition(iteration, session.model)
        for event in advance_phase(session, iteration):
            print_rank0(f"iteration {iteration}: {event}")
        if diagnostics is not None:
            diagnostics.jumps.after_transition(iteration)
        means, grad_norm, applied = train_step(session, task, train_iter)
        if diagnostics is not None:
            diagnostics.jumps.observe(iteration, means.get(task.main_metric.replace(" ", "_"), float("nan")))
        routing = collect_step_routing(
            session.model, run.model, loss_names, run.data_parallel_size * run.num_microbatches
        )
        state.iteration += 1
        state.consumed_samples += training.global_batch_size
        state.consumed_tokens += training.global_batch_size * training.seq_length
        step_state = session.controller.routing_state(iteration)
        flops = step_flops(run, routing, step_state)
        state.floating_point_operations += flops
        consecutive_skips = 0 if applied else consecutive_skips + 1
        state.skipped_iters += 0 if applied else 1
        session.keeper.observe_step(iteration, applied)
        interval.add(means, routing, training.global_batch_size * training.seq_length, applied, flops, step_state.phase)
        if consecutive_skips >= training.max_skipped_iters or (
            consecutive_skips and state.iteration == training.train_iters
        ):
            raise stop_for_nonfinite_steps(session, consecutive_skips)
        record = None
        if state.iteration % training.log_interval == 0 or state.iteration == training.train_iters:
            now = time.time()
            record = log_record(session, interval, grad_norm, now)
            interval.reset(now)
        if state.iteration % training.eval_interval == 0 or state.iteration == training.train_iters:
            if valid_ds is not None and training.eval_iters > 0:
                eval_start = time.time()
                record = record or {"iteration": state.iteration, "consumed_samples": state.consumed_samples}
                record.update(evaluate(session, task, valid_ds))
                if training.eval_as_served:
                    record.update(evaluate_as_served(session, task, valid_ds, record))
                # Evaluation is not training throughput; the interval's steps, metrics and FLOPs
                # still count towards the next log line.
                interval.start += time.time() - eval_start
        if (probe is not None or diagnostics is not None) and record is not None and "lr" in record:
            probe_start = time.time()
            probed = probe.route(session, task) if probe is not None else None
            if probed is not None:
                record["routing_probe"] = probed.record_entry()
            if diagnostics is not None:
                record.update(diagnostics.log_entries(session.model, state.iteration, probed))
            interval.start += time.time() - probe_start  # not training throughput
        if record is not None:
            writer.write(record, interval.metric_keys)
            writer.print(console_line(record, training.train_iters, clock.text(state.iteration)) if "lr" in record
                         else f"iter {state.iteration} | val loss {record['val_loss']:.4f} | val ppl "
                         f"{record['val_ppl']:.2f}")
            if "val_loss" in record and "lr" in record:
                writer.print(f"          validation: loss {record['val_loss']:.4f} | ppl {record['val_ppl']:.2f}"
                             + (f" | as served: loss {record['val_served_loss']:.4f} | ppl "
                                f"{record['val_served_ppl']:.2f}" if "val_served_loss" in record else ""))
        should_save = training.save and (
            (training.save_interval and state.iteration % training.save_interval == 0)
            or state.iteration == training.train_iters
        )
        signalled = stop_signal is not None and stop_signal.received_on_any_rank()
        timed_out = time_limit is not None and state.iteration < training.train_iters \
            and time_limit.exceeded_on_any_rank()
        exiting = signalled or timed_out or (training.exit_interval and state.iteration % training.exit_interval == 0)
        if should_save or (exiting and training.save):
            save_start = time.time()
            save(session)
            interval.start += time.time() - save_start  # checkpoint time is not training throughput
        if exiting:
            reason = (
                f"{stop_signal.name} received (--exit-signal-handler)" if signalled
                else f"--exit-duration-in-mins {time_limit.minutes:g} reached after "
                f"{time_limit.elapsed_minutes():.2f} minutes" if timed_out
                else "--exit-interval"
            )
            print_rank0(f"exiting at iteration {state.iteration}: {reason}")
            break
    session.keeper.finish()
    writer.close()
    return session
