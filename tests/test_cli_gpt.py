"""The command line end to end: corpus -> tokenizer -> .bin/.idx -> pretrain_gpt_moe.py (EvoMoE)."""

import json
import math
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args, check=True):
    result = subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{args[0]} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    corpus = root / "corpus.jsonl"
    from megatron_evomoe.data.pydoc_corpus import write_pydoc_corpus

    write_pydoc_corpus(str(corpus))
    _run("tools/train_tokenizer.py", "--input", str(corpus), "--type", "bpe", "--vocab-size", "1024",
         "--output-dir", str(root / "tok"))
    _run("tools/preprocess_data.py", "--input", str(corpus), "--output-prefix", str(root / "pydoc"),
         "--tokenizer-type", "GPT2BPETokenizer", "--vocab-file", str(root / "tok" / "vocab.json"),
         "--merge-file", str(root / "tok" / "merges.txt"), "--append-eod", "--workers", "2")
    return root


def _flags(root):
    return [
        "--tokenizer-type", "GPT2BPETokenizer", "--vocab-file", str(root / "tok" / "vocab.json"),
        "--merge-file", str(root / "tok" / "merges.txt"), "--data-path", str(root / "pydoc_text_document"),
        "--split", "90,10,0", "--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "2",
        "--seq-length", "32", "--num-experts", "4", "--micro-batch-size", "4", "--global-batch-size", "8",
        "--train-iters", "12", "--lr", "2e-3", "--log-interval", "2", "--eval-interval", "6", "--eval-iters", "2",
    ]


def test_evomoe_from_the_command_line_logs_everything(data):
    log, tb = data / "log.jsonl", data / "tb"
    result = _run("pretrain_gpt_moe.py", *_flags(data), "--moe-router-type", "dts",
                  "--evomoe-shared-expert-iters", "4", "--dts-anneal-iters", "4",
                  "--log-json", str(log), "--tensorboard-dir", str(tb))
    assert "EvoMoE schedule: T_S = 4, tau annealed over 4 iterations, T_D = 8 (of 12 iterations)" in result.stdout
    assert "expert-diversify: spawned 4 experts" in result.stdout
    assert "phase gate_sparsify -> top1" in result.stdout
    records = [json.loads(line) for line in open(log)]
    assert [r["iteration"] for r in records] == [2, 4, 6, 8, 10, 12]
    for key in ("consumed_samples", "lm_loss", "aux_loss", "lr", "grad_norm", "tokens_per_sec", "flops",
                "tokens_per_expert", "phase", "temperature", "experts_per_token", "dropped_token_fraction",
                "dropped_pair_fraction", "phase_flops", "balance_loss"):
        assert all(key in r for r in records), key
    assert len(records[0]["tokens_per_expert"]) == 1  # one MoE layer (layer 0 of 2)
    assert sum(records[0]["tokens_per_expert"][0]) == 0  # stage 1: no expert used
    assert sum(records[-1]["tokens_per_expert"][0]) == 2 * 8 * 32  # top-1: 2 steps x 8 x 32 tokens
    assert [r["phase"] for r in records] == ["expert_diversify"] * 2 + ["gate_sparsify"] * 2 + ["top1"] * 2
    # Each step's FLOPs are charged to the phase it ran in: the interval (4, 6] holds steps 4 and 5.
    assert list(records[2]["phase_flops"]) == ["gate_sparsify"]
    assert sum(sum(r["phase_flops"].values()) for r in records) == pytest.approx(records[-1]["flops"])
    evals = [r for r in records if "val_loss" in r]
    assert [r["iteration"] for r in evals] == [6, 12] and all(r["val_ppl"] > 1 for r in evals)
    assert records[-1]["lm_loss"] < records[0]["lm_loss"]
    assert records[-1]["flops"] > records[0]["flops"] > 0
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tb))


def test_bad_flags_and_bad_data_are_one_line_errors(data):
    result = _run("pretrain_gpt_moe.py", *_flags(data), "--expert-model-parallel-size", "3", check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: world size 1 is not divisible by --expert-tensor-parallel-size 1 x "
        "--expert-model-parallel-size 3 x --pipeline-model-parallel-size 1"
    )
    result = _run("pretrain_gpt_moe.py", *_flags(data), "--data-path", str(data / "missing"), check=False)
    assert result.returncode == 2 and "missing" in result.stderr.strip().splitlines()[-1]


