"""Every router flag keeps its Megatron-LM / earlier name, default and meaning now that the flags are
generated from the routers' Config classes (the table below is the command line as documented in
docs/routers.md, written out by hand)."""

import pytest

from megatron_evomoe.arguments import build_parser, parse_args
from megatron_evomoe.moe.routers import router_class, router_config_class
from megatron_evomoe.run_config import build_run_config
from tests.tiny import VOCAB, with_required

PARSER_DEFAULTS = {
    # flag: parser default
    "--moe-router-type": "switch",
    "--moe-aux-loss-coeff": None,  # the router's own (switch 0.01, ..., dts 0.1)
    "--moe-router-topk": None,  # the router's own (gshard 2, dselectk 2, others 1)
    "--moe-router-load-balancing-type": None,  # the router's own: aux_loss (megatron-core's default)
    "--moe-z-loss-coeff": None,  # off (megatron-core's default)
    "--moe-input-jitter-eps": 0.01,
    "--gshard-random-routing": True,
    "--base-auction-epsilon": 1e-4,
    "--base-auction-max-rounds": 10000,
    "--hash-type": "random",
    "--hash-frequency-samples": 2000,
    "--stablemoe-stage1-iters": None,  # 10% of --train-iters
    "--stablemoe-distill-coeff": 0.3,
    "--stablemoe-distill-dim": 50,
    "--dselectk-gamma": 1.0,
    "--dselectk-entropy-coeff": None,  # 1e-6 x micro-batch tokens
    "--evomoe-shared-expert-iters": None,  # 5% of --train-iters
    "--evomoe-mask-ratio": 0.2,
    "--evomoe-mask-granularity": "element",
    "--evomoe-optimizer-state": None,  # masked_copy, reset with --use-distributed-optimizer
    "--no-expert-diversify": False,
    "--no-gate-sparsify": False,
    "--dts-threshold": 0.001,
    "--dts-max-temperature": 2.0,
    "--dts-min-temperature": 0.3,
    "--dts-anneal-iters": None,
    "--dts-temperature-schedule": "linear",
    "--dts-top1-iter": None,
    "--dts-top1-noise": False,
}


def test_router_flags_keep_their_names_and_defaults():
    actions = {option: action for action in build_parser("")._actions for option in action.option_strings}
    assert "--no-gshard-random-routing" in actions
    assert {flag: actions[flag].default for flag in PARSER_DEFAULTS} == PARSER_DEFAULTS
    assert actions["--evomoe-optimizer-state"].choices == ["reset", "masked_copy"]
    assert actions["--hash-type"].choices == ["random", "balanced"]
    balancing = actions["--moe-router-load-balancing-type"].choices
    assert balancing == ["aux_loss", "seq_aux_loss", "global_aux_loss", "none"]  # megatron-core's, without sinkhorn
    assert actions["--dts-temperature-schedule"].choices == ["linear", "exponential", "cosine"]


@pytest.mark.parametrize(
    "router, aux, topk",
    [("switch", 0.01, 1), ("gshard", 0.01, 2), ("base", 0.0, 1), ("hash", 0.0, 1), ("stablemoe", 0.3, 1),
     ("dselectk", 0.0, 2), ("dts", 0.1, 1)],
)
def test_shared_flags_default_to_the_routers_own_values(router, aux, topk):
    model = build_run_config(parse_args(with_required("--num-experts", "4", "--moe-router-type", router)), VOCAB, 1).model
    assert (model.moe_router_type, model.moe_router.aux_loss_coeff, model.moe_router_topk) == (router, aux, topk)
    assert type(model.moe_router) is router_class(router).Config is router_config_class(router)  # the gate's own


def test_run_dependent_defaults_are_resolved():
    run = build_run_config(parse_args(with_required("--num-experts", "4", "--moe-router-type", "stablemoe",
                                                    "--train-iters", "250")), VOCAB, 1)
    assert run.model.moe_router.stablemoe_stage1_iters == 25  # 10% of --train-iters
    dts = build_run_config(parse_args(with_required("--num-experts", "4", "--moe-router-type", "dts",
                                                    "--use-distributed-optimizer")), VOCAB, 1).model.moe_router
    assert dts.optimizer_state == "reset"


def test_a_bad_value_of_another_routers_flag_is_still_an_error():
    # As before the flags were generated: scripts that switch routers never uncover a bad value later.
    with pytest.raises(ValueError, match=r"--dts-threshold must be in \[0, 1\), got 2.0"):
        build_run_config(parse_args(with_required("--num-experts", "4", "--dts-threshold", "2")), VOCAB, 1)
