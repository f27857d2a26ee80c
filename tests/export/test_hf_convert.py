"""The export's conversion and its refusals (no transformers needed)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from megatron_evomoe.data.tokenizer import build_tokenizer
from megatron_evomoe.data.tokenizer_record import record_path, tokenizer_record
from megatron_evomoe.errors import InputError
from megatron_evomoe.export.gpt_checkpoint import check_tokenizer_against_data
from megatron_evomoe.export.hf_convert import convert_gpt
from megatron_evomoe.models.gpt import build_gpt_model
from megatron_evomoe.moe.evolution import PhaseController
from tests.export.hf_fixtures import train_tokenizer
from tests.tiny import tiny_run
from tools.export_hf import main as export_main


def _converted(*flags: str, iteration=None):
    run = tiny_run(*flags)
    options = run.model.moe_router
    state = options.final_state(run.training.train_iters) if iteration is None else options.routing_state(iteration)
    model = build_gpt_model(run.model)
    PhaseController(run.model).apply_state([model], state)
    return model, convert_gpt(model, run.model, state)


def test_evomoe_exports_top1_at_the_final_temperature(megatron_world_of_one):
    """After T_D the gate is Top-1 of softmax(x W / tau_min), unnormalised (DESIGN.md, EvoMoE facts)."""
    model, hf = _converted("--moe-router-type", "dts", "--train-iters", "40", "--dts-min-temperature", "0.5")
    assert hf.config["mlp_types"] == ["moe", "dense", "moe", "dense"]
    gate = hf.config["moe_gates"][0]
    assert gate == {"kind": "softmax_topk", "temperature": pytest.approx(0.5), "top_k": 1, "normalize": False}
    router = model.decoder.layers[0].mlp.router
    assert torch.equal(hf.tensors["transformer.layers.0.mlp.gate.weight"], router.weight)
    expert = model.decoder.layers[2].mlp.experts.local_experts[3]
    assert torch.equal(hf.tensors["transformer.layers.2.mlp.experts.3.fc2.weight"], expert.linear_fc2.weight)
    assert not any(".shared_expert" in name or "shared" in name for name in hf.tensors)


def test_evomoe_stage1_exports_the_shared_expert(megatron_world_of_one):
    model, hf = _converted("--moe-router-type", "dts", "--train-iters", "40", iteration=0)
    assert hf.config["mlp_types"] == ["shared", "dense", "shared", "dense"]
    shared = model.decoder.layers[0].mlp.shared_expert
    assert torch.equal(hf.tensors["transformer.layers.0.mlp.fc1.weight"], shared.linear_fc1.weight)


def test_gshard_exports_normalised_top2(megatron_world_of_one):
    _, hf = _converted("--moe-router-type", "gshard")
    assert hf.config["moe_gates"][2] == {"kind": "softmax_topk", "temperature": 1.0, "top_k": 2, "normalize": True}


def test_a_router_without_a_serving_gate_is_refused_by_name(megatron_world_of_one):
    """A balanced hash table that was never built from data has nothing to export."""
    with pytest.raises(InputError, match="router 'hash'"):
        _converted("--moe-router-type", "hash", "--hash-type", "balanced")


def test_cli_reports_a_missing_checkpoint_in_one_line(tmp_path, capsys, megatron_world_of_one):
    with pytest.raises(SystemExit) as exit_info:
        export_main(["--load", str(tmp_path / "none"), "--output-dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "no such directory" in err
    assert not os.path.exists(tmp_path / "out")


def test_a_tokenizer_other_than_the_datas_is_refused(tmp_path):
    """The data's PREFIX.tokenizer.json (tools/preprocess_data.py) names the tokenizer it was made with."""
    tokenizer = build_tokenizer("HuggingFaceTokenizer", tokenizer_model=train_tokenizer(str(tmp_path)))
    prefix = str(tmp_path / "corpus_text_document")
    saved = {"data_path": [prefix]}
    check_tokenizer_against_data(saved, tokenizer)  # no record: not checked
    with open(record_path(prefix), "w") as handle:
        json.dump({**tokenizer_record(tokenizer), "vocab_sha256": "0" * 64}, handle)
    with pytest.raises(InputError, match="--data-path"):
        check_tokenizer_against_data(saved, tokenizer)
    with open(record_path(prefix), "w") as handle:
        json.dump(tokenizer_record(tokenizer), handle)
    check_tokenizer_against_data(saved, tokenizer)
