"""Each router's defaults against the number in its paper (or official code), and the DTS flag checks.

Configs are built from the plain command line (not ``tests.tiny``, which turns the routers' training
noise off), so what is checked is what a user gets without the flags.
"""

import pytest

from megatron_evomoe.arguments import parse_args
from megatron_evomoe.moe.schedule import resolve_evomoe_phases
from megatron_evomoe.run_config import build_run_config
from tests.tiny import with_required

VOCAB = 128


def _config(*flags: str):
    return build_run_config(parse_args(with_required("--num-experts", "4", *flags)), VOCAB, 1).model


@pytest.mark.parametrize(
    "train_iters, shared, anneal",
    [
        (100_000, 5_000, 5_000),  # EvoMoE sec. V-B, RoBERTa: 5k of 100k steps of stage 1, then 5k annealing
        (200_000, 10_000, 10_000),  # sec. V-C, GPT: 10k of 200k of stage 1 (its annealing: 5k, i.e. 2.5%)
        (300, 15, 15),
        (10, 1, 1),  # at least one step each
    ],
)
def test_evomoe_schedule_defaults_are_the_papers_fractions(train_iters, shared, anneal):
    model = _config("--moe-router-type", "dts", "--train-iters", str(train_iters))
    evomoe = model.moe_router
    assert (evomoe.shared_expert_iters, evomoe.dts_anneal_iters, evomoe.dts_top1_iter) == (
        shared, anneal, shared + anneal,
    )
    assert (evomoe.dts_max_temperature, evomoe.dts_min_temperature) == (2.0, 0.3)  # "from 2.0 to 0.3"
    assert evomoe.dts_threshold == 0.001  # sec. V-A: "threshold c ... as 0.001"
    assert model.moe_router.aux_loss_coeff == 0.1  # sec. V-A: balance loss 0.1 for EvoMoE
    assert not evomoe.dts_top1_noise  # departs from Algorithm 2 on purpose (docs/routers.md)


def test_explicit_schedule_flags_win_and_ablations_follow():
    evomoe = _config("--moe-router-type", "dts", "--train-iters", "1000", "--evomoe-shared-expert-iters", "30",
                     "--dts-anneal-iters", "70").moe_router
    assert (evomoe.shared_expert_iters, evomoe.dts_anneal_iters, evomoe.dts_top1_iter) == (30, 70, 100)
    evomoe = _config("--moe-router-type", "dts", "--train-iters", "1000", "--dts-top1-iter", "400").moe_router
    assert (evomoe.shared_expert_iters, evomoe.dts_anneal_iters, evomoe.dts_top1_iter) == (50, 50, 400)
    no_diversify = _config("--moe-router-type", "dts", "--train-iters", "1000", "--no-expert-diversify").moe_router
    assert (no_diversify.shared_expert_iters, no_diversify.dts_top1_iter) == (0, 50)
    assert resolve_evomoe_phases(1000, expert_diversify=False).top1_iter == 50


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--dts-threshold", "1.0"], "--dts-threshold must be in [0, 1), got 1.0"),
        (["--dts-threshold", "-0.1"], "--dts-threshold must be in [0, 1), got -0.1"),
        (["--evomoe-shared-expert-iters", "-1"], "--evomoe-shared-expert-iters must be >= 0, got -1"),
        (["--dts-anneal-iters", "-5"], "--dts-anneal-iters must be >= 0, got -5"),
        (["--dts-top1-iter", "-2"], "--dts-top1-iter must be >= 0, got -2"),
        (["--evomoe-shared-expert-iters", "10", "--dts-top1-iter", "5"], "--dts-top1-iter 5 is before the end"),
    ],
)
def test_bad_dts_flags_are_one_line_errors_naming_the_flag(flags, message):
    with pytest.raises(ValueError) as error:
        _config("--moe-router-type", "dts", *flags)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_switch_jitter_default_is_the_switch_papers():
    # Switch Transformers Table 11: input jitter was the best exploration strategy; 1e-2 is the
    # authors' Mesh TensorFlow default (switch_jitter).
    assert _config("--moe-router-type", "switch").moe_router.jitter_eps == 1e-2
    assert _config("--moe-router-type", "switch", "--moe-input-jitter-eps", "0").moe_router.jitter_eps == 0.0


def test_gshard_random_routing_is_on_by_default_and_can_be_turned_off():
    # GShard Algorithm 1, line 17: the 2nd expert is used only if 2 * g2 > U(0, 1).
    assert _config("--moe-router-type", "gshard").moe_router.gshard_random_routing is True
    assert _config("--moe-router-type", "gshard", "--no-gshard-random-routing").moe_router.gshard_random_routing is False


def test_switch_balance_loss_weight_is_the_switch_papers():
    # Switch sec. 2.2: "alpha = 10^-2 ... sufficiently large to ensure load balancing". The EvoMoE
    # paper's comparison uses 0.1 instead; tools/compare_routers.py --protocol paper sets that.
    assert _config("--moe-router-type", "switch").moe_router.aux_loss_coeff == 0.01
