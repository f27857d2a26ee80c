"""Results JSON and the Table II summary (tools/glue_table.py)."""

import subprocess
import sys

import pytest

from megatron_evomoe.data.glue.results import format_table, read_results, write_results
from tests.data.conftest import REPO_ROOT

SCORES = {"MNLI": 0.899, "QNLI": 0.938, "QQP": 0.923, "RTE": 0.881, "SST-2": 0.961, "MRPC": 0.896, "CoLA": 0.856,
          "STS-B": 0.915}


def _write_runs(tmp_path):
    paths = []
    for task, score in SCORES.items():
        path = tmp_path / f"evomoe-{task}.json"
        write_results(str(path), {"task": task, "model": "EvoMoE", "metric": "x", "score": score, "epoch": 3,
                                  "flags": {"lr": 1e-5}})
        paths.append(str(path))
    path = tmp_path / "switch-RTE.json"
    write_results(str(path), {"task": "RTE", "model": "Switch TRM", "metric": "accuracy", "score": 0.864, "epoch": 2})
    return paths + [str(path)]


def test_table_layout_and_average(tmp_path):
    table = format_table(read_results(p) for p in _write_runs(tmp_path))
    header, rule, evomoe, switch = table.splitlines()
    assert header.split() == ["Models", "MNLI", "QNLI", "QQP", "RTE", "SST-2", "MRPC", "CoLA", "STS-B", "Avg"]
    # EvoMoE's row of the paper's Table II: 8 tasks, average 90.8625
    assert evomoe.split() == ["EvoMoE", "89.9", "93.8", "92.3", "88.1", "96.1", "89.6", "85.6", "91.5", "90.863"]
    assert switch.split()[:3] == ["Switch", "TRM", "-"] and "86.4" in switch and "(1/8 tasks)" in switch


def test_read_results_rejects_other_json(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"task": "RTE"}')
    with pytest.raises(ValueError, match="missing model, metric, score, epoch"):
        read_results(str(path))


def test_tool_prints_the_table(tmp_path):
    out = subprocess.run([sys.executable, "tools/glue_table.py", *_write_runs(tmp_path)], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "90.863" in out.stdout and out.stdout.splitlines()[0].split()[-1] == "Avg"
