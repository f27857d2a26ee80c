"""The routing a trained model is served with is the routing of its last training step, for every
router and both EvoMoE ablations; it travels with the checkpoint to fine-tuning."""

import json
import os

import numpy as np
import pytest
import torch

from megatron_evomoe.moe.evolution import PhaseController
from megatron_evomoe.moe.routers import available_routers
from megatron_evomoe.moe.routers.dts import DTSRouter
from megatron_evomoe.training.checkpointing import META_FILE, checkpoint_dir
from megatron_evomoe.training.loop import checkpoint_routing_state
from tests.distributed import run_ranks
from tests.tiny import tiny_run
from tests.training.layouts import train_and_report

TRAIN_ITERS = 40
CASES = {
    **{router: ["--moe-router-type", router] for router in available_routers()},
    "dts w/o expert-diversify": ["--moe-router-type", "dts", "--no-expert-diversify"],
    "dts w/o gate-sparsify": ["--moe-router-type", "dts", "--no-gate-sparsify"],
    "dts stopped while dense": ["--moe-router-type", "dts", "--evomoe-shared-expert-iters", "10",
                                "--dts-anneal-iters", "60"],
    "stablemoe stopped in stage 1": ["--moe-router-type", "stablemoe", "--stablemoe-stage1-iters", "50"],
}
# (phase, temperature) of step TRAIN_ITERS - 1 = 39, by hand: T_S = T_D - anneal, linear tau.
EXPECTED = {
    "dts": ("top1", 0.3),  # T_S = 2, anneal 2, T_D = 4 (5% + 5% of 40)
    "dts w/o expert-diversify": ("top1", 0.3),
    "dts w/o gate-sparsify": ("top1", 1.0),  # the Switch softmax it trained with, not tau_min
    "dts stopped while dense": ("gate_sparsify", 2.0 - 1.7 * 29 / 60),
    "stablemoe": ("stage2", 1.0),
    "stablemoe stopped in stage 1": ("stage1", 1.0),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_final_state_is_the_state_of_the_last_training_step(case):
    config = tiny_run(*CASES[case], "--train-iters", str(TRAIN_ITERS)).model
    controller = PhaseController(config)
    final = controller.final_routing_state(TRAIN_ITERS)
    assert final == controller.routing_state(TRAIN_ITERS - 1)
    phase, temperature = EXPECTED.get(case, ("sparse", 1.0))
    assert final.phase == phase and final.temperature == pytest.approx(temperature)


def test_without_a_training_length_the_final_state_is_the_end_of_the_schedule():
    for case, flags in CASES.items():
        controller = PhaseController(tiny_run(*flags, "--train-iters", "100000").model)
        end = controller.routing_state(10**9)
        assert (controller.final_routing_state().phase, controller.final_routing_state().temperature) == (
            end.phase, end.temperature), case


def test_the_ablation_is_served_with_the_tau_it_trained_with(megatron_world_of_one):
    config = tiny_run("--moe-router-type", "dts", "--no-gate-sparsify", "--train-iters", str(TRAIN_ITERS)).model
    router = DTSRouter(config)
    torch.manual_seed(0)
    router.weight.data.normal_(0.0, 1.0)
    router.set_routing_state(PhaseController(config).final_routing_state(TRAIN_ITERS))
    router.eval()
    hidden = torch.randn(32, 32)
    logits = hidden.double().numpy() @ router.weight.detach().double().numpy().T
    softmax = np.exp(logits - logits.max(1, keepdims=True))
    softmax /= softmax.sum(1, keepdims=True)  # tau = 1, as in training
    np.testing.assert_allclose(router(hidden, None).probs.detach().sum(1).numpy(), softmax.max(1), rtol=1e-5)


def test_checkpoints_record_the_schedule_and_the_last_steps_routing(tmp_path):
    flags = ["--moe-router-type", "dts", "--no-gate-sparsify", "--train-iters", "5",
             "--evomoe-shared-expert-iters", "2"]
    run_ranks(train_and_report, 1, flags + ["--save", str(tmp_path)])
    meta = json.load(open(os.path.join(checkpoint_dir(str(tmp_path), 5), META_FILE)))
    loaded = checkpoint_routing_state(str(tmp_path))  # what fine-tuning applies
    controller = PhaseController(tiny_run(*flags).model)
    assert meta["routing_schedule"] == {
        "shared_expert_iters": 2, "dts_anneal_iters": 1, "dts_top1_iter": 3,  # anneal: max(1, 5% of 5)
        "expert_diversify": True, "gate_sparsify": False, "dts_top1_noise": False,
    }
    assert meta["routing_state"] == {"iteration": 4, "phase": "top1", "temperature": 1.0}
    assert loaded == controller.routing_state(4)
