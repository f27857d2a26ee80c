"""The phase controller spawns the experts once, and a checkpoint tells it they were (controller state)."""

import pytest

from megatron_evomoe.errors import InputError
from megatron_evomoe.moe.evolution import PhaseController
from tests.tiny import tiny_run

DTS = ["--moe-router-type", "dts", "--evomoe-shared-expert-iters", "2", "--dts-anneal-iters", "2"]


def _diversified(transition) -> bool:
    return any(event.startswith("expert-diversify") for event in transition.events)


def test_experts_are_spawned_once_and_the_state_says_when():
    controller = PhaseController(tiny_run(*DTS).model)
    assert controller.state_dict() == {"experts_spawned_at": None}
    assert not _diversified(controller.before_step(1, []))
    assert _diversified(controller.before_step(2, []))
    assert controller.state_dict() == {"experts_spawned_at": 2}
    assert not _diversified(controller.before_step(2, []))  # e.g. the step is retried


def test_a_checkpoint_whose_experts_exist_is_not_diversified_again():
    resumed = PhaseController(tiny_run(*DTS).model)
    resumed.load_state_dict({"experts_spawned_at": 2})
    assert not _diversified(resumed.before_step(2, []))
    fresh = PhaseController(tiny_run(*DTS).model)
    fresh.load_state_dict(None)  # a checkpoint from before the controller had state
    assert _diversified(fresh.before_step(2, []))


def test_experts_spawned_elsewhere_than_this_runs_ts_are_an_error():
    controller = PhaseController(tiny_run(*DTS).model)
    with pytest.raises(InputError, match="spawned before iteration 5 .* pass --evomoe-shared-expert-iters 5"):
        controller.load_state_dict({"experts_spawned_at": 5})
    PhaseController(tiny_run().model).load_state_dict({"experts_spawned_at": 5})  # Switch spawns nothing
