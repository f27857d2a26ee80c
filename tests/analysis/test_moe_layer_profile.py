"""profile_moe_layer: per-operator times of the MoE layer and the dense FFN."""

import importlib.util
import json
import os

import pytest
import torch

from megatron_evomoe.analysis.moe_layer_profile import CpuTimePerOp


def _tool():
    path = os.path.join(os.path.dirname(__file__), "..", "..", "tools", "profile_moe_layer.py")
    spec = importlib.util.spec_from_file_location("profile_moe_layer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("timer", ["cpu", "profiler"])
def test_operators_of_both_modules(megatron_world_of_one, capsys, timer):
    argv = ["--tokens", "32", "--experts", "4", "--hidden", "32", "--ffn", "64", "--profiles", "1",
            "--timer", timer, "--json"]
    assert _tool().main(argv) == 0
    (result,) = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert result["experts"] == "GroupedGemmExperts"
    assert result["moe"]["aten::_grouped_mm"] > 0 and "aten::_grouped_mm" not in result["dense"]
    assert result["dense"]["aten::mm"] > 0


def test_cpu_timer_counts_each_aten_call_once():
    x = torch.ones(4, 4)
    with CpuTimePerOp() as timer:
        (x @ x).relu().sum()
    assert {"aten::mm", "aten::relu", "aten::sum"} <= set(timer.ms)
    assert all(ms >= 0 for ms in timer.ms.values())
