"""bench_moe_layer: one JSON object per configuration with the promised keys and consistent numbers."""

import importlib.util
import json
import os

REQUIRED = {"tokens", "num_experts", "moe_ms", "dense_ms", "ratio", "moe_mem_mb", "dense_mem_mb", "mem_ratio"}


def _tool():
    path = os.path.join(os.path.dirname(__file__), "..", "..", "tools", "bench_moe_layer.py")
    spec = importlib.util.spec_from_file_location("bench_moe_layer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_json_lines(megatron_world_of_one, capsys):
    argv = ["--tokens", "16", "32", "--experts", "2", "--hidden", "32", "--ffn", "64", "--repeats", "2",
            "--warmup", "0", "--json"]
    assert _tool().main(argv) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    results = [json.loads(line) for line in lines]
    assert [(r["tokens"], r["num_experts"]) for r in results] == [(16, 2), (32, 2)]
    for r in results:
        assert REQUIRED <= set(r)
        assert r["moe_ms"] > 0 and r["dense_ms"] > 0
        assert abs(r["ratio"] - r["moe_ms"] / r["dense_ms"]) < 1e-3 * r["ratio"] + 1e-4
        assert r["memory_kind"] == "saved_activations" and r["moe_mem_mb"] > r["dense_mem_mb"] > 0
