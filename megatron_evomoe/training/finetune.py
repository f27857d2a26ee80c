"""GLUE fine-tuning on the training loop's pieces: epochs of steps, dev metrics after each epoch,
the best epoch kept (results JSON, checkpoint, test predictions).

The model is :class:`~megatron_evomoe.models.bert_classifier.BertClassifier`, wrapped, optimised and
stepped exactly as in pretraining (``loop.setup_session`` / ``loop.train_step``: megatron DDP,
distributed optimizer, TP/PP/EP, bf16). Differences from pretraining:

* MoE routers run for the whole run in the routing state the loaded checkpoint's last step trained
  with (recorded in its ``run_meta.json``; EvoMoE's Top-1 gate at the final tau, the ablation's tau
  = 1 gate, StableMoE's frozen router), never the pretraining schedule;
* ``--pretrained-checkpoint`` loads only the encoder (any parallel layout, resharded by megatron's
  dist checkpointing) under a freshly drawn head; ``--load`` loads a checkpoint fine-tuned on this
  task, head included (e.g. to predict with ``--epochs 0``);
* the schedule is in epochs: the LR schedule and ``--train-iters`` are derived from the training set
  size by ``finetune_entry``;
* after each epoch the dev set(s) are scored with the task's GLUE metrics; when the primary
  metric improves, the checkpoint is saved (``--save``: the newest checkpoint is the best one) and
  the test predictions are written (``--predict``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Optional

import torch
import torch.nn.functional as F
from megatron.core import parallel_state

from megatron_evomoe.bert_arguments import FinetuneConfig
from megatron_evomoe.data.glue.dataset import EpochShuffledDataset, GlueDataset
from megatron_evomoe.data.glue.metrics import task_metrics
from megatron_evomoe.data.glue.readers import GlueData
from megatron_evomoe.data.glue.results import write_results
from megatron_evomoe.data.glue.submission import decode_outputs, write_submission
from megatron_evomoe.data.glue.tasks import GlueTask, metric_key
from megatron_evomoe.models.bert_classifier import build_bert_classifier
from megatron_evomoe.moe.routers import router_class
from megatron_evomoe.progress import ProgressClock
from megatron_evomoe.run_config import RunConfig, architecture_meta
from megatron_evomoe.training import checkpointing
from megatron_evomoe.training.data_loading import build_iterator
from megatron_evomoe.training.log_writer import MetricsWriter, print_rank0
from megatron_evomoe.training.loop import (
    Task, TrainingSession, checkpoint_routing_state, run_meta, save, setup_session, train_step,
)
from megatron_evomoe.training.predict import predict_outputs
from megatron_evomoe.training.router_data import prepare_routers_from_data
from megatron_evomoe.training.routing_metrics import collect_step_routing
from megatron_evomoe.training.tensorboard_tags import tag_context


# ------------------------------------------------------------------------------ task plumbing
def classification_loss(logits, labels, index, regression: bool, non_loss_data: bool = False):
    """megatron's loss function for a classification micro-batch.

    Training/eval: (loss sum, number of examples, {"loss", "accuracy"}) -- cross entropy, or squared
    error for regression. With ``non_loss_data`` (inference): ``{"index", "output"}``.
    """
    if non_loss_data:
        return {"index": index.detach().cpu(), "output": logits.detach().float().cpu()}
    logits = logits.float()
    count = torch.tensor(float(labels.shape[0]), device=logits.device)
    if regression:
        per_example = (logits.squeeze(-1) - labels.float()) ** 2
        reported = {"loss": torch.stack([per_example.sum().detach(), count])}
    else:
        per_example = F.cross_entropy(logits, labels.long(), reduction="none")
        correct = (logits.argmax(dim=-1) == labels.long()).float().sum()
        reported = {"loss": torch.stack([per_example.sum().detach(), count]), "accuracy": torch.stack([correct, count])}
    return per_example.sum(), count.to(torch.int), reported


def classification_forward_step(regression: bool):
    """``(batch, model) -> (logits, loss_func)`` for GLUE batches (``data/glue/dataset.py``)."""

    def forward_step(batch, model):
        logits = model(batch["tokens"], batch["attention_mask"], batch["types"])
        return logits, partial(classification_loss, labels=batch["label"], index=batch["index"], regression=regression)

    return forward_step


def glue_loop_task(task: GlueTask, add_binary_head: bool) -> Task:
    """The loop's view of a GLUE task (datasets come from the TSV files, not from the loop)."""

    def build_model(config, pre_process, post_process):
        return build_bert_classifier(config, task.num_outputs, pre_process, post_process, add_binary_head)

    def build_datasets(run, num_samples):
        raise NotImplementedError("GLUE data is read by finetune(), not by the pretraining loop")

    forward_step = classification_forward_step(task.is_regression)
    return Task(f"glue-{task.name}", build_model, build_datasets, forward_step, main_metric="loss")


