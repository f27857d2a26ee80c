"""Per-rank bodies of the parallel-layout tests (importable by spawned processes)."""

from __future__ import annotations

from megatron_evomoe import initialize
from megatron_evomoe.training.loop import pretrain
from tests.tiny import tiny_gpt_task, tiny_run


def logged_records(flags: list[str]) -> list:
    """Train the tiny GPT-MoE with ``flags``; its log records on rank 0 (other ranks: [])."""
    import json
    import os
    import tempfile

    log = os.path.join(tempfile.mkdtemp(), "log.jsonl")
    run = tiny_run(*flags, "--log-json", log)
    initialize.initialize(run.layout, run.training.seed)
    try:
        pretrain(run, tiny_gpt_task())
    finally:
        initialize.shutdown()
    if int(os.environ.get("RANK", "0")) != 0:
        return []
    return [json.loads(line) for line in open(log)]


def train_and_report(flags: list[str]) -> dict:
    """Train the tiny GPT-MoE with ``flags``; report per-iteration loss and grad norm (rank 0)."""
    records = logged_records(flags)
    if not records:
        return {}
    return {
        "lm_loss": [r["lm_loss"] for r in records],
        "grad_norm": [r["grad_norm"] for r in records],
        "aux_loss": [r["aux_loss"] for r in records],
        "tokens_per_expert": [r["tokens_per_expert"] for r in records],
    }
