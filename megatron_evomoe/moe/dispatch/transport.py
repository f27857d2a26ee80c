"""Messages between the ranks of one process group, and the log that counts them.

Two ways to move blocks of rows:

* :meth:`Transport.exchange` -- point-to-point sends/receives batched into one
  ``batch_isend_irecv``: exactly the messages the caller lists, empty ones skipped. The hierarchical
  all-to-alls are sequences of such exchanges in which most pairs of ranks do not talk (only
  leaders cross nodes), which a collective over the whole group cannot express.
* :meth:`Transport.all_to_all` -- ``dist.all_to_all_single`` with uneven splits (the flat
  all-to-all; gloo and NCCL both support uneven splits and every dtype used here).

Both sides must agree on the sizes beforehand (the dispatchers exchange counts first), so a receive
is posted only where a message will arrive. Every non-empty message to another rank is recorded in
the :class:`CommLog` as intra- or inter-node, which tests compare with the formulas and the benchmark
prints.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.distributed as dist

from megatron_evomoe.moe.dispatch.replay import ExchangeReplay
from megatron_evomoe.moe.dispatch.topology import NodeTopology

INTRA, INTER = "intra", "inter"


@dataclass
class CommLog:
    """What one dispatcher sent: exchange calls per kind, messages and bytes per (kind, level).

    Kinds are ``counts`` (metadata), ``dispatch`` and ``combine`` (forward), ``tp_gather`` and
    ``tp_reduce_scatter`` (expert tensor parallelism), and ``<kind>_grad`` for the exchanges that
    backward runs (the reverse direction of a forward one). Only messages this rank *sends* are
    counted, so the group total is the sum over ranks.
    """

    calls: Counter = field(default_factory=Counter)
    messages: Counter = field(default_factory=Counter)
    bytes: Counter = field(default_factory=Counter)
    routes: Counter = field(default_factory=Counter)
    """Routes run (the ``auto`` dispatcher's choices)."""

    def record_call(self, kind: str) -> None:
        self.calls[kind] += 1

    def record_message(self, kind: str, level: str, num_bytes: int) -> None:
        self.messages[(kind, level)] += 1
        self.bytes[(kind, level)] += num_bytes

    def reset(self) -> None:
        self.calls.clear()
        self.messages.clear()
        self.bytes.clear()
        self.routes.clear()

    def snapshot(self) -> dict:
        """Plain-dict copy (picklable; for tests and the benchmark)."""
        return {
            "calls": dict(self.calls),
            "messages": dict(self.messages),
            "bytes": dict(self.bytes),
            "routes": dict(self.routes),
        }


class Transport:
    """Row exchanges among the ranks of ``group``; peers are group-local indices.

    Args:
        group: the process group.
        topology: node topology of ``group`` (classifies each message as intra- or inter-node).
        log: where messages are counted.
    """

    def __init__(self, group, topology: NodeTopology, log: CommLog, replay: Optional[ExchangeReplay] = None):
        self.group = group
        self.topology = topology
        self.rank = topology.rank
        self.size = topology.size
        self.log = log
        self.replay = replay
        """With megatron's full recomputation + moe_aware: forward exchanges replayed (replay.py)."""

    def level(self, peer: int) -> str:
        return INTRA if self.topology.same_node(self.rank, peer) else INTER

    def exchange(
        self,
        sends: Sequence[tuple[int, torch.Tensor]],
        recvs: Sequence[tuple[int, tuple[int, ...]]],
        like: torch.Tensor,
        kind: str,
        tag: int = 0,
    ) -> list[torch.Tensor]:
        """Send ``sends[i][1]`` to peer ``sends[i][0]``; receive a tensor of each ``recvs`` shape.

        Received tensors take the dtype and device of ``like``; a block sent to this rank itself is
        passed through without a message. Returns received tensors in ``recvs`` order.
        """
        if self.replay is not None:
            return self.replay.run(kind, lambda: self._exchange(sends, recvs, like, kind, tag))
        return self._exchange(sends, recvs, like, kind, tag)

    def _exchange(self, sends, recvs, like, kind, tag) -> list[torch.Tensor]:
        self.log.record_call(kind)
        dtype, device = like.dtype, like.device
        ops, received, to_self = [], [], None
        for peer, tensor in sends:
            if peer == self.rank:
                to_self = tensor
            elif tensor.numel() > 0:
                tensor = tensor.contiguous()
                ops.append(dist.P2POp(dist.isend, tensor, group=self.group, group_peer=peer, tag=tag))
                self.log.record_message(kind, self.level(peer), tensor.numel() * tensor.element_size())
        for peer, shape in recvs:
            if peer == self.rank:
                if to_self is None or tuple(to_self.shape) != tuple(shape):
                    raise RuntimeError(f"{kind}: block to self has shape {shape} but none/other was sent")
                received.append(to_self)
                continue
            buffer = torch.empty(shape, dtype=dtype, device=device)
            if buffer.numel() > 0:
                ops.append(dist.P2POp(dist.irecv, buffer, group=self.group, group_peer=peer, tag=tag))
            received.append(buffer)
        if ops:
            for request in dist.batch_isend_irecv(ops):
                request.wait()
        return received

    def all_to_all(
        self, buffer: torch.Tensor, send_rows: Sequence[int], recv_rows: Sequence[int], kind: str
    ) -> torch.Tensor:
        """``dist.all_to_all_single`` of ``buffer`` ``[sum(send_rows), ...]`` with uneven splits."""
        if self.replay is not None:
            return self.replay.run(kind, lambda: self._all_to_all(buffer, send_rows, recv_rows, kind))
        return self._all_to_all(buffer, send_rows, recv_rows, kind)

    def _all_to_all(self, buffer, send_rows, recv_rows, kind) -> torch.Tensor:
        self.log.record_call(kind)
        row_bytes = _row_bytes(buffer)
        for peer, rows in enumerate(send_rows):
            if peer != self.rank and rows > 0:
                self.log.record_message(kind, self.level(peer), rows * row_bytes)
        out = buffer.new_empty((sum(recv_rows), *buffer.shape[1:]))
        if self.size == 1:
            out.copy_(buffer)
            return out
        dist.all_to_all_single(
            out, buffer.contiguous(), list(recv_rows), list(send_rows), group=self.group
        )
        return out


def _row_bytes(tensor: torch.Tensor) -> int:
    numel = 1
    for dim in tensor.shape[1:]:
        numel *= dim
    return numel * tensor.element_size()
