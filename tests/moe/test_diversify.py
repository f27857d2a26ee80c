"""Expert-diversify: masks, spawned experts, the optimizer's copy, layouts, and the first update."""

import pytest
import torch

from megatron_evomoe.config import EvoMoEOptions
from megatron_evomoe.moe.diversify import expert_masks, expert_weights, rescale_factors
from megatron_evomoe.moe.evolution import moe_layers
from megatron_evomoe.moe.router import RoutingState
from megatron_evomoe.training.loop import setup_session, train_step
from megatron_evomoe.training.data_loading import build_iterator
from megatron_evomoe.training.optimizer_state import optimizer_copy
from tests.distributed import run_ranks
from tests.moe.evomoe_ranks import spawned_expert_weights
from tests.tiny import SyntheticGPTData, tiny_gpt_task, tiny_run

DTS = ["--moe-router-type", "dts", "--evomoe-shared-expert-iters", "2", "--dts-anneal-iters", "2"]


@pytest.mark.parametrize("granularity", ["element", "neuron"])
def test_masked_fraction_matches_the_ratio(granularity):
    options = EvoMoEOptions(mask_ratio=0.3, mask_granularity=granularity)
    fc1, fc2 = expert_masks(4096, 256, options, seed=1, layer_number=2, expert_index=5)
    assert fc1.shape == (4096, 256) and fc2.shape == (256, 4096)
    assert 1 - fc1.float().mean().item() == pytest.approx(0.3, abs=0.02)
    assert 1 - fc2.float().mean().item() == pytest.approx(0.3, abs=0.02)
    if granularity == "neuron":  # a masked hidden unit is a zero row of fc1 and column of fc2
        assert torch.equal(fc1.all(dim=1), ~(~fc1).all(dim=1))
        assert torch.equal(fc1[:, 0], fc2[0, :])


def test_masks_are_pure_functions_of_seed_layer_expert():
    options = EvoMoEOptions(mask_ratio=0.5)
    a = expert_masks(8, 4, options, 1, 1, 0)[0]
    assert torch.equal(a, expert_masks(8, 4, options, 1, 1, 0)[0])
    assert not torch.equal(a, expert_masks(8, 4, options, 1, 1, 1)[0])
    assert not torch.equal(a, expert_masks(8, 4, options, 1, 3, 0)[0])


def _stage_one(session, steps=2):
    """Run the shared-expert stage for ``steps`` optimizer steps (Adam moments become real)."""
    task = tiny_gpt_task()
    data = build_iterator(SyntheticGPTData(64, 16), 0, 2, 0, 1)
    for iteration in range(steps):
        session.controller.before_step(iteration, session.model, session.optimizer)
        train_step(session, task, data)
    return task, data


def test_spawned_experts_are_distinct_masked_copies_and_the_master_copy_follows(megatron_world_of_one):
    run = tiny_run(*DTS, "--bf16", "--evomoe-mask-ratio", "0.25", "--clip-grad", "0")
    session = setup_session(run, tiny_gpt_task())
    _stage_one(session)
    layers = moe_layers(session.model)
    shared_moments = {
        id(layer): optimizer_copy(session.optimizer, layer.shared_expert.linear_fc1.weight).state["exp_avg"].clone()
        for layer in layers
    }
    assert all(m.abs().sum() > 0 for m in shared_moments.values())
    session.controller.before_step(2, session.model, session.optimizer)  # T_S: spawn
    for layer in layers:
        shared1 = layer.shared_expert.linear_fc1.weight
        fc1s = []
        for local, global_index in enumerate(layer.local_expert_indices):
            fc1, fc2 = expert_weights(layer.experts, local)
            mask1, mask2 = expert_masks(64, 32, run.model.evomoe, 7, layer.layer_number, global_index)
            assert torch.equal(fc1, shared1 * mask1.to(fc1.dtype))
            assert torch.equal(fc2, layer.shared_expert.linear_fc2.weight * mask2.to(fc2.dtype))
            assert 0.2 < (fc1 == 0).float().mean().item() < 0.3
            copy = optimizer_copy(session.optimizer, fc1)
            assert copy.main.dtype == torch.float32 and copy.main is not fc1  # a real bf16 master copy
            assert torch.equal(copy.main, fc1.float())
            assert torch.equal(copy.state["exp_avg"], shared_moments[id(layer)] * mask1.float())
            fc1s.append(fc1)
        assert all(not torch.equal(fc1s[0], other) for other in fc1s[1:])
        gate = optimizer_copy(session.optimizer, layer.router.weight)
        assert torch.equal(gate.main, layer.router.weight.float())
        assert not gate.state["exp_avg"].any()


