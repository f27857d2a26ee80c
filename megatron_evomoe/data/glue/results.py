"""The results JSON of one fine-tuning run, and the paper's Table II built from several of them.

A results file (``--results-json PATH``) holds the best dev epoch of one (model, task) run::

    {"task": "RTE", "model": "evomoe", "metric": "accuracy", "score": 0.712,
     "accuracy": 0.712, "epoch": 7,
     "history": [{"epoch": 1, "accuracy": 0.61}, ...],
     "flags": {"lr": 2e-05, "seed": 1234, ...}}

Metric values are fractions; ``score`` is the task's primary metric (the Table II entry), ``model``
the row the run belongs to (the pretrained checkpoint's name unless --model-name says otherwise).
:func:`format_table` prints one row per model with the task columns in the paper's order
(MNLI QNLI QQP RTE SST-2 MRPC CoLA STS-B, scores x 100) and their average over the tasks present.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, Optional

from megatron_evomoe.data.errors import DataInputError
from megatron_evomoe.data.glue.tasks import TABLE_ORDER, get_task

RESULT_KEYS = ("task", "model", "metric", "score", "epoch")


def write_results(path: str, record: dict[str, Any]) -> None:
    """Write ``record`` as JSON, atomically (a reader never sees half a file)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1, sort_keys=True, default=str)
        f.write("\n")
    os.replace(tmp, path)


def read_results(path: str) -> dict[str, Any]:
    """One results file (ValueError naming the file when it is not one)."""
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise DataInputError(f"{path}: not a readable results JSON ({exc})") from None
    missing = [key for key in RESULT_KEYS if key not in record]
    if missing:
        raise DataInputError(f"{path}: missing {', '.join(missing)} (not written by finetune_glue.py --results-json?)")
    get_task(record["task"])
    return record


def table_rows(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """``{model: {task: score}}``; for a (model, task) given twice the later record wins."""
    rows: dict[str, dict[str, float]] = {}
    for record in records:
        rows.setdefault(record["model"], {})[record["task"]] = float(record["score"])
    return rows


def format_table(records: Iterable[dict[str, Any]], tasks: Optional[Iterable[str]] = None) -> str:
    """Table II: one row per model, a column per task (score x 100, 1 decimal) and their average
    (3 decimals, over the tasks the row has; '-' marks a missing task and the average notes it)."""
    tasks = list(tasks or TABLE_ORDER)
    rows = table_rows(records)
    width = max([len("Models")] + [len(m) for m in rows])
    header = f"{'Models':<{width}}  " + "  ".join(f"{t:>6}" for t in tasks) + "  " + f"{'Avg':>7}"
    lines = [header, "-" * len(header)]
    for model, scores in rows.items():
        cells = [f"{100 * scores[t]:6.1f}" if t in scores else f"{'-':>6}" for t in tasks]
        present = [100 * scores[t] for t in tasks if t in scores]
        average = f"{sum(present) / len(present):7.3f}" if present else f"{'-':>7}"
        note = "" if len(present) == len(tasks) else f"  ({len(present)}/{len(tasks)} tasks)"
        lines.append(f"{model:<{width}}  " + "  ".join(cells) + "  " + average + note)
    return "\n".join(lines)
