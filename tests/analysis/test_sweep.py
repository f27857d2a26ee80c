"""--sweep: parsing and checks, the grid, per-point flags (run length, fractions, on/off flags), the
pairing with Switch, and a fake-trained grid through results.json, the tables and the plots."""

import importlib.util
import json
import os

import pytest

from megatron_evomoe.analysis.comparison import ComparisonSettings, run_all, write_outputs
from megatron_evomoe.analysis.comparison_runner import CHECKPOINT_TRACKER
from megatron_evomoe.analysis.router_suite import MODEL_SIZES, resolve_variants
from megatron_evomoe.analysis.sweep import (
    check_sweeps, extract_sweeps, load_pretrain_parser, parse_sweeps, takes,
)
from megatron_evomoe.router_arguments import router_group_title

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _settings(out, routers, sweeps, protocol="default", train_iters=200, seeds=(1,), **extra):
    variants = resolve_variants(routers, protocol)
    parsed = parse_sweeps(sweeps)
    check_sweeps(parsed, ["--data-path", "corpus"], variants)
    return ComparisonSettings(
        output_dir=str(out), variants=variants, seeds=list(seeds), model=MODEL_SIZES["tiny"], train_iters=train_iters,
        micro_batch_size=2, global_batch_size=4, lr=1e-3, min_lr=1e-4, eval_iters=1,
        passthrough=["--data-path", "corpus"], protocol=protocol, sweeps=parsed, **extra,
    )


def _value(argv, name):
    """The last value of ``name`` in ``argv`` (None when absent), and how often it occurs."""
    hits = [i for i, token in enumerate(argv) if token == name]
    return (argv[hits[-1] + 1] if hits else None), len(hits)


def test_sweeps_come_out_of_the_command_line_in_both_spellings():
    texts, rest = extract_sweeps(["--routers", "evomoe", "--sweep", "--num-experts=4,8", "--lr", "1",
                                  "--sweep=evomoe-mask-ratio=0,0.5"])
    assert texts == ["--num-experts=4,8", "evomoe-mask-ratio=0,0.5"]
    assert rest == ["--routers", "evomoe", "--lr", "1"]
    with pytest.raises(ValueError, match="--sweep needs FLAG=v1,v2"):
        extract_sweeps(["--sweep"])


@pytest.mark.parametrize("text, message", [
    ("--evomoe-mask-ration=0,1", "pretrain_gpt_moe.py has no flag --evomoe-mask-ration"),
    ("--seed=1,2", "--seed cannot be swept (the model seeds are --seeds)"),
    ("--save-interval=5,10", "--save-interval cannot be swept"),
    ("--moe-router-type=switch,dts", "pick variants with --routers"),
    ("--num-experts=4,eight", "'eight' is not a valid int"),
    ("--evomoe-mask-granularity=element,row", "'row' is not one of ['element', 'neuron']"),
    ("--dts-top1-noise=true,maybe", "'maybe' is not true/false"),
    ("--train-iters=100,0", "0 is below 1"),
    ("evomoe-shared-fraction=0.05,1.5", "a fraction of the run must be in [0, 1]"),
    ("--num-experts=4,4", "a value is listed twice"),
    ("--num-experts", "expected FLAG=v1,v2"),
])
def test_a_bad_sweep_is_one_clear_line(text, message):
    with pytest.raises(ValueError) as error:
        parse_sweeps([text])
    assert message in str(error.value) and "\n" not in str(error.value)
    assert str(error.value).startswith(f"--sweep {text}") or "--sweep needs" in str(error.value)