def load_encoder(model_chunks, run: RunConfig, root: str) -> None:
    """Load every encoder weight from checkpoint ``root`` (any parallel layout) under the fresh head.

    The checkpoint must hold every encoder tensor (megatron's loader fails on a missing one); its
    own head, optimizer and RNG states are ignored.
    """
    model = checkpointing.unwrap_model(model_chunks[0])
    with model.without_head():
        checkpointing.load_checkpoint(
            root, model_chunks, load_rng=False, run_meta=run_meta(run),
            meta_keys=list(architecture_meta(run.model)), strict_model=False,
        )
    print_rank0(f"loaded the encoder of {root} (new {model.num_outputs}-output head)")


# ------------------------------------------------------------------------------------ results
@dataclass
class FinetuneResult:
    """What a run found: dev metrics per epoch, the best one, files written."""

    task: str
    model_name: str
    history: list[dict[str, Any]] = field(default_factory=list)
    best: Optional[dict[str, Any]] = None
    submission_files: list[str] = field(default_factory=list)

    def record(self, task: GlueTask, flags: dict) -> dict[str, Any]:
        """The results-JSON record (``data/glue/results.py``) of the best epoch so far."""
        best = self.best or {}
        return {
            "task": self.task, "model": self.model_name, "metric": task.primary,
            "score": best.get(task.primary), **{k: best.get(k) for k in task.metric_names()},
            "epoch": best.get("epoch"), "history": self.history, "flags": flags,
        }


def evaluate_dev(session: TrainingSession, task: GlueTask, dev_sets, micro_batch_size: int) -> dict[str, float]:
    """GLUE metrics of every dev set (``accuracy``, ``accuracy_mm``, ...)."""
    forward_step = classification_forward_step(task.is_regression)
    metrics = {}
    for eval_file, dataset in dev_sets:
        seq_length = session.run.training.seq_length
        outputs = predict_outputs(session.model, forward_step, dataset, micro_batch_size, seq_length)
        labels = [example.label for example in dataset.examples]
        for name, value in task_metrics(task, decode_outputs(task, outputs), labels).items():
            metrics[metric_key(name, eval_file.tag)] = value
    return metrics


def write_test_predictions(session, task: GlueTask, test_sets, config: FinetuneConfig) -> list[str]:
    """One submission file per test set (written by global rank 0; every rank runs inference)."""
    forward_step = classification_forward_step(task.is_regression)
    paths = []
    for eval_file, dataset in test_sets:
        outputs = predict_outputs(
            session.model, forward_step, dataset, config.eval_micro_batch_size, session.run.training.seq_length
        )
        if torch.distributed.get_rank() == 0:
            predictions = decode_outputs(task, outputs)
            paths.append(write_submission(task, eval_file, dataset.examples, predictions, config.predict_dir))
    return paths


