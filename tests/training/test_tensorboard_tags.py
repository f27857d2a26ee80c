"""TensorBoard tags are Megatron-LM's wherever the quantity is the same.

The oracle is Megatron-LM's own code: ``training_log`` and ``evaluate_and_print_results``
(megatron/training/training.py) write ``learning-rate``, ``batch-size``, each loss-dict key (``lm
loss``), ``loss-scale``, ``grad-norm``, ``num-zeros``, ``params-norm``, each also ``... vs samples``
against the consumed samples, ``iteration-time`` in seconds, and ``<key> validation`` / ``<key>
validation ppl`` (+ vs samples); megatron-core's ``track_moe_metrics`` writes ``load_balancing_loss``
(the mean over MoE layers of ``aux_loss / coeff``) and, with per-layer logging,
``moe/load_balancing_loss_layer_<i>`` with i the 0-based decoder layer.
"""

import math

import pytest

from megatron_evomoe.training.tensorboard_tags import TagContext, tensorboard_scalars

SWITCH_LAYERS_0_AND_2 = TagContext(
    moe_layer_numbers=(0, 2), megatron_losses={"balance": ("load_balancing_loss", 0.01)}, per_layer_logging=True
)


def test_a_training_record_maps_to_megatron_tags():
    record = {"iteration": 10, "consumed_samples": 80, "lm_loss": 3.5, "lr": 1e-3, "batch_size": 8,
              "grad_norm": 0.5, "loss_scale": 1.0, "elapsed_ms_per_iter": 250.0, "aux_loss": 0.02,
              "temperature": 1.5, "balance_loss": [0.011, 0.009], "experts_per_token": [1.0, 2.0],
              "phase_flops": {"top1": 7.0}, "phase": "top1", "tokens_per_expert": [[1, 2], [3, 4]]}
    got = tensorboard_scalars(record, SWITCH_LAYERS_0_AND_2, metric_keys=["lm_loss"])
    assert got == [
        ("consumed_samples", 80, 10),
        ("lm loss", 3.5, 10), ("lm loss vs samples", 3.5, 80),
        ("learning-rate", 1e-3, 10), ("learning-rate vs samples", 1e-3, 80),
        ("batch-size", 8, 10), ("batch-size vs samples", 8, 80),
        ("grad-norm", 0.5, 10), ("grad-norm vs samples", 0.5, 80),
        ("loss-scale", 1.0, 10), ("loss-scale vs samples", 1.0, 80),
        ("iteration-time", 0.25, 10),  # seconds, as Megatron-LM's interval timer
        ("aux_loss", 0.02, 10),
        ("temperature", 1.5, 10),
        # (0.011 + 0.009) / 2 layers / coefficient 0.01; per layer at decoder layers 0 and 2
        ("load_balancing_loss", pytest.approx(1.0), 10),
        ("moe/load_balancing_loss_layer_0", pytest.approx(1.1), 10),
        ("moe/load_balancing_loss_layer_2", pytest.approx(0.9), 10),
        ("experts_per_token/layer_0", 1.0, 10), ("experts_per_token/layer_1", 2.0, 10),
        ("phase_flops/top1", 7.0, 10),
    ]


def test_per_layer_moe_tags_only_with_per_layer_logging():
    context = TagContext(moe_layer_numbers=(1, 3), megatron_losses={"balance": ("load_balancing_loss", 0.1)})
    got = tensorboard_scalars({"iteration": 1, "balance_loss": [0.2, 0.4]}, context)
    assert got == [("load_balancing_loss", pytest.approx(3.0), 1)]  # (2 + 4) / 2, no per-layer tags


def test_losses_already_averaged_over_layers_and_a_per_layer_entry():
    # A record may hold the mean over MoE layers and, with per-layer logging, the per-layer list.
    context = TagContext(moe_layer_numbers=(1, 3), megatron_losses={"balance": ("load_balancing_loss", 0.1)})
    got = tensorboard_scalars({"iteration": 1, "balance_loss": 0.3, "balance_loss_per_layer": [0.2, 0.4]}, context)
    assert got == [("load_balancing_loss", pytest.approx(3.0), 1),
                   ("moe/load_balancing_loss_layer_1", pytest.approx(2.0), 1),
                   ("moe/load_balancing_loss_layer_3", pytest.approx(4.0), 1)]


def test_a_loss_megatron_does_not_track_keeps_our_tag():
    # StableMoE's balance (its eq. 4) and distill losses, DSelect-k's entropy: no megatron name.
    got = tensorboard_scalars({"iteration": 3, "balance_loss": [0.5, 0.25], "distill_loss": [1.0]}, TagContext())
    assert got == [("balance_loss/layer_0", 0.5, 3), ("balance_loss/layer_1", 0.25, 3), ("distill_loss/layer_0", 1.0, 3)]


