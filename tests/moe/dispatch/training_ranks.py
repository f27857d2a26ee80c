"""Per-rank body of the end-to-end dispatcher tests: several tiny GPT-MoE trainings in one world.

Spawning a world costs more than a tiny training on a 2-core machine, so one set of processes
trains every flag set in turn (megatron's parallel state is rebuilt for each).
"""

from __future__ import annotations

import json
import os
import tempfile

from megatron_evomoe import initialize
from megatron_evomoe.training.loop import pretrain
from tests.tiny import tiny_gpt_task, tiny_run


def train_each(flag_sets: list[list[str]]) -> list[dict]:
    """Train with each flag list; per-iteration ``lm_loss`` and ``grad_norm`` (rank 0), in order."""
    reports = []
    try:
        for flags in flag_sets:
            log = os.path.join(tempfile.mkdtemp(), "log.jsonl")
            run = tiny_run(*flags, "--log-json", log)
            initialize.initialize(run.layout, run.training.seed)
            pretrain(run, tiny_gpt_task())
            if int(os.environ.get("RANK", "0")) == 0:
                records = [json.loads(line) for line in open(log)]
                reports.append({key: [r[key] for r in records] for key in ("lm_loss", "grad_norm")})
    finally:
        initialize.shutdown()
    return reports
