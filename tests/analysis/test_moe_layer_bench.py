"""bench_moe_layer: one JSON object per configuration with the promised keys and consistent numbers.

No timing is asserted (speed targets live in the benchmark's printed numbers); memory is: the
activations a layer saves for backward are a deterministic count of bytes.
"""

import importlib.util
import json
import os

import pytest

from megatron_evomoe.analysis.moe_layer_bench import BenchCase, dense_ffn_size, measure

REQUIRED = {"tokens", "num_experts", "moe_ms", "dense_ms", "ratio", "moe_mem_mb", "dense_mem_mb", "mem_ratio"}


def _tool():
    path = os.path.join(os.path.dirname(__file__), "..", "..", "tools", "bench_moe_layer.py")
    spec = importlib.util.spec_from_file_location("bench_moe_layer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(capsys, *argv):
    base = ["--hidden", "32", "--ffn", "64", "--repeats", "2", "--warmup", "0", "--json"]
    assert _tool().main([*base, *argv]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]


def _close(ratio, a, b):
    return abs(ratio - a / b) < 1e-3 * ratio + 1e-4


def test_json_lines(megatron_world_of_one, capsys):
    results = _run(capsys, "--tokens", "16", "32", "--experts", "2")
    assert [(r["tokens"], r["num_experts"]) for r in results] == [(16, 2), (32, 2)]
    for r in results:
        assert REQUIRED <= set(r)
        assert r["moe_ms"] > 0 and r["dense_ms"] > 0
        assert _close(r["ratio"], r["moe_ms"], r["dense_ms"])
        assert r["memory_kind"] == "saved_activations" and r["moe_mem_mb"] > r["dense_mem_mb"] > 0
        assert r["router"] == "switch" and r["experts_per_token"] == 1.0 and r["dense_ffn"] == 64
        assert r["grouped_gemm"] is True  # the project's default


def test_compare_times_megatron_core_and_the_per_expert_loop(megatron_world_of_one, capsys):
    (r,) = _run(capsys, "--tokens", "24", "--experts", "4", "--compare", "megatron-core", "per-expert-loop")
    for name in ("moe", "dense", "megatron", "loop"):
        assert r[f"{name}_ms"] > 0 and r[f"{name}_mem_mb"] > 0
    assert _close(r["megatron_ratio"], r["megatron_ms"], r["dense_ms"])
    assert _close(r["moe_vs_megatron"], r["moe_ms"], r["megatron_ms"])
    assert _close(r["grouped_vs_loop"], r["moe_ms"], r["loop_ms"])
    assert r["megatron_topk"] == 1


def test_other_routers_compare_with_the_dense_ffn_of_equal_flops(megatron_world_of_one, capsys):
    (gshard,) = _run(capsys, "--tokens", "24", "--experts", "4", "--router", "gshard", "--compare", "megatron-core")
    # top-2, the second expert kept with probability 2 g2 (random routing, on by default): 1 < k <= 2
    assert 1.0 < gshard["experts_per_token"] <= 2.0 and gshard["megatron_topk"] == 2
    assert gshard["dense_ffn"] == round(gshard["experts_per_token"] * 64)
    (dts,) = _run(capsys, "--tokens", "24", "--experts", "4", "--router", "dts", "--tau", "0.3")
    assert 1.0 <= dts["experts_per_token"] <= 4.0 and dts["tau"] == 0.3
    assert dts["dense_ffn"] == round(dts["experts_per_token"] * 64)


def test_dense_ffn_of_k_experts():
    assert dense_ffn_size(1024, 1.0) == 1024 and dense_ffn_size(1024, 2.0) == 2048
    assert dense_ffn_size(1024, 3.49) == 3574


@pytest.mark.parametrize("grouped", [True, False])
def test_saved_activations_stay_within_the_goal(megatron_world_of_one, grouped):
    """hidden 256, FFN 1024, 8 experts, top-1: at most 1.15x the dense FFN's saved activations
    (the issue's goal; it was 1.34x): the permuted input is gathered again in backward, and
    index_add no longer keeps the expert output."""
    result = measure(BenchCase(64, 8, grouped_gemm=grouped), repeats=1, warmup=0)
    assert result["mem_ratio"] <= 1.15
