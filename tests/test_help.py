"""``--help`` of every entry point: each flag has a help text, flags are grouped as in Megatron-LM,
and answering it imports neither torch nor megatron-core (the invariant behind "answers at once")."""

import importlib.util
import pathlib
import subprocess
import sys

import pytest

from megatron_evomoe.arguments import build_parser
from megatron_evomoe.bert_arguments import add_bert_args, add_glue_args
from megatron_evomoe.moe.routers import available_routers
from megatron_evomoe.router_arguments import router_group_title
from megatron_evomoe.training.upcycle import build_parser as upcycle_parser

REPO = pathlib.Path(__file__).resolve().parent.parent
SCRIPTS = ["pretrain_gpt_moe.py", "pretrain_bert_moe.py", "finetune_glue.py"]
TOOLS = ["tools/preprocess_data.py", "tools/train_tokenizer.py", "tools/plot_routing.py"]
HEAVY = {"torch", "megatron"}
"""Top-level packages that take seconds to import (``megatron`` is megatron-core, not ``megatron_evomoe``)."""

GROUPS = [  # title: flags it must hold (a sample, written out by hand from Megatron-LM's grouping)
    ("model", ["--num-layers", "--hidden-size", "--num-attention-heads", "--seq-length", "--hidden-dropout"]),
    ("mixed precision", ["--bf16", "--fp16", "--loss-scale"]),
    ("distributed", ["--tensor-model-parallel-size", "--expert-model-parallel-size", "--use-distributed-optimizer"]),
    ("activation recomputation", ["--recompute-granularity", "--moe-recompute"]),
    ("MoE", ["--num-experts", "--moe-router-type", "--moe-router-topk", "--moe-aux-loss-coeff", "--moe-grouped-gemm"]),
    ("MoE token dispatch", ["--moe-token-dispatcher-type", "--moe-a2a-alpha-inter"]),
    ("router dts: EvoMoE (--moe-router-type dts)", ["--evomoe-mask-ratio", "--dts-threshold", "--no-gate-sparsify"]),
    ("router switch (--moe-router-type switch)", ["--moe-input-jitter-eps"]),
    ("training", ["--micro-batch-size", "--global-batch-size", "--train-iters", "--seed", "--dry-run"]),
    ("learning rate", ["--lr", "--min-lr", "--lr-decay-style", "--lr-warmup-iters", "--override-opt_param-scheduler"]),
    ("optimizer", ["--weight-decay", "--adam-beta1", "--adam-beta2", "--clip-grad"]),
    ("validation", ["--eval-interval", "--eval-iters"]),
    ("checkpointing", ["--save", "--save-interval", "--load", "--no-load-optim", "--finetune"]),
    ("logging", ["--log-interval", "--tensorboard-dir", "--log-json"]),
    ("tokenizer", ["--tokenizer-type", "--vocab-file", "--merge-file"]),
    ("data", ["--data-path", "--split", "--num-workers"]),
]


def _tool_parser(path: str):
    spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_parser()


PARSERS = {
    "pretrain_gpt_moe.py": lambda: build_parser(""),
    "pretrain_bert_moe.py": lambda: build_parser("", add_bert_args),
    "finetune_glue.py": lambda: build_parser("", add_glue_args),
    **{tool: (lambda tool=tool: _tool_parser(tool)) for tool in TOOLS},
    "tools/upcycle_checkpoint.py": lambda: upcycle_parser(),  # builds MoE checkpoints: imports torch anyway
}


def _group_flags(parser) -> dict:
    return {g.title: {s for a in g._group_actions for s in a.option_strings} for g in parser._action_groups}


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_every_flag_has_a_help_text(name):
    parser = PARSERS[name]()
    actions = [a for a in parser._actions if a.option_strings and "-h" not in a.option_strings]
    assert len(actions) >= 6
    assert [a.option_strings for a in actions if not (a.help or "").strip()] == []


@pytest.mark.parametrize("name, extra", [("pretrain_gpt_moe.py", []), ("pretrain_bert_moe.py", ["BERT"]),
                                         ("finetune_glue.py", ["BERT", "GLUE fine-tuning"])])
def test_flags_are_grouped_as_in_megatron_lm(name, extra):
    groups = _group_flags(PARSERS[name]())
    for title, flags in GROUPS:
        assert set(flags) <= groups.get(title, set()), title
    for router in available_routers():  # one group per router, from its Config
        assert router_group_title(router) in groups
    assert set(extra) <= set(groups)


def test_defaults_are_shown_where_they_say_something():
    text = build_parser("").format_help()
    flat = " ".join(text.split())  # argparse wraps lines
    assert "random seed of initialisation, dropout, routing noise and (without --data-seed) the data order " \
        "(default: 1234)" in flat
    assert "c: experts with gate weight <= c are not computed (paper: 0.001). (default: 0.001)" in flat  # a Config's
    assert "(default: None)" not in flat and "(default: False)" not in flat
    assert flat.count("(default: True)") == 2  # --gshard-random-routing, --mmap-bin-files (once each)


@pytest.mark.parametrize("script", SCRIPTS + TOOLS)
def test_help_loads_neither_torch_nor_megatron_core(script):
    """Invariant, not a timing: ``-X importtime`` lists every module the process imported."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", script, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "megatron_evomoe.arguments" in imported or script in TOOLS
    assert sorted(m for m in imported if m.split(".")[0] in HEAVY) == []


def test_a_missing_required_flag_answers_without_torch_too():
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "pretrain_gpt_moe.py", "--num-layers", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2 and "error: missing required flags: --hidden-size" in result.stderr
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert sorted(m for m in imported if m.split(".")[0] in HEAVY) == []