def test_validation_tags_follow_evaluate_and_print_results():
    record = {"iteration": 6, "consumed_samples": 48, "val_loss": 2.0, "val_ppl": math.exp(2.0),
              "val_mlm_accuracy": 0.25, "val_served_loss": 2.5, "val_served_ppl": 12.0}
    got = tensorboard_scalars(record, TagContext(), metric_keys=["lm_loss", "mlm_accuracy"])
    assert got == [
        ("consumed_samples", 48, 6),
        ("lm loss validation", 2.0, 6), ("lm loss validation vs samples", 2.0, 48),
        ("lm loss validation ppl", math.exp(2.0), 6), ("lm loss validation ppl vs samples", math.exp(2.0), 48),
        ("mlm accuracy validation", 0.25, 6), ("mlm accuracy validation vs samples", 0.25, 48),
        ("val_served_loss", 2.5, 6), ("val_served_ppl", 12.0, 6),  # EvoMoE's served gate: ours
    ]


def test_fine_tuning_loss_is_megatrons_lm_loss_and_missing_values_are_skipped():
    context = TagContext(main_metric="loss", metric_renames={"loss": "lm loss"})
    record = {"iteration": 2, "epoch": 1, "loss": 0.7, "accuracy": 0.5, "grad_norm": None}
    got = tensorboard_scalars(record, context, metric_keys=["loss", "accuracy"])
    # without consumed_samples there is no "vs samples" axis
    assert got == [("epoch", 1, 2), ("lm loss", 0.7, 2), ("accuracy", 0.5, 2)]


# ------------------------------------------------------------------------------ a tiny training run
class RecordingWriter:
    """Stands in for torch's SummaryWriter: records every add_scalar call."""

    calls = []

    def __init__(self, log_dir=None):
        pass

    def add_scalar(self, tag, value, step):
        RecordingWriter.calls.append((tag, value, step))

    def flush(self):
        pass

    def close(self):
        pass


def test_a_training_run_writes_exactly_these_tags(megatron_world_of_one, monkeypatch, tmp_path, capsys):
    import json
    import re

    import torch.utils.tensorboard
    from megatron.core.transformer.moe.moe_utils import MoEAuxLossAutoScaler

    from megatron_evomoe import initialize
    from megatron_evomoe.training.loop import pretrain
    from tests.tiny import tiny_gpt_task, tiny_run

    monkeypatch.setattr(torch.utils.tensorboard, "SummaryWriter", RecordingWriter)
    # megatron class state that training sets: restored so it does not leak into other tests
    monkeypatch.setattr(MoEAuxLossAutoScaler, "main_loss_backward_scale", MoEAuxLossAutoScaler.main_loss_backward_scale)
    RecordingWriter.calls = []
    log = tmp_path / "log.jsonl"
    # Switch router, MoE layers at decoder layers 0 and 2 (--moe-layer-freq 2 of 4 layers).
    run = tiny_run("--train-iters", "2", "--eval-interval", "2", "--eval-iters", "1", "--moe-per-layer-logging",
                   "--tensorboard-dir", str(tmp_path / "tb"), "--log-json", str(log))
    initialize.set_seeds(7)
    pretrain(run, tiny_gpt_task())
    records = [json.loads(line) for line in open(log)]
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("iter ")]
    assert len(lines) == 2 and all(re.search(r"\| elapsed \d+:\d\d:\d\d \| ETA \d+:\d\d:\d\d$", x) for x in lines)
    assert lines[-1].endswith("ETA 0:00:00")  # the last iteration: nothing left

    tags = {tag for tag, _, _ in RecordingWriter.calls}
    megatron = {"lm loss", "learning-rate", "batch-size", "grad-norm", "loss-scale",
                "lm loss validation", "lm loss validation ppl"}
    megatron |= {t + " vs samples" for t in megatron}
    megatron |= {"iteration-time", "load_balancing_loss", "moe/load_balancing_loss_layer_0",
                 "moe/load_balancing_loss_layer_2"}
    phases = {f"phase_flops/{phase}" for r in records for phase in r.get("phase_flops", {})}
    ours = {"consumed_samples", "aux_loss", "tokens_per_sec", "flops", "skipped_iters", "temperature",
            *phases, *(f"{name}/layer_{k}" for name in ("experts_per_token", "dropped_token_fraction",
                                                          "dropped_pair_fraction") for k in (0, 1))}
    assert tags == megatron | ours

    last = records[-1]
    written = {(tag, step): value for tag, value, step in RecordingWriter.calls}
    assert written[("lm loss", 2)] == last["lm_loss"]
    assert written[("lm loss vs samples", last["consumed_samples"])] == last["lm_loss"]
    assert written[("learning-rate", 2)] == last["lr"]
    assert written[("batch-size", 2)] == 4  # --global-batch-size
    assert written[("lm loss validation", 2)] == last["val_loss"]
    assert written[("iteration-time", 2)] == pytest.approx(last["elapsed_ms_per_iter"] / 1000)
    coeff = run.model.moe_router.aux_loss_coeff  # Switch: 0.01
    per_layer = last["balance_loss_per_layer"]  # the JSON list per MoE layer
    assert written[("moe/load_balancing_loss_layer_2", 2)] == pytest.approx(per_layer[1] / coeff)
    assert written[("load_balancing_loss", 2)] == pytest.approx(sum(per_layer) / 2 / coeff)
