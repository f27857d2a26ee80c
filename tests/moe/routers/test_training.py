"""Every router trains the tiny GPT-MoE end to end, logs its losses, and resumes bitwise exactly.

Runs in the pytest process (the session's world of one): a straight 5-step run saves at step 3;
a second run loads that checkpoint and must reproduce steps 4-5 and the final evaluation bit for bit.
"""

import os

import pytest

from megatron_evomoe.moe.routers import router_class
from megatron_evomoe.training import checkpointing
from tests.tiny import tiny_run, train_logged

COMMON = ["--train-iters", "5", "--eval-iters", "1", "--hidden-dropout", "0.1"]
ROUTERS = {
    "switch": ["--moe-input-jitter-eps", "0.1", "--moe-expert-capacity-factor", "1.0"],
    "gshard": ["--gshard-random-routing", "--moe-expert-capacity-factor", "1.5"],
    "base": [],
    "hash": [],
    "hash_balanced": ["--hash-type", "balanced"],
    "stablemoe": ["--stablemoe-stage1-iters", "2"],  # stage 2 from step 3, checkpoint after it
    "dselectk": [],
    # --moe-router-load-balancing-type and --moe-z-loss-coeff (moe/load_balancing.py): the global
    # counts (2 micro-batches here) must be reset every step for the resumed run to match.
    "dts_global_z": ["--moe-router-load-balancing-type", "global_aux_loss", "--moe-z-loss-coeff", "1e-3",
                     "--evomoe-shared-expert-iters", "1", "--moe-per-layer-logging"],
}
COMPARED = ("lm_loss", "grad_norm", "aux_loss", "tokens_per_expert", "val_loss")


def _train(flags, log):
    return train_logged(*flags, log=log)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ROUTERS))
def test_router_trains_logs_its_losses_and_resumes_exactly(name, megatron_world_of_one, tmp_path):
    router = name.split("_")[0]
    flags = ["--moe-router-type", router, *ROUTERS[name], *COMMON]
    ckpt = str(tmp_path / "ckpt")
    straight = _train([*flags, "--save", ckpt, "--save-interval", "3"], str(tmp_path / "straight.jsonl"))
    with open(os.path.join(ckpt, checkpointing.TRACKER_FILE), "w") as tracker:
        tracker.write("3")  # resume from step 3 (the final save at step 5 moved the tracker)
    resumed = _train([*flags, "--load", ckpt], str(tmp_path / "resumed.jsonl"))
    assert [r["iteration"] for r in straight] == [1, 2, 3, 4, 5]
    assert [r["iteration"] for r in resumed] == [4, 5]
    for key in COMPARED:
        assert [r.get(key) for r in resumed] == [r.get(key) for r in straight[3:]], key
    for name_ in router_class(router).loss_names(tiny_run(*flags).model):
        assert all(f"{name_}_loss" in r for r in straight)
        if "--moe-per-layer-logging" in flags:
            assert all(len(r[f"{name_}_loss_per_layer"]) == 2 for r in straight)  # one entry per MoE layer
    if "--moe-z-loss-coeff" in flags:
        assert all(value > 0 for r in straight[1:] for value in r["z_loss_per_layer"])  # (dts: step 1 is stage 1)
    assert all(r["lm_loss"] < 6.0 for r in straight)
    if router == "base":
        assert all(counts == [16.0] * 4 for r in straight for counts in r["tokens_per_expert"])
    if router == "stablemoe":
        assert [r["phase"] for r in straight] == ["stage1"] * 2 + ["stage2"] * 3
        assert straight[1]["aux_loss"] != 0.0
        # Stage 2: the task loss only (and the optional z-loss: the backbone centroids keep training).
        assert straight[4]["aux_loss"] == pytest.approx(sum(straight[4].get("z_loss_per_layer", [0.0])), abs=1e-12)
        assert straight[4]["balance_loss"] == straight[4]["distill_loss"] == 0.0
