"""The router comparison with a fake launcher: resume logic, results.json numbers, table and plot.

The fake training process writes the log a real one would (train records every 5 iterations with
cumulative FLOPs, evaluations at 5 and 10) from a table of perplexities, and can "crash" after its
checkpoint at iteration 5, so every path of the resume logic runs without training anything.
"""

import json
import os

import pytest

from megatron_evomoe.analysis.comparison import ComparisonSettings, run_all, write_outputs
from megatron_evomoe.analysis.comparison_runner import CHECKPOINT_TRACKER, RunStatus, run_status
from megatron_evomoe.analysis.router_suite import MODEL_SIZES, resolve_variants

# (router flag value or "dense", seed) -> val PPL at iterations 5 and 10; FLOPs per iteration per router.
PPL = {("switch", 1): (100.0, 50.0), ("switch", 2): (110.0, 55.0),
       ("dts", 1): (80.0, 40.0), ("dts", 2): (90.0, 60.0)}
FLOPS_PER_ITER = {"switch": 1e9, "dts": 1.2e9}
# FLOPs of the steps logged at iterations 5 and 10, by routing phase (they add up to the totals above).
PHASE_FLOPS = {"switch": ({"sparse": 5e9}, {"sparse": 5e9}),
               "dts": ({"expert_diversify": 3e9, "gate_sparsify": 3e9}, {"top1": 6e9})}


def _flag(argv, name):
    return argv[len(argv) - 1 - argv[::-1].index(name) + 1]