def _compare_routers_main():
    spec = importlib.util.spec_from_file_location("compare_routers", os.path.join(REPO, "tools", "compare_routers.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_the_command_line_rejects_a_bad_sweep_in_one_line_before_running(tmp_path, capsys):
    out = tmp_path / "compare"
    code = _compare_routers_main()(["--output-dir", str(out), "--routers", "switch", "evomoe", "--data-path", "x",
                                    "--sweep", "--evomoe-mask-ration=0,0.5"])
    assert code == 2 and capsys.readouterr().err.strip().splitlines() == [
        "error: --sweep --evomoe-mask-ration=0,0.5: pretrain_gpt_moe.py has no flag --evomoe-mask-ration "
        "(sweep-only flags: evomoe-shared-fraction, dts-anneal-fraction)"]
    assert not out.exists()  # nothing ran


def test_conflicting_sweeps_are_rejected():
    switch = resolve_variants(["switch"])
    evomoe = resolve_variants(["evomoe"])
    with pytest.raises(ValueError, match="none of the selected variants \\(switch\\) reads it"):
        check_sweeps(parse_sweeps(["--evomoe-mask-ratio=0,0.5"]), [], switch)
    with pytest.raises(ValueError, match="--num-experts is also given as a flag for every run"):
        check_sweeps(parse_sweeps(["--num-experts=4,8"]), ["--num-experts", "8"], evomoe)
    with pytest.raises(ValueError, match="both set --evomoe-shared-expert-iters"):
        check_sweeps(parse_sweeps(["--evomoe-shared-expert-iters=5,10", "evomoe-shared-fraction=0.1,0.2"]), [], evomoe)


def test_router_specific_flags_belong_to_their_router_group():
    """A router group's flags (arguments.py, from the router's Config) are read by that router's variants only."""
    parser = load_pretrain_parser()
    groups = {g.title: [a for a in g._group_actions] for g in parser._action_groups}
    routers = ["switch", "gshard", "base", "hash", "stablemoe", "dselectk", "dts"]
    for router in routers:
        actions = groups[router_group_title(router)]
        assert actions
        for action in actions:
            owners = {r for r in routers + [None] if all(takes(r, s) for s in action.option_strings)}
            assert owners == {router}, action.option_strings
    assert takes("dts", "--no-expert-diversify") and takes("gshard", "--no-gshard-random-routing")
    assert takes("switch", "--moe-input-jitter-eps") and not takes("dts", "--moe-input-jitter-eps")
    assert takes("dts", "--num-experts") and not takes(None, "--num-experts") and takes(None, "--lr")


def test_grid_rows_directories_and_pairing(tmp_path):
    settings = _settings(tmp_path, ["dense", "switch", "evomoe"],
                         ["--num-experts=2,8", "--evomoe-mask-ratio=0,0.5"])
    rows = [row.name for row in settings.rows()]
    assert rows == [
        "dense",  # reads neither flag: one row
        "switch[num-experts=2]", "switch[num-experts=8]",
        "evomoe[num-experts=2,evomoe-mask-ratio=0]", "evomoe[num-experts=2,evomoe-mask-ratio=0.5]",
        "evomoe[num-experts=8,evomoe-mask-ratio=0]", "evomoe[num-experts=8,evomoe-mask-ratio=0.5]",
    ]
    refs = settings.references()
    assert refs["evomoe[num-experts=8,evomoe-mask-ratio=0.5]"] == "switch[num-experts=8]"
    assert refs["evomoe[num-experts=2,evomoe-mask-ratio=0]"] == "switch[num-experts=2]"
    assert refs["switch[num-experts=8]"] == "switch[num-experts=8]"
    assert refs["dense"] == "switch[num-experts=2]"  # a flag only Switch reads: its first value
    specs = {spec.variant: spec for spec in settings.plan()}
    spec = specs["evomoe[num-experts=8,evomoe-mask-ratio=0.5]"]
    assert os.path.relpath(spec.run_dir, tmp_path) == "runs/evomoe/num-experts=8,evomoe-mask-ratio=0.5/seed1"
    assert os.path.relpath(specs["dense"].run_dir, tmp_path) == "runs/dense/seed1"  # as before sweeps
    # The swept values replace the presets' (the tiny preset has --num-experts 4).
    assert _value(spec.flags, "--num-experts") == ("8", 1)
    assert _value(spec.flags, "--evomoe-mask-ratio") == ("0.5", 1)
    assert _value(specs["dense"].flags, "--num-experts") == (None, 0)
    assert len({s.run_dir for s in specs.values()}) == len(rows)


def test_swept_run_length_scales_every_derived_setting(tmp_path):
    """Per point: evaluation every tenth, logs every twentieth, checkpoints every quarter, 5% warm-up,
    EvoMoE's preset phases (10% + 20%) and StableMoE's stage 1 (10%): all of the point's length."""
    settings = _settings(tmp_path, ["stablemoe", "evomoe"], ["--train-iters=200,600"])
    expected = {200: dict(eval=20, log=10, warmup=10, shared=20, anneal=40, stage1=20, save=50),
                600: dict(eval=60, log=30, warmup=30, shared=60, anneal=120, stage1=60, save=150)}
    launched = []
    run_all(settings, lambda argv, out: launched.append(argv) or 1, echo=lambda line: None)
    for spec, argv in zip(settings.plan(), launched):
        want = expected[spec.train_iters]
        assert spec.variant.endswith(f"[train-iters={spec.train_iters}]")
        assert _value(argv, "--train-iters") == (str(spec.train_iters), 1)
        assert _value(argv, "--eval-interval")[0] == str(want["eval"])
        assert _value(argv, "--log-interval")[0] == str(want["log"])
        assert _value(argv, "--lr-warmup-iters")[0] == str(want["warmup"])
        assert _value(argv, "--save-interval")[0] == str(want["save"])
        if spec.variant.startswith("evomoe"):
            assert _value(argv, "--evomoe-shared-expert-iters")[0] == str(want["shared"])
            assert _value(argv, "--dts-anneal-iters")[0] == str(want["anneal"])
        else:
            assert _value(argv, "--stablemoe-stage1-iters")[0] == str(want["stage1"])
    info = settings.describe()["variants"]["evomoe[train-iters=600]"]
    assert info["train_iters"] == 600 and info["token_budget"] == 600 * 4 * 64


def test_phase_fractions_follow_the_run_length_and_on_off_flags(tmp_path):
    settings = _settings(tmp_path, ["gshard", "evomoe-top1-noise"], [
        "--train-iters=200,400", "evomoe-shared-fraction=0.025,0.1", "dts-anneal-fraction=0",
        "--dts-top1-noise=false", "--gshard-random-routing=off",
    ], protocol="paper")
    flags = {spec.variant: spec.flags for spec in settings.plan()}
    point = flags["evomoe-top1-noise[train-iters=400,evomoe-shared-fraction=0.025,dts-anneal-fraction=0,"
                  "dts-top1-noise=false]"]
    assert _value(point, "--evomoe-shared-expert-iters") == ("10", 1)  # 2.5% of 400
    assert _value(point, "--dts-anneal-iters") == ("0", 1)
    assert "--dts-top1-noise" not in point  # the preset's flag is switched off
    point = flags["evomoe-top1-noise[train-iters=200,evomoe-shared-fraction=0.1,dts-anneal-fraction=0,"
                  "dts-top1-noise=false]"]
    assert _value(point, "--evomoe-shared-expert-iters") == ("20", 1)
    gshard = flags["gshard[train-iters=200,gshard-random-routing=false]"]
    assert "--no-gshard-random-routing" in gshard and "--gshard-random-routing" not in gshard


# ------------------------------------------------------------------------------- a fake-trained grid
def _ppl(router, experts, ratio, seed, iteration):
    """Final PPL by hand: Switch 50 (4 experts) / 40 (8); EvoMoE 3 worse at ratio 0, 1 better at 0.5;
    seed 2 adds 2; the first evaluation is twice the final."""
    base = {4: 50.0, 8: 40.0}[experts]
    if router == "dts":
        base += 3.0 if ratio == "0" else -1.0
    final = base + (2.0 if seed == 2 else 0.0)
    return final * (2 if iteration == 5 else 1)


def fake_training(argv, stdout_path):
    router, seed = _value(argv, "--moe-router-type")[0], int(_value(argv, "--seed")[0])
    experts, ratio = _value(argv, "--num-experts")[0], _value(argv, "--evomoe-mask-ratio")[0] or "0.2"
    log, ckpt = _value(argv, "--log-json")[0], _value(argv, "--save")[0]
    with open(log, "a") as f:
        for it in (5, 10):
            record = {"iteration": it, "flops": it * 1e9, "elapsed_ms_per_iter": 10.0, "lm_loss": 1.0, "val_loss": 1.0,
                      "val_ppl": _ppl(router, int(experts), ratio, seed, it), "lr": 1e-3,
                      "expert_similarity": [0.1 * it, 0.3 * it], "gate_entropy": [1.0, "nan"],
                      "routing_fluctuation": [0.5 / it, 0.5 / it]}
            if router == "dts" and it == 5:
                record["loss_jump"] = {"T_S": {"iteration": 1, "eval_loss_jump": float(ratio), "train_loss_jump": 0.25}}
            f.write(json.dumps(record) + "\n")
    os.makedirs(ckpt, exist_ok=True)
    open(os.path.join(ckpt, CHECKPOINT_TRACKER), "w").write("10")
    return 0


def test_a_grid_end_to_end_with_a_fake_trainer(tmp_path):
    settings = _settings(tmp_path, ["switch", "evomoe"], ["--num-experts=4,8", "--evomoe-mask-ratio=0,0.5"],
                         train_iters=10, seeds=(1, 2), eval_interval=5, log_interval=5, save_interval=5)
    assert run_all(settings, fake_training, echo=lambda line: None) == []
    outputs = write_outputs(settings, settings.plan())
    doc = json.load(open(outputs.results_json))
    row = "evomoe[num-experts=8,evomoe-mask-ratio=0.5]"
    assert doc["settings"]["variants"][row]["sweep"] == {"--num-experts": "8", "--evomoe-mask-ratio": "0.5"}
    assert doc["settings"]["variants"][row]["base"] == "evomoe"
    assert doc["settings"]["sweeps"] == [{"flag": "--num-experts", "values": ["4", "8"]},
                                         {"flag": "--evomoe-mask-ratio", "values": ["0", "0.5"]}]
    paired = doc["paired"]["variants"][row]
    assert paired["reference_row"] == "switch[num-experts=8]"
    # Same FLOPs per iteration: the difference is the final one, 39 - 40 (seed 1) and 41 - 42 (seed 2).
    assert [paired["per_seed"][s]["difference"] for s in ("1", "2")] == [-1.0, -1.0]
    assert doc["paired"]["variants"]["evomoe[num-experts=4,evomoe-mask-ratio=0]"]["difference"]["mean"] == 3.0
    assert doc["runs"][row]["1"]["target_ppl"] == 40.0
    # Diagnostics: layer means (0.5, 2.0 at iterations 5, 10; the NaN layer left out), by hand.
    diag = doc["runs"][row]["1"]["diagnostics"]
    assert diag["curves"]["expert_similarity"] == [[5, pytest.approx(1.0)], [10, pytest.approx(2.0)]]
    assert diag["summary"]["entropy_last"] == 1.0
    assert diag["summary"]["fluctuation_mean"] == pytest.approx((0.1 + 0.05) / 2)
    assert diag["summary"]["jump_T_S_eval"] == 0.5 and diag["summary"]["jump_T_D_eval"] is None
    assert doc["diagnostics"][row]["jump_T_S_train"]["mean"] == 0.25
    assert "jump_T_S_eval" not in doc["runs"]["switch[num-experts=4]"]["1"]["diagnostics"]["loss_jump"]
    table = open(outputs.markdown).read()
    assert f"| {row} | switch[num-experts=8] | -1.00 ± 0.00 | seed 1: -1.00 @ 10 GFLOP; seed 2: -1.00 @ 10 GFLOP |" in table
    assert f"| {row} | 1.000 ± 0.000 | 2.000 ± 0.000 | 1.000 ± 0.000 | 0.075 ± 0.000 | 0.050 ± 0.000 | 0.500 ± 0.000 " \
        f"| 0.250 ± 0.000 |" in table
    assert "| switch[num-experts=4] | 1.000 ± 0.000 | 2.000 ± 0.000 | 1.000 ± 0.000 | 0.075 ± 0.000 | 0.050 ± 0.000 " \
        "| - | - |" in table
    assert "Sweeps: `--num-experts` = 4, 8; `--evomoe-mask-ratio` = 0, 0.5" in table
    assert "vs" in outputs.console.splitlines()[outputs.console.splitlines().index("") + 1]
    for path in (outputs.plot, outputs.diagnostics_plot):
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
