"""--log-routing-probe: the per-token routing record, its token order, and an unchanged trajectory."""

import pytest
import torch

from megatron_evomoe.training.routing_probe import RoutingProbe
from tests.tiny import SyntheticGPTData

EVOMOE = ["--moe-router-type", "dts", "--evomoe-shared-expert-iters", "2", "--dts-anneal-iters", "2",
          "--train-iters", "6", "--log-interval", "2", "--hidden-dropout", "0.1"]


@pytest.fixture
def train(train_in_process):
    return lambda *extra: train_in_process(*EVOMOE, *extra)


def test_the_probe_logs_every_tokens_expert_and_leaves_training_unchanged(train):
    plain = train()
    probed = train("--log-routing-probe", "20")
    assert [r["lm_loss"] for r in probed] == [r["lm_loss"] for r in plain]  # bitwise
    assert [r["grad_norm"] for r in probed] == [r["grad_norm"] for r in plain]
    assert all("routing_probe" not in r for r in plain)
    valid = SyntheticGPTData(64, 16, 1)  # tiny_gpt_task's validation split
    expected_ids = torch.cat([valid[0]["tokens"], valid[1]["tokens"]])[:20].tolist()  # 20 tokens = 2 samples
    for record in probed:
        probe = record["routing_probe"]
        assert probe["token_ids"] == expected_ids
        assert len(probe["experts"]) == len(probe["num_experts"]) == 2  # two MoE layers
        assert all(len(layer) == 20 for layer in probe["experts"] + probe["num_experts"])
    by_phase = {r["phase"]: r["routing_probe"] for r in probed}
    assert by_phase["expert_diversify"]["experts"] == [[-1] * 20] * 2  # no router in stage 1
    assert all(0 <= e < 4 for layer in by_phase["top1"]["experts"] for e in layer)
    assert by_phase["top1"]["num_experts"] == [[1] * 20] * 2


def test_tokens_are_put_back_in_reading_order_across_sequence_parallel_shards():
    """megatron routes [s, b] row-major, each TP rank one slice of s; the record is b-major."""
    probe = RoutingProbe.__new__(RoutingProbe)
    s, b = 4, 2
    probe.batch = {"tokens": torch.zeros(b, s)}
    probe.num_tokens = 7
    probe.layer_index = {1: 0}
    probe.token_ids = list(range(7))
    # Tag every token by its reading-order position p = batch * s + position.
    tags = torch.arange(b * s).view(b, s).t()  # [s, b] as megatron holds them
    shards = [(rank, torch.stack([tags[2 * rank:2 * rank + 2].reshape(-1)] * 2).tolist()) for rank in (1, 0)]
    record = probe._assemble({0: shards})
    assert record.experts == [[0, 1, 2, 3, 4, 5, 6]]
    # The gate statistics (rows 2 and 3 of the hook's table) travel the same way.
    shards = [(rank, torch.stack([tags[2 * rank:2 * rank + 2].reshape(-1).double()] * 4).tolist()) for rank in (1, 0)]
    record = probe._assemble({0: shards})
    assert record.gate_entropy == record.gate_margin == [[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]]