class FakeTraining:
    """Writes a run's log and checkpoint tracker like pretrain_gpt_moe.py would."""

    def __init__(self):
        self.calls = []
        self.crash = set()  # (router, seed) that die after the checkpoint at 5

    def __call__(self, argv, stdout_path):
        router, seed = _flag(argv, "--moe-router-type"), int(_flag(argv, "--seed"))
        self.calls.append((router, seed, "--load" in argv))
        log, ckpt = _flag(argv, "--log-json"), _flag(argv, "--save")
        start = 5 if "--load" in argv else 0
        with open(log, "a") as f:
            for it in (5, 10):
                if it <= start:
                    continue
                record = {"iteration": it, "flops": it * FLOPS_PER_ITER[router], "elapsed_ms_per_iter": 10.0,
                          "lm_loss": 1.0, "val_loss": 1.0, "val_ppl": PPL[(router, seed)][it // 5 - 1],
                          "phase_flops": PHASE_FLOPS[router][it // 5 - 1]}
                f.write(json.dumps(record) + "\n")
                if it == 5:
                    os.makedirs(ckpt, exist_ok=True)
                    open(os.path.join(ckpt, CHECKPOINT_TRACKER), "w").write("5")
                    if (router, seed) in self.crash:
                        f.write('{"iteration": 7, "flops": 1')  # killed mid-write
                        return 1
        return 0


def _settings(out, passthrough=("--data-path", "corpus")):
    return ComparisonSettings(
        output_dir=str(out), variants=resolve_variants(["switch", "dts"]), seeds=[1, 2], model=MODEL_SIZES["tiny"],
        train_iters=10, micro_batch_size=2, global_batch_size=4, lr=1e-3, min_lr=1e-4, eval_interval=5,
        eval_iters=1, log_interval=5, save_interval=5, passthrough=list(passthrough),
    )


def test_a_crashed_comparison_resumes_only_what_is_missing(tmp_path):
    fake = FakeTraining()
    fake.crash = {("dts", 2)}
    settings = _settings(tmp_path)
    failures = run_all(settings, fake, echo=lambda line: None)
    assert len(failures) == 1 and "evomoe seed 2 exited with code 1" in failures[0]
    assert fake.calls == [("switch", 1, False), ("switch", 2, False), ("dts", 1, False), ("dts", 2, False)]
    specs = settings.plan()
    assert [run_status(s) for s in specs] == [RunStatus.COMPLETE] * 3 + [RunStatus.RESUME]
    assert not os.path.exists(specs[0].ckpt_dir)  # complete runs drop their checkpoints

    fake.calls.clear()
    assert run_all(settings, fake, echo=lambda line: None) == []
    assert fake.calls == [("dts", 2, True)]  # resumed from its checkpoint, nothing else rerun
    fake.calls.clear()
    run_all(settings, fake, echo=lambda line: None)
    assert fake.calls == []

    # Other settings in the same directory: every run restarts from scratch.
    changed = _settings(tmp_path, passthrough=("--data-path", "other"))
    assert {run_status(s) for s in changed.plan()} == {RunStatus.RESTART}


def test_an_interrupted_run_without_checkpoint_restarts_with_a_fresh_log(tmp_path):
    fake = FakeTraining()
    settings = _settings(tmp_path)
    spec = settings.plan()[0]
    os.makedirs(spec.run_dir)
    with open(spec.log_path, "w") as f:
        f.write(json.dumps({"iteration": 5, "flops": 1.0, "val_ppl": 999.0}) + "\n")
    assert run_status(spec) is RunStatus.RESTART
    run_all(settings, fake, echo=lambda line: None)
    assert fake.calls[0] == ("switch", 1, False)
    records = [json.loads(line) for line in open(spec.log_path)]
    assert [r["val_ppl"] for r in records] == [100.0, 50.0]


def test_results_json_table_and_plot(tmp_path):
    settings = _settings(tmp_path)
    run_all(settings, FakeTraining(), echo=lambda line: None)
    outputs = write_outputs(settings, settings.plan())
    doc = json.load(open(outputs.results_json))
    evo, switch = doc["runs"]["evomoe"], doc["runs"]["switch"]
    # Seed 1: target = switch's final 50; EvoMoE crosses it between (6e9, 80) and (12e9, 40).
    assert evo["1"]["flops_to_target"] == pytest.approx(6e9 + 6e9 * (80 - 50) / (80 - 40))  # 10.5e9
    assert switch["1"]["flops_to_target"] == pytest.approx(10e9)
    assert evo["1"]["relative_flops_to_target"] == pytest.approx(1.05)
    assert evo["2"]["flops_to_target"] is None  # 60 never reaches switch's 55
    summary = doc["summary"]["evomoe"]
    assert summary["final_val_ppl"]["mean"] == 50.0
    assert summary["final_val_ppl"]["std"] == pytest.approx(14.1421356)
    assert summary["flops_to_target"]["count"] == 1 and summary["flops_to_target"]["total"] == 2
    assert doc["settings"]["token_budget"] == 10 * 4 * 64
    assert doc["settings"]["variants"]["evomoe"]["flags"][:2] == ["--num-experts", "4"]
    # Paired with switch at the budget both reached (switch's 10e9): EvoMoE's curve read there.
    # seed 1: 80 + (40 - 80) * 4/6 - 50 = 3.333; seed 2: 90 + (60 - 90) * 4/6 - 55 = 15.
    paired = doc["paired"]["variants"]["evomoe"]
    assert doc["paired"]["reference"] == "switch" and "switch" not in doc["paired"]["variants"]
    assert paired["per_seed"]["1"]["budget"] == pytest.approx(10e9)
    assert paired["per_seed"]["1"]["difference"] == pytest.approx(10 / 3)
    assert paired["per_seed"]["2"]["difference"] == pytest.approx(15.0)
    assert paired["difference"]["mean"] == pytest.approx((10 / 3 + 15) / 2)
    assert paired["difference"]["std"] == pytest.approx(abs(15 - 10 / 3) / 2 ** 0.5)
    # FLOPs by phase: 3 + 3 + 6 of 12 GFLOP in both seeds; switch runs in one phase (no row).
    shares = doc["phase_flops_share"]
    assert {p: v["mean"] for p, v in shares["evomoe"].items()} == pytest.approx(
        {"expert_diversify": 0.25, "gate_sparsify": 0.25, "top1": 0.5})
    assert "switch" not in shares and evo["1"]["phase_flops"]["top1"] == 6e9
    assert doc["settings"]["variants"]["evomoe"]["sweep"] == {} and doc["settings"]["data_seed"] == 1234
    table = open(outputs.markdown).read()
    assert "| evomoe | 9.17 ± 8.25 | seed 1: +3.33 @ 10 GFLOP; seed 2: +15.00 @ 10 GFLOP |" in table
    assert "| evomoe | 25.0 ± 0.0 | 25.0 ± 0.0 | 50.0 ± 0.0 |" in table
    assert "| evomoe | 50.00 ± 14.14 |" in table and "(1/2 seeds)" in table
    assert "--no-expert-diversify" not in table  # only the selected variants are listed
    switch_row = next(line for line in outputs.console.splitlines() if line.startswith("switch"))
    assert "52.50 ± 3.54" in switch_row and "not reached" not in switch_row
    with open(outputs.plot, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_passthrough_moe_flags_do_not_turn_the_dense_baseline_into_an_moe(tmp_path):
    """``--num-experts 8`` given for the MoE rows must not reach the dense run (it made "dense" a Switch MoE),
    and a router's own flags reach only that router's runs; data flags reach every run."""
    passthrough = ["--data-path", "corpus", "--num-experts=8", "--evomoe-mask-ratio", "0.3", "--moe-aux-loss-coeff", "0.1"]
    settings = ComparisonSettings(
        output_dir=str(tmp_path), variants=resolve_variants(["dense", "switch", "dts"]), seeds=[1],
        model=MODEL_SIZES["tiny"], train_iters=10, micro_batch_size=2, global_batch_size=4, lr=1e-3, min_lr=1e-4,
        eval_iters=1, passthrough=passthrough,
    )
    flags = {row.variant.name: settings.run_flags(row, 1) for row in settings.rows()}
    tail = {name: argv[argv.index("--seed") + 2:] for name, argv in flags.items()}
    assert tail["dense"] == ["--data-path", "corpus"]
    assert tail["switch"] == ["--data-path", "corpus", "--num-experts=8", "--moe-aux-loss-coeff", "0.1"]
    assert tail["evomoe"] == passthrough
    assert not any(token.startswith(("--num-experts", "--moe-")) for token in flags["dense"])
