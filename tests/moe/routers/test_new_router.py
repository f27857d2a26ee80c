"""Adding a router is one file and one registry line: a uniform random router (a test fixture in
``uniform_router.py``) gets its flags, validation and a training run from the command line path."""

import json

import pytest

from megatron_evomoe.arguments import build_parser, parse_args
from megatron_evomoe.errors import InputError
from megatron_evomoe.moe.routers import available_routers, register_router, unregister_router
from megatron_evomoe.run_config import build_run_config
from tests.distributed import run_ranks
from tests.tiny import VOCAB, tiny_args

UNIFORM = "tests.moe.routers.uniform_router:UniformRouter"


@pytest.fixture
def uniform_registered():
    register_router("uniform", UNIFORM)  # the one registry line
    yield
    unregister_router("uniform")


def test_its_flags_come_from_its_config(uniform_registered):
    parser = build_parser("")
    action = next(a for a in parser._actions if "--uniform-gate-weight" in a.option_strings)
    assert (action.type, action.default, action.help) == (float, 1.0, "Weight of the chosen expert's output.")
    assert "uniform" in next(a for a in parser._actions if "--moe-router-type" in a.option_strings).choices
    aux = next(a for a in parser._actions if "--moe-aux-loss-coeff" in a.option_strings)
    assert "uniform 0.0" in aux.help  # its default balance weight, listed with the others


def test_its_validation_is_a_one_line_flag_error(uniform_registered):
    args = parse_args(tiny_args("--moe-router-type", "uniform", "--uniform-gate-weight", "0"))
    with pytest.raises(InputError, match=r"^--uniform-gate-weight must be > 0, got 0.0$"):
        build_run_config(args, VOCAB, 1)
    args = parse_args(tiny_args("--moe-router-type", "uniform", "--moe-router-topk", "2"))
    with pytest.raises(InputError, match="--moe-router-topk 2: this router takes k = 1"):
        build_run_config(args, VOCAB, 1)


def _train(log_path: str) -> dict:
    """Register the router in this (fresh) process and train through ``training.entry.main``."""
    from tests.training import tiny_trainer

    register_router("uniform", UNIFORM)
    session = tiny_trainer.main(
        ["--moe-router-type", "uniform", "--uniform-gate-weight", "0.5", "--train-iters", "3", "--log-json", log_path]
    )
    router = session.model[0].module.decoder.layers[0].mlp.router
    return {
        "router": type(router).__name__,
        "weight": session.run.model.moe_router.uniform_gate_weight,
        "records": [json.loads(line) for line in open(log_path)],
    }


def test_it_trains_from_the_command_line(tmp_path):
    result = run_ranks(_train, 1, str(tmp_path / "log.jsonl"))[0]
    assert (result["router"], result["weight"]) == ("UniformRouter", 0.5)
    records = result["records"]
    assert [r["iteration"] for r in records] == [1, 2, 3]
    tokens = 4 * 16  # global batch x sequence
    for record in records:
        assert record["experts_per_token"] == [1.0, 1.0]  # top-1 on both MoE layers
        assert [sum(layer) for layer in record["tokens_per_expert"]] == [tokens, tokens]
        assert record["aux_loss"] == 0.0 and record["lm_loss"] == pytest.approx(record["lm_loss"])  # finite
    assert "uniform" not in available_routers()  # registered in the training process only