# -------------------------------------------------------------------------------------- the run
def finetune(
    run: RunConfig, config: FinetuneConfig, task: GlueTask, data: GlueData, tokenizer, model_name: str,
    add_binary_head: bool = False,
) -> FinetuneResult:
    """Fine-tune (or, with ``epochs == 0``, only evaluate) as configured; see the module docstring."""
    loop_task = glue_loop_task(task, add_binary_head)
    session = setup_session(run, loop_task)  # --load (weights only) happens here
    if config.pretrained_checkpoint:
        load_encoder(session.model, run, config.pretrained_checkpoint)
    elif run.training.load:
        print_rank0(f"loaded the {task.name} model of {run.training.load} (encoder and head)")
    loaded = config.pretrained_checkpoint or run.training.load
    # The routing the loaded model's last step trained with; the end of the schedule for an older
    # checkpoint that does not record it (or a model fine-tuned from scratch).
    routing = (checkpoint_routing_state(loaded) if loaded else None) or session.controller.final_routing_state()
    session.controller.apply_state(session.model, routing)
    session.optimizer.reload_model_params()  # fp32 master weights follow the loaded ones
    seq = run.training.seq_length

    def dataset(examples):
        return GlueDataset(examples, tokenizer, seq, regression=task.is_regression)

    if data.train and run.model.num_moe_experts:
        # Routers built from token counts (balanced hash) come prepared from their checkpoint; this
        # only prepares those that are not (a model fine-tuned from scratch).
        prepare_routers_from_data(session.model, dataset(data.train), run.model.vocab_size)

    dev_sets = [(f, dataset(examples)) for f, examples in data.dev]
    test_sets = [(f, dataset(examples)) for f, examples in data.test]
    result = FinetuneResult(task.name, model_name)
    flags = dict(sorted(run.flags.items()))
    # Megatron-LM's fine-tuning reports its classification loss as "lm loss" (tasks/finetune_utils.py).
    writer = MetricsWriter(run.training.tensorboard_dir, run.training.log_json,
                           tag_context(run, loop_task.main_metric, {"loss": "lm loss"}))

    def end_of_epoch(epoch: int) -> None:
        metrics = evaluate_dev(session, task, dev_sets, config.eval_micro_batch_size)
        entry = {"epoch": epoch, **metrics}
        result.history.append(entry)
        writer.write({"iteration": session.state.iteration, "epoch": epoch,
                      **{f"dev_{k}": v for k, v in metrics.items()}})
        improved = result.best is None or metrics[task.primary] > result.best[task.primary]
        if improved:
            result.best = entry
        print_rank0(
            f"epoch {epoch}/{config.epochs} | dev " + " ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            + f" | best {task.primary} {result.best[task.primary]:.4f} (epoch {result.best['epoch']})"
        )
        if improved and run.training.save and epoch > 0:
            save(session)
        if improved and config.predict:
            result.submission_files = write_test_predictions(session, task, test_sets, config)
        if config.results_json and torch.distributed.get_rank() == 0:
            write_results(config.results_json, result.record(task, flags))

    if config.epochs == 0:
        end_of_epoch(0)
    else:
        train_view = EpochShuffledDataset(
            dataset(data.train), config.epochs, run.training.global_batch_size, run.training.seed
        )
        _train_epochs(session, loop_task, train_view, config, writer, end_of_epoch)
    writer.close()
    best = result.best
    print_rank0(f"{task.name} best dev (epoch {best['epoch']}): "
                + " ".join(f"{k} {v:.4f}" for k, v in best.items() if k != "epoch"))
    return result


def _train_epochs(session: TrainingSession, loop_task: Task, train_view, config, writer, end_of_epoch) -> None:
    """``config.epochs`` passes of optimizer steps, logging every --log-interval, then the epoch hook."""
    run, state = session.run, session.state
    training = run.training
    dp_rank, dp_size = parallel_state.get_data_parallel_rank(), run.data_parallel_size
    iterator = build_iterator(train_view, 0, training.micro_batch_size, dp_rank, dp_size, training.num_workers)
    loss_names = router_class(run.model.moe_router_type).loss_names(run.model) if run.model.num_moe_experts else ()
    sums: dict[str, float] = {}
    steps_logged, consecutive_skips, start = 0, 0, time.time()
    clock = ProgressClock(config.epochs * train_view.steps_per_epoch, state.iteration)
    print_rank0(
        f"fine-tuning {loop_task.name}: {config.epochs} epochs x {train_view.steps_per_epoch} steps "
        f"of {training.global_batch_size} examples"
    )
    for epoch in range(1, config.epochs + 1):
        for _ in range(train_view.steps_per_epoch):
            means, grad_norm, applied = train_step(session, loop_task, iterator)
            routing = collect_step_routing(session.model, run.model, loss_names, dp_size * run.num_microbatches)
            state.iteration += 1
            state.consumed_samples += training.global_batch_size
            consecutive_skips = 0 if applied else consecutive_skips + 1
            state.skipped_iters += 0 if applied else 1
            if consecutive_skips >= training.max_skipped_iters:
                raise RuntimeError(f"{consecutive_skips} consecutive steps had a non-finite loss or gradient norm")
            for name, value in {**means, "aux_loss": routing.total_aux_loss()}.items():
                sums[name] = sums.get(name, 0.0) + value
            steps_logged += 1
            if state.iteration % training.log_interval == 0:
                record = {"iteration": state.iteration, "consumed_samples": state.consumed_samples, "epoch": epoch,
                          **{k: v / steps_logged for k, v in sums.items()},
                          "lr": session.optimizer.param_groups[0]["lr"], "batch_size": training.global_batch_size,
                          "grad_norm": grad_norm,
                          "elapsed_ms_per_iter": 1000.0 * (time.time() - start) / steps_logged}
                writer.write(record, means.keys())
                writer.print(" | ".join(
                    [f"iter {state.iteration:>6}/{training.train_iters}", f"epoch {epoch}"]
                    + [f"{k} {v:.4f}" for k, v in record.items() if k in sums]
                    + [f"lr {record['lr']:.3e}", f"{record['elapsed_ms_per_iter']:.0f} ms/it",
                       clock.text(state.iteration)]
                ))
                sums, steps_logged, start = {}, 0, time.time()
        end_of_epoch(epoch)