def test_reset_zeroes_the_moments(megatron_world_of_one):
    run = tiny_run(*DTS, "--evomoe-optimizer-state", "reset")
    session = setup_session(run, tiny_gpt_task())
    _stage_one(session)
    layer = moe_layers(session.model)[0]
    fc1 = expert_weights(layer.experts, 0)[0]
    copy = optimizer_copy(session.optimizer, fc1)
    copy.state["exp_avg"].fill_(1.0)
    copy.state["exp_avg_sq"].fill_(1.0)
    session.controller.before_step(2, session.model, session.optimizer)
    assert not copy.state["exp_avg"].any() and not copy.state["exp_avg_sq"].any()


def test_first_update_after_spawning_is_adamw_from_the_spawned_state(megatron_world_of_one):
    """Oracle: AdamW written out by hand, from the masked-copy moments and the step's gradient."""
    run = tiny_run(*DTS, "--clip-grad", "0", "--lr", "1e-2", "--lr-decay-style", "constant")
    session = setup_session(run, tiny_gpt_task())
    task, data = _stage_one(session)
    session.controller.before_step(2, session.model, session.optimizer)  # spawns
    layer = moe_layers(session.model)[0]
    weight = expert_weights(layer.experts, 1)[0]
    state = optimizer_copy(session.optimizer, weight).state
    w0, m0, v0 = weight.detach().clone(), state["exp_avg"].clone(), state["exp_avg_sq"].clone()
    step = float(state["step"]) + 1
    group = next(g for g in session.optimizer.param_groups if any(p is weight for p in g["params"]))
    lr, wd, (b1, b2), eps = group["lr"], group["weight_decay"], group["betas"], group["eps"]
    means, _, applied = train_step(session, task, data)
    assert applied
    grad = weight.main_grad
    m = b1 * m0 + (1 - b1) * grad
    v = b2 * v0 + (1 - b2) * grad * grad
    expected = w0 * (1 - lr * wd) - lr * (m / (1 - b1**step)) / ((v / (1 - b2**step)).sqrt() + eps)
    assert torch.allclose(weight.detach(), expected, atol=1e-6)
    assert not torch.equal(weight.detach(), w0)


def test_after_diversify_with_no_mask_and_infinite_temperature_the_layer_is_the_dense_ffn(megatron_world_of_one):
    run = tiny_run(*DTS, "--evomoe-mask-ratio", "0.0")
    session = setup_session(run, tiny_gpt_task())
    layer = moe_layers(session.model)[0]
    session.controller.diversify(session.model, session.optimizer)
    layer.eval()
    layer.set_routing_state(RoutingState(iteration=2, phase="gate_sparsify", temperature=1e9))
    hidden = torch.randn(16, 2, 32)
    moe_out, _ = layer(hidden)
    dense_out, _ = layer.shared_expert(hidden)
    # Every expert kept with weight 1/N (sum of g' = 1): the mixture equals the shared FFN.
    assert torch.allclose(moe_out, dense_out, atol=1e-5)


def test_ep1_and_ep2_spawn_identical_experts():
    single = run_ranks(spawned_expert_weights, 1, DTS)[0]
    parts = run_ranks(spawned_expert_weights, 2, DTS + ["--expert-model-parallel-size", "2"])
    merged = {**parts[0], **parts[1]}
    assert set(merged) == set(single)
    for key, (fc1, fc2) in single.items():
        assert torch.equal(merged[key][0], fc1) and torch.equal(merged[key][1], fc2)


