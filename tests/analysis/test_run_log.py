"""Reading --log-json files: restarts rewind, cut lines are ignored, curves and times."""

import json

import pytest

from megatron_evomoe.analysis.run_log import (
    eval_curve, is_complete, read_records, summarize, train_seconds, truncate_partial_line,
)


def _write(path, records, tail=""):
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
        f.write(tail)


def test_a_resumed_run_replaces_what_the_interrupted_attempt_wrote_after_its_checkpoint(tmp_path):
    log = tmp_path / "log.jsonl"
    first = [{"iteration": i, "flops": 10.0 * i, "lm_loss": 9.0} for i in (2, 4, 6, 8)]
    # Resumed from the checkpoint at 4: writes 6 again (different numbers), then 8 and 10 ...
    resumed = [{"iteration": i, "flops": 10.0 * i, "lm_loss": 1.0} for i in (6, 8, 10)]
    _write(log, first + resumed, tail='{"iteration": 12, "flo')  # ... and is killed mid-line
    records = read_records(str(log))
    assert [r["iteration"] for r in records] == [2, 4, 6, 8, 10]
    assert [r["lm_loss"] for r in records] == [9.0, 9.0, 1.0, 1.0, 1.0]
    assert read_records(str(tmp_path / "missing.jsonl")) == []


def test_eval_only_records_take_interpolated_flops_and_time_counts_steps():
    records = [
        {"iteration": 4, "flops": 40.0, "elapsed_ms_per_iter": 100.0},
        {"iteration": 5, "val_loss": 2.0, "val_ppl": 7.389},  # eval at a non-log iteration
        {"iteration": 6, "flops": 70.0, "elapsed_ms_per_iter": 200.0, "val_loss": 1.0, "val_ppl": 2.718},
    ]
    curve = eval_curve(records)
    assert [(p.iteration, p.flops, p.val_ppl) for p in curve] == [(5, 55.0, 7.389), (6, 70.0, 2.718)]
    assert train_seconds(records) == pytest.approx(4 * 0.1 + 2 * 0.2)
    summary = summarize(records, tokens_per_iteration=100)
    assert summary.final_val_ppl == 2.718 and summary.total_flops == 70.0 and summary.iterations == 6
    assert summary.tokens_per_sec == pytest.approx(600 / 0.8)


def test_complete_means_the_last_iteration_with_its_evaluation():
    assert is_complete([{"iteration": 10, "val_ppl": 3.0}], 10)
    assert not is_complete([{"iteration": 10}], 10)
    assert not is_complete([{"iteration": 8, "val_ppl": 3.0}], 10)
    assert not is_complete([], 10)


def test_a_cut_last_line_is_removed_before_appending(tmp_path):
    log = tmp_path / "log.jsonl"
    _write(log, [{"iteration": 5}], tail='{"iteration": 7, "fl')
    truncate_partial_line(str(log))
    with open(log, "a") as f:
        f.write(json.dumps({"iteration": 10}) + "\n")
    assert [r["iteration"] for r in read_records(str(log))] == [5, 10]
