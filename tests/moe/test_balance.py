"""The router z-loss (ST-MoE, --moe-z-loss-coeff) against a hand computation, for every router with logits."""

import numpy as np
import pytest
import torch

from megatron_evomoe.errors import InputError
from megatron_evomoe.moe.balance import router_z_loss
from megatron_evomoe.moe.router_config import RoutingState
from megatron_evomoe.moe.routers import router_class
from tests.tiny import VOCAB, tiny_run

COEFF = 1e-2


def hand_z_loss(hidden: torch.Tensor, weight: torch.Tensor) -> float:
    """coeff * mean over tokens of (log sum_i exp(x . w_i))^2, in numpy float64 (ST-MoE eq. 5)."""
    logits = hidden.double().numpy() @ weight.double().numpy().T
    top = logits.max(axis=1, keepdims=True)
    logsumexp = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    return COEFF * float(np.mean(logsumexp**2))


def test_router_z_loss_is_the_mean_squared_logsumexp():
    logits = torch.tensor([[0.0, 0.0], [1.0, -1.0], [3.0, 2.0]])
    expected = COEFF * np.mean([np.log(2.0) ** 2, np.log(np.e + 1 / np.e) ** 2, np.log(np.e**3 + np.e**2) ** 2])
    assert router_z_loss(logits, 3, COEFF).item() == pytest.approx(expected, rel=1e-6)
    # A sequence shard: its term is its tokens' share of the whole sequence's mean.
    halves = router_z_loss(logits[:1], 3, COEFF) + router_z_loss(logits[1:], 3, COEFF)
    assert halves.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("name", ["switch", "gshard", "dts", "stablemoe", "base"])
def test_every_router_with_logits_adds_the_z_loss_of_its_logits(name, megatron_world_of_one):
    router = router_class(name)(tiny_run("--moe-router-type", name, "--moe-z-loss-coeff", str(COEFF)).model)
    router.set_layer_number(1)
    router.weight.data.copy_(torch.randn(4, 32, generator=torch.Generator().manual_seed(5)))
    if name == "dts":  # the logits x W_g, before the Gumbel noise and the temperature
        router.set_routing_state(RoutingState(iteration=3, phase="gate_sparsify", temperature=0.7))
    hidden, ids = torch.randn(48, 32), torch.randint(0, VOCAB, (48,))
    decision = router(hidden, ids)
    expected = hand_z_loss(hidden, router.weight.detach())
    assert decision.logged_losses["z"].item() == pytest.approx(expected, rel=1e-5)
    assert router_class(name).loss_names(router.config)[-1] == "z"  # logged as z_loss, per MoE layer
    router.eval()
    assert "z" not in router(hidden, ids).logged_losses  # a training loss


def test_the_z_loss_trains_the_gate():
    torch.manual_seed(0)
    flags = ("--moe-z-loss-coeff", str(COEFF), "--moe-router-load-balancing-type", "none")
    router = router_class("switch")(tiny_run(*flags).model)
    hidden = torch.randn(48, 32)
    router(hidden, None).aux_loss.backward()
    weight = router.weight.detach().double().requires_grad_(True)
    logits = hidden.double() @ weight.t()
    (COEFF * torch.logsumexp(logits, dim=1).square().mean()).backward()
    torch.testing.assert_close(router.weight.grad.double(), weight.grad, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("name", ["hash", "dselectk"])
def test_routers_without_logits_reject_a_z_loss(name):
    assert tiny_run("--moe-router-type", name, "--moe-z-loss-coeff", "0").model.moe_router.z_loss_coeff == 0.0
    with pytest.raises(InputError, match=r"^--moe-z-loss-coeff 0.001: this router has no logits for a z-loss$"):
        tiny_run("--moe-router-type", name, "--moe-z-loss-coeff", "1e-3")
    with pytest.raises(InputError, match=r"^--moe-z-loss-coeff must be >= 0$"):
        tiny_run("--moe-z-loss-coeff", "-1")


def test_tensorboard_shows_megatron_cores_tags_without_the_coefficient():
    from megatron_evomoe.training.tensorboard_tags import TagContext, tensorboard_scalars

    flags = ("--moe-z-loss-coeff", "1e-3", "--moe-router-load-balancing-type", "global_aux_loss")
    losses = router_class("switch").megatron_loss_names(tiny_run(*flags).model.moe_router)
    assert losses == {"z": ("z_loss", 1e-3), "balance": ("global_load_balancing_loss", 0.01)}
    stablemoe = tiny_run("--moe-router-type", "stablemoe", *flags).model.moe_router
    assert router_class("stablemoe").megatron_loss_names(stablemoe) == {"z": ("z_loss", 1e-3)}  # eq. 4 is not megatron's
    context = TagContext(moe_layer_numbers=(1, 3), megatron_losses=losses, per_layer_logging=True)
    record = {"iteration": 5, "z_loss": 3e-3, "z_loss_per_layer": [2e-3, 4e-3]}
    assert tensorboard_scalars(record, context) == [
        ("z_loss", pytest.approx(3.0), 5), ("moe/z_loss_layer_1", pytest.approx(2.0), 5),
        ("moe/z_loss_layer_3", pytest.approx(4.0), 5),
    ]