def test_distributed_optimizer_shards_follow_the_spawned_weights():
    from tests.moe.evomoe_ranks import master_copies_follow_spawn_under_distributed_optimizer

    flags = DTS + ["--bf16", "--use-distributed-optimizer"]
    checked = run_ranks(master_copies_follow_spawn_under_distributed_optimizer, 2, flags)
    assert all(count > 0 for count in checked)  # each rank owns part of the rewritten weights
    with pytest.raises(ValueError, match="masked_copy needs the full optimizer state"):
        tiny_run(*flags, "--evomoe-optimizer-state", "masked_copy")


@pytest.mark.parametrize("rescale", [False, True])
def test_rescaled_masks_keep_the_expected_output_of_a_masked_linear_layer(rescale):
    """E over masks of (m * W * s) x with the code's factor s = W x with the rescale (s = 1/(1 - r)),
    (1 - r) W x without. Monte Carlo over 400 independent masks of one fc1, against a 5-sigma band."""
    r, num_masks = 0.3, 400
    options = EvoMoEOptions(mask_ratio=r, mask_rescale=rescale)
    gen = torch.Generator().manual_seed(3)
    weight, x = torch.randn(64, 32, generator=gen, dtype=torch.float64), torch.randn(32, generator=gen, dtype=torch.float64)
    scale = rescale_factors(options)[0]
    outputs = torch.stack([(weight * expert_masks(64, 32, options, 1, 1, e)[0] * scale) @ x for e in range(num_masks)])
    expected = weight @ x * (1.0 if rescale else 1 - r)
    # Each output element averages independent terms w_jk x_k m_jk scale: its std over masks is
    # scale * sqrt(r (1 - r) sum_k (w_jk x_k)^2).
    sigma = scale * torch.sqrt(r * (1 - r) * ((weight * x) ** 2).sum(dim=1)) / num_masks**0.5
    assert torch.all((outputs.mean(dim=0) - expected).abs() < 5 * sigma)
    other = weight @ x * ((1 - r) if rescale else 1.0)  # the other hypothesis is far outside the band
    assert (outputs.mean(dim=0) - other).abs().max() > 5 * sigma.max()


@pytest.mark.parametrize("granularity", ["element", "neuron"])
def test_mask_rescale_divides_the_kept_weights_by_hand(granularity, megatron_world_of_one):
    """--evomoe-mask-rescale: element masks scale fc1 and fc2 by 1/(1 - r); neuron masks only fc2, so
    a spawned expert's output is exactly sum over kept units of fc2[:, j] / (1 - r) gelu(fc1[j] x)."""
    r = 0.25
    run = tiny_run(*DTS, "--evomoe-mask-ratio", str(r), "--evomoe-mask-granularity", granularity,
                   "--evomoe-mask-rescale")
    session = setup_session(run, tiny_gpt_task())
    session.controller.diversify(session.model, session.optimizer)
    layer = moe_layers(session.model)[0]
    shared1, shared2 = layer.shared_expert.linear_fc1.weight, layer.shared_expert.linear_fc2.weight
    for local, global_index in enumerate(layer.local_expert_indices):
        fc1, fc2 = expert_weights(layer.experts, local)
        mask1, mask2 = expert_masks(64, 32, run.model.evomoe, 7, layer.layer_number, global_index)
        fc1_scale = 1 / (1 - r) if granularity == "element" else 1.0
        assert torch.allclose(fc1, shared1 * mask1 * fc1_scale, rtol=1e-6, atol=0)
        assert torch.allclose(fc2, shared2 * mask2 / (1 - r), rtol=1e-6, atol=0)
        assert torch.equal(optimizer_copy(session.optimizer, fc2).main, fc2)  # the master copy follows
    if granularity == "neuron":
        x = torch.randn(5, 32)
        kept = mask1[:, 0]
        by_hand = torch.nn.functional.gelu(x @ shared1[kept].t()) @ (shared2[:, kept] / (1 - r)).t()
        with torch.no_grad():
            output, _ = layer.experts.local_experts[local](x)
        assert torch.allclose(output, by_hand, atol=1e-5)
