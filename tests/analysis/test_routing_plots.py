"""Routing plots from a synthetic EvoMoE log: PNGs are written; the numbers behind them are right."""

import json

import pytest

from megatron_evomoe.analysis import routing_plots as plots

PNG = b"\x89PNG\r\n\x1a\n"
PHASES = {2: "expert_diversify", 4: "expert_diversify", 6: "gate_sparsify", 8: "gate_sparsify", 10: "top1", 12: "top1"}
TOKENS = [5, 7, 5, 9]


def synthetic_log():
    records = []
    for it, phase in PHASES.items():
        dense = phase == "expert_diversify"
        top1 = phase == "top1"
        experts = [[-1] * 4] * 2 if dense else [[0, 1, 0, 2], [3, 3, 1, 0]] if top1 else [[1, 1, 2, 2], [0, 1, 2, 3]]
        records.append({
            "iteration": it, "lm_loss": 5.0 - it / 10, "phase": phase,
            "temperature": 2.0 if it <= 4 else max(0.3, 2.0 - (it - 4) * 0.5),
            "tokens_per_expert": [[0, 0, 0, 0], [0, 0, 0, 0]] if dense else [[10, 20, 30, 40], [25, 25, 25, 25]],
            "experts_per_token": [1.0, 1.0] if dense or top1 else [3.5, 2.5],
            "routing_probe": {"token_ids": TOKENS, "experts": experts,
                              "num_experts": [[0] * 4] * 2 if dense else [[1] * 4] * 2},
        })
        if it == 6:
            records.append({"iteration": it, "val_loss": 4.0, "val_ppl": 54.6})  # eval-only records are ignored
    return records


def test_phase_spans_shares_and_top_tokens():
    records = synthetic_log()
    assert plots.phase_spans(plots.routing_records(records)) == [
        ("expert_diversify", 0, 4), ("gate_sparsify", 4, 8), ("top1", 8, 12)]
    assert plots.load_shares(records[0]) == [[None] * 4] * 2
    assert plots.load_shares(records[-1])[0] == [0.1, 0.2, 0.3, 0.4]
    table = plots.top_tokens(records, k=2)  # the last phase (top1): iterations 10 and 12
    assert table[0] == {0: [(5, 4)], 1: [(7, 2)], 2: [(9, 2)]}
    assert table[1] == {0: [(9, 2)], 1: [(5, 2)], 3: [(5, 2), (7, 2)]}
    every = plots.top_tokens(records, k=1, phase=None)
    # expert 1 of layer 0: tokens 5 and 7 in both gate_sparsify records, token 7 in both top1 ones
    assert every[0][1] == [(7, 4)]


def test_following_a_token():
    records = synthetic_log()
    assert plots.choose_probe_position(records) == 0  # the most frequent token (5)
    assert plots.choose_probe_position(records, token_id=9) == 3
    assert plots.choose_probe_position(records, token="b", decode=lambda t: {5: " a", 7: " b", 9: "c"}[t]) == 1
    with pytest.raises(ValueError, match="does not occur"):
        plots.choose_probe_position(records, token_id=42)
    trajectory = plots.token_trajectory(records, 2)
    assert trajectory["experts"] == [[-1, -1]] * 2 + [[2, 2]] * 2 + [[0, 1]] * 2


def test_every_plot_is_a_png(tmp_path):
    records = synthetic_log()
    paths = [
        plots.plot_expert_load(records, str(tmp_path / "load.png")),
        plots.plot_phases(records, str(tmp_path / "phases.png")),
        plots.plot_token_expert(records, 0, str(tmp_path / "token.png"), "' a'"),
        plots.plot_top_tokens(plots.top_tokens(records), str(tmp_path / "top.png"), None),
    ]
    for path in paths:
        with open(path, "rb") as f:
            assert f.read(8) == PNG


def test_the_command_line_tool(tmp_path):
    import importlib.util
    import os

    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in synthetic_log()))
    path = os.path.join(os.path.dirname(__file__), "..", "..", "tools", "plot_routing.py")
    spec = importlib.util.spec_from_file_location("plot_routing", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main(["--log-json", str(log), "--output-dir", str(tmp_path / "out"), "--token-id", "7"]) == 0
    written = sorted(os.listdir(tmp_path / "out"))
    assert written == ["expert_load.png", "phases.png", "token_expert.png", "top_tokens.md", "top_tokens.png"]
    assert "| 0 | #5 (4) |" in (tmp_path / "out" / "top_tokens.md").read_text()
