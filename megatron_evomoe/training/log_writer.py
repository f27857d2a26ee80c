"""Where metrics go: the console, TensorBoard (``--tensorboard-dir``) and JSONL (``--log-json``).

Only global rank 0 writes. A JSONL record holds scalars and per-MoE-layer lists; TensorBoard gets
the scalars, per MoE layer the list entries as ``name/layer_k``, and the numbers of nested dicts as
``name/key/...`` (``phase_flops/top1``, ``loss_jump/T_S/eval_loss_jump``).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, Optional

import torch.distributed as dist


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


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _numbers_in(nested: Dict[str, Any], prefix: str):
    """``(prefix/key/..., number)`` for the numbers of nested dicts (e.g. ``loss_jump/T_S/eval_loss_jump``);
    lists inside dicts (the routing probe's per-token data) are not scalars and are left out."""
    for key, value in nested.items():
        if _is_number(value):
            yield f"{prefix}/{key}", value
        elif isinstance(value, dict):
            yield from _numbers_in(value, f"{prefix}/{key}")


class MetricsWriter:
    """Writes one record per logged iteration to every configured sink."""

    def __init__(self, tensorboard_dir: Optional[str] = None, log_json: Optional[str] = None):
        self.enabled = _is_writer()
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

    def write(self, record: Dict[str, Any]) -> None:
        """Send ``record`` (must hold ``iteration``) to TensorBoard and the JSONL file."""
        if not self.enabled:
            return
        if self.json_file is not None:
            self.json_file.write(json.dumps(_jsonable(record)) + "\n")
        if self.tb is not None:
            step = record["iteration"]
            for key, value in record.items():
                if key == "iteration":
                    continue
                if _is_number(value):
                    self.tb.add_scalar(key, value, step)
                elif isinstance(value, list) and value and all(_is_number(v) for v in value):
                    for layer, v in enumerate(value):
                        self.tb.add_scalar(f"{key}/layer_{layer}", v, step)
                elif isinstance(value, dict):
                    for tag, v in _numbers_in(value, key):
                        self.tb.add_scalar(tag, v, step)
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
