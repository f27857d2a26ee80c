"""Differentiable communication: each forward exchange's backward is the reverse exchange.

* :func:`exchange_rows` -- one phase of a route (point-to-point or ``all_to_all_single``) for a list
  of row-aligned tensors packed into one message per peer; backward sends the gradients back along
  the same pairs (kind ``<kind>_grad``).
* :func:`gather_rows` / :func:`reduce_scatter_rows` -- the expert-tensor-parallel stage: every
  expert-TP rank needs all rows of its expert group (all-gather with uneven sizes) and the partial
  outputs of the TP-sharded expert FFNs are summed back to the rows' rank (reduce-scatter). Each is
  the other's backward. Sums are taken in fp32, in rank order.

None of these save activations for backward: only row counts and peers.
"""

from __future__ import annotations

from typing import Sequence

import torch

from megatron_evomoe.moe.dispatch.codec import pack_rows, row_specs, unpack_rows
from megatron_evomoe.moe.dispatch.program import Exchange
from megatron_evomoe.moe.dispatch.transport import Transport


def _run_exchange(transport: Transport, exchange: Exchange, packed: torch.Tensor, kind: str) -> torch.Tensor:
    """Move the packed ``uint8 [rows, B]`` buffer through one phase."""
    width = packed.shape[1]
    if exchange.collective:
        send_rows = [rows for _, rows in exchange.send]
        recv_rows = [rows for _, rows in exchange.recv]
        return transport.all_to_all(packed, send_rows, recv_rows, kind)
    blocks = packed.split([rows for _, rows in exchange.send])
    received = transport.exchange(
        [(peer, block) for (peer, _), block in zip(exchange.send, blocks)],
        [(peer, (rows, width)) for peer, rows in exchange.recv],
        packed,
        kind,
        tag=exchange.tag,
    )
    return torch.cat(received) if received else packed.new_empty((0, width))


def _zeros_for_missing(grads, specs, rows: int, device: torch.device) -> list[torch.Tensor]:
    """Gradients with ``None`` (an output that did not reach the loss) replaced by zeros."""
    return [
        g if g is not None else torch.zeros((rows, *spec.trailing), dtype=spec.dtype, device=device)
        for g, spec in zip(grads, specs)
    ]


class _ExchangeRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, transport: Transport, exchange: Exchange, kind: str, *tensors):
        ctx.transport, ctx.exchange, ctx.kind = transport, exchange, kind
        ctx.specs, ctx.device = row_specs(tensors), tensors[0].device
        out = _run_exchange(transport, exchange, pack_rows(tensors), kind)
        return tuple(unpack_rows(out, ctx.specs))

    @staticmethod
    def backward(ctx, *grads):
        grads = _zeros_for_missing(grads, ctx.specs, ctx.exchange.rows_received, ctx.device)
        back = ctx.exchange.reversed()
        out = _run_exchange(ctx.transport, back, pack_rows(grads), ctx.kind + "_grad")
        return (None, None, None, *unpack_rows(out, ctx.specs))


def exchange_rows(
    transport: Transport, exchange: Exchange, kind: str, tensors: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    """Run one phase on row-aligned ``tensors`` (``[rows_sent, ...]`` each); differentiable."""
    return list(_ExchangeRows.apply(transport, exchange, kind, *tensors))


def _all_gather(transport: Transport, rows_per_rank: Sequence[int], tensors, kind: str) -> list[torch.Tensor]:
    packed = pack_rows(tensors)
    width = packed.shape[1]
    received = transport.exchange(
        [(peer, packed) for peer in range(transport.size)],
        [(peer, (rows, width)) for peer, rows in enumerate(rows_per_rank)],
        packed,
        kind,
    )
    return unpack_rows(torch.cat(received), row_specs(tensors))


def _reduce_scatter(transport: Transport, rows_per_rank: Sequence[int], tensors, kind: str) -> list[torch.Tensor]:
    packed = pack_rows(tensors)
    width = packed.shape[1]
    blocks = packed.split(list(rows_per_rank))
    mine = rows_per_rank[transport.rank]
    received = transport.exchange(
        [(peer, block) for peer, block in enumerate(blocks)],
        [(peer, (mine, width)) for peer in range(transport.size)],
        packed,
        kind,
    )
    specs = row_specs(tensors)
    parts = [unpack_rows(block, specs) for block in received]
    return [
        torch.stack([part[i].float() for part in parts]).sum(0).to(spec.dtype)
        for i, spec in enumerate(specs)
    ]


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, transport: Transport, rows_per_rank: tuple, *tensors):
        ctx.transport, ctx.rows_per_rank = transport, rows_per_rank
        ctx.specs, ctx.device = row_specs(tensors), tensors[0].device
        return tuple(_all_gather(transport, rows_per_rank, tensors, "tp_gather"))

    @staticmethod
    def backward(ctx, *grads):
        grads = _zeros_for_missing(grads, ctx.specs, sum(ctx.rows_per_rank), ctx.device)
        out = _reduce_scatter(ctx.transport, ctx.rows_per_rank, grads, "tp_gather_grad")
        return (None, None, *out)


class _ReduceScatterRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, transport: Transport, rows_per_rank: tuple, *tensors):
        ctx.transport, ctx.rows_per_rank = transport, rows_per_rank
        ctx.specs, ctx.device = row_specs(tensors), tensors[0].device
        return tuple(_reduce_scatter(transport, rows_per_rank, tensors, "tp_reduce_scatter"))

    @staticmethod
    def backward(ctx, *grads):
        mine = ctx.rows_per_rank[ctx.transport.rank]
        grads = _zeros_for_missing(grads, ctx.specs, mine, ctx.device)
        out = _all_gather(ctx.transport, ctx.rows_per_rank, grads, "tp_reduce_scatter_grad")
        return (None, None, *out)


def gather_rows(
    transport: Transport, rows_per_rank: Sequence[int], tensors: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    """All-gather row blocks of uneven sizes over the group, concatenated in rank order."""
    return list(_GatherRows.apply(transport, tuple(rows_per_rank), *tensors))


def reduce_scatter_rows(
    transport: Transport, rows_per_rank: Sequence[int], tensors: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    """Sum over the group of each rank's block (blocks of ``rows_per_rank`` rows, in rank order)."""
    return list(_ReduceScatterRows.apply(transport, tuple(rows_per_rank), *tensors))
