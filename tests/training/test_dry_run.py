"""--dry-run: parameter counts from the meta-device model, the memory formula, the report."""

import pytest

from megatron_evomoe import memory_estimate as mem
from megatron_evomoe.models.gpt import build_gpt_model
from megatron_evomoe.training.dry_run import count_parameters, estimate, format_report
from tests.tiny import tiny_gpt_task, tiny_run


@pytest.mark.parametrize("router", ["switch", "dts"])
def test_counts_equal_the_real_model(router, megatron_world_of_one):
    run = tiny_run("--moe-router-type", router)
    inventory = count_parameters(run, tiny_gpt_task())
    model = build_gpt_model(run.model)
    params = dict(model.named_parameters())
    assert inventory.total == sum(p.numel() for p in params.values())
    experts = sum(p.numel() for n, p in params.items() if ".experts." in n)
    assert inventory.expert_total == experts == 2 * 4 * 2 * 32 * 64  # 2 MoE layers x 4 experts x fc1 + fc2
    shared = sum(p.numel() for n, p in params.items() if "shared_expert" in n)
    assert inventory.shared_expert_total == shared == (2 * 2 * 32 * 64 if router == "dts" else 0)
    # One expert per token: everything but 3 of the 4 experts per layer (and the unused shared expert).
    assert inventory.active_per_token(1) == inventory.total - shared - experts * 3 / 4


def test_pipeline_stages_split_layers_and_keep_a_tied_embedding_copy(megatron_world_of_one):
    run = tiny_run("--pipeline-model-parallel-size", "2", world_size=2)
    inventory = count_parameters(run, tiny_gpt_task())
    embedding = run.model.vocab_size * 32
    first, last = inventory.stages
    assert first.total + last.total == inventory.total + embedding  # the last stage's output-layer copy
    assert first.expert == last.expert == inventory.expert_total / 2  # MoE on layers 0 and 2


def test_static_bytes_per_parameter():
    assert sum(vars(mem.static_bytes_per_param(True)).values()) == 18  # Megatron-LM's figure for bf16 + Adam
    assert sum(vars(mem.static_bytes_per_param(False)).values()) == 16
    weights, grads, optimizer = mem.rank_static_bytes(100, 40, True, True, data_parallel=4, expert_data_parallel=2)
    assert (weights, grads, optimizer) == (280, 560, 12 * (100 / 4 + 40 / 2))


def test_activation_formula_by_hand():
    shape = mem.ActivationShape(seq_length=4, micro_batch_size=2, hidden_size=8, ffn_hidden_size=32,
                                num_attention_heads=2)
    n, h = 8, 8
    assert mem.attention_block_bytes(shape) == 15 * n * h
    assert mem.dense_ffn_bytes(shape) == n * (3 * 8 + 4 * 32)  # 19 n h at f = 4 h
    assert mem.moe_ffn_bytes(shape, 4, 32, 1) == n * (3 * 8 + 13 * 4 + 2 * 8 + 6 * 32 + 20)
    unfused = mem.ActivationShape(4, 2, 8, 32, 2, fused_attention=False)
    assert mem.attention_block_bytes(unfused) == 15 * n * h + 5 * 2 * 16 * 2
    fp32_tp2 = mem.ActivationShape(4, 2, 8, 32, 2, tensor_parallel=2, bytes_per_value=4)
    assert mem.dense_ffn_bytes(fp32_tp2) == mem.dense_ffn_bytes(shape)  # x2 bytes, /2 TP
    assert [mem.in_flight_microbatches(s, 4, 8) for s in range(4)] == [4, 3, 2, 1]
    assert mem.in_flight_microbatches(0, 4, 2) == 2 and mem.in_flight_microbatches(0, 1, 8) == 1


def test_report_of_an_expert_parallel_dts_run(megatron_world_of_one):
    run = tiny_run("--moe-router-type", "dts", "--expert-model-parallel-size", "2", "--bf16", world_size=2)
    report = estimate(run, count_parameters(run, tiny_gpt_task()))
    (rank,) = report.stages
    assert rank.expert_params == report.inventory.expert_total / 2
    assert rank.weights == 2 * (rank.dense_params + rank.expert_params)
    assert report.peak_experts_per_token == 4 and rank.activations_peak > rank.activations
    text = format_report(run, report, "tiny-gpt")
    assert "configuration valid for world size 2" in text and "global 4 = micro 2 x DP 2 x 1 micro-batches" in text
    assert "at the DTS dense start (4 experts/token)" in text