def test_compare_routers_paper_protocol_end_to_end(data, tmp_path):
    out = tmp_path / "compare"
    model = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "2", "--seq-length", "32"]
    data_flags = _flags(data)[: _flags(data).index("--split") + 2]  # tokenizer, corpus, split
    result = _run("tools/compare_routers.py", "--output-dir", str(out), "--protocol", "paper",
                  "--routers", "switch", "evomoe-top1-noise", "--seeds", "1", "2",
                  "--train-iters", "20", "--micro-batch-size", "4", "--global-batch-size", "4",
                  "--eval-interval", "5", "--eval-iters", "2", *data_flags, *model)
    doc = json.load(open(out / "results.json"))
    settings = doc["settings"]
    assert settings["protocol"] == "paper" and settings["seeds"] == [1, 2]
    assert settings["shared_flags"][settings["shared_flags"].index("--data-seed") + 1] == "1234"
    flags = {name: " ".join(v["flags"]) for name, v in settings["variants"].items()}
    assert "--moe-aux-loss-coeff 0.1" in flags["switch"] and "--moe-input-jitter-eps 0.01" in flags["switch"]
    # 5% + 5% of 20 iterations, balance 0.1 (EvoMoE sec. V), and Algorithm 2's Top-1 noise.
    assert ("--moe-aux-loss-coeff 0.1 --evomoe-shared-expert-iters 1 --dts-anneal-iters 1"
            in flags["evomoe-top1-noise"] and "--dts-top1-noise" in flags["evomoe-top1-noise"])
    for variant in ("evomoe-top1-noise",):
        paired = doc["paired"]["variants"][variant]
        assert sorted(paired["per_seed"]) == ["1", "2"] and paired["difference"]["count"] == 2
        for seed, run in doc["runs"][variant].items():
            switch = doc["runs"]["switch"][seed]
            # The budget is the smaller total (EvoMoE's dense steps cost more), read on both curves.
            assert paired["per_seed"][seed]["budget"] == min(run["total_flops"], switch["total_flops"])
            assert run["phase_flops"]["expert_diversify"] > 0 and run["phase_flops"]["gate_sparsify"] > 0
            assert sum(run["phase_flops"].values()) == pytest.approx(run["total_flops"], rel=1e-9)
        shares = doc["phase_flops_share"][variant]
        assert sum(s["mean"] for s in shares.values()) == pytest.approx(1.0)
        assert shares["top1"]["mean"] > 0.8  # 18 of 20 steps
    assert "Δ val PPL vs switch at equal FLOPs" in result.stdout and "top1 FLOPs %" in result.stdout


def test_a_run_that_diverges_exits_non_zero_naming_the_last_good_checkpoint(data):
    ckpt = data / "diverged"
    flags = [*_flags(data), "--train-iters", "4", "--eval-interval", "100", "--save", str(ckpt),
             "--save-interval", "1"]
    result = _run("pretrain_gpt_moe.py", *flags, "--lr", "1e9", check=False)
    assert result.returncode == 3
    # Step 1 applies a 1e9-sized update: finite weights (iter_1) that give NaN on every later forward.
    assert result.stderr.strip().splitlines()[-1] == (
        "error: 3 consecutive iterations had a non-finite loss or gradient norm (iterations 2-4); stopping. "
        f"There is no good checkpoint in {ckpt}. The state at the stop is in {ckpt}/iter_0000004.nonfinite. "
        f"Checkpoints from the start of the streak were renamed: {ckpt}/iter_0000001.nonfinite."
    )
    assert sorted(os.listdir(ckpt)) == [f"iter_000000{i}.nonfinite" for i in range(1, 5)]


def test_compare_routers_sweep_with_diagnostics_end_to_end(data, tmp_path):
    """A one-flag grid (EvoMoE with and without --evomoe-mask-rescale) against plain Switch: the
    grid's rows, run directories, pairing, diagnostics table and plots."""
    out = tmp_path / "sweep"
    model = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "2", "--seq-length", "32"]
    data_flags = _flags(data)[: _flags(data).index("--split") + 2]
    common = ["tools/compare_routers.py", "--output-dir", str(out), "--routers", "switch", "evomoe", "--seeds", "1",
              "--train-iters", "10", "--micro-batch-size", "4", "--global-batch-size", "4", "--eval-interval", "5",
              "--eval-iters", "2", "--probe-tokens", "32", *data_flags, *model]
    result = _run(*common, "--sweep", "--evomoe-mask-rescale=false,true")
    rows = ["switch", "evomoe[evomoe-mask-rescale=false]", "evomoe[evomoe-mask-rescale=true]"]
    doc = json.load(open(out / "results.json"))
    assert list(doc["runs"]) == rows
    assert doc["settings"]["variants"][rows[2]]["sweep"] == {"--evomoe-mask-rescale": "true"}
    assert "--evomoe-mask-rescale" in doc["settings"]["variants"][rows[2]]["flags"]
    assert "--evomoe-mask-rescale" not in doc["settings"]["variants"][rows[1]]["flags"]
    assert "kept weights rescaled by 1/(1 - ratio)" in (out / "runs/evomoe/evomoe-mask-rescale=true/seed1/stdout.log").read_text()
    for row in rows[1:]:
        paired = doc["paired"]["variants"][row]
        assert paired["reference_row"] == "switch" and paired["per_seed"]["1"]["difference"] is not None
        summary = doc["runs"][row]["1"]["diagnostics"]["summary"]
        assert 0.7 < summary["similarity_first"] < 0.9  # spawned at mask ratio 0.2: about 1 - r
        assert summary["jump_T_S_eval"] is not None and summary["jump_T_D_eval"] is not None
        assert summary["entropy_last"] <= math.log(4) + 1e-6
    switch = doc["runs"]["switch"]["1"]["diagnostics"]["summary"]
    assert abs(switch["similarity_first"]) < 0.2 and switch["jump_T_S_eval"] is None  # random experts, one phase
    assert "expert cos sim, first" in result.stdout and "ΔL at T_S (val)" in result.stdout
    assert (out / "diagnostics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
