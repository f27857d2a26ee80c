"""Where metrics go: the console, TensorBoard (``--tensorboard-dir``) and JSONL (``--log-json``).

Only global rank 0 writes. A JSONL record holds scalars and per-MoE-layer lists under our keys (the
analysis tools read them); TensorBoard gets them under Megatron-LM's tags where Megatron-LM logs the
same quantity (``tensorboard_tags.py``).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, Iterable, Optional

import torch.distributed as dist

from megatron_evomoe.training.tensorboard_tags import TagContext, tensorboard_scalars


def _is_writer() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


class MetricsWriter:
    """Writes one record per logged iteration to every configured sink."""

    def __init__(self, tensorboard_dir: Optional[str] = None, log_json: Optional[str] = None,
                 tags: Optional[TagContext] = None):
        self.enabled = _is_writer()
        self.tags = tags or TagContext()
        self.tb = None
        self.json_file = None
        if not self.enabled:
            return
        if tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=tensorboard_dir)
        if log_json:
            os.makedirs(os.path.dirname(os.path.abspath(log_json)), exist_ok=True)
            self.json_file = open(log_json, "a", buffering=1)

    def write(self, record: Dict[str, Any], metric_keys: Iterable[str] = ()) -> None:
        """Send ``record`` (must hold ``iteration``) to TensorBoard and the JSONL file;
        ``metric_keys`` name its task metrics (``lm_loss``), which TensorBoard calls ``lm loss``."""
        if not self.enabled:
            return
        if self.json_file is not None:
            self.json_file.write(json.dumps(_jsonable(record)) + "\n")
        if self.tb is not None:
            for tag, value, step in tensorboard_scalars(record, self.tags, metric_keys):
                self.tb.add_scalar(tag, value, step)
            self.tb.flush()

    def print(self, line: str) -> None:
        """A console line from rank 0."""
        if self.enabled:
            print(line, flush=True)

    def close(self) -> None:
        if self.json_file is not None:
            self.json_file.close()
        if self.tb is not None:
            self.tb.close()


def print_rank0(line: str) -> None:
    """Print once per job."""
    if _is_writer():
        print(line, flush=True)
