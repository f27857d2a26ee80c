"""Options of the token dispatchers (``--moe-token-dispatcher-type`` and the α-β cost model).

Kept apart from ``config.py`` (which re-exports it) so that the all-to-all dispatchers and
``tools/bench_dispatch.py`` import without megatron-core (seconds of CPU per spawned process). The
dispatcher names are those of the registry in ``moe/dispatch/__init__.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from megatron_evomoe.errors import InputError
from megatron_evomoe.moe.dispatch import available_dispatchers


@dataclass
class DispatchOptions:
    """How tokens travel between expert-parallel ranks.

    The α-β parameters describe one message of ``n`` bytes as costing ``alpha + beta * n`` seconds;
    "intra" is a link inside a node (NVLink / PCIe / shared memory), "inter" the node's network
    card. Defaults are a DGX-class node (NVLink ~100 GB/s) on 100 Gb/s InfiniBand.
    """

    dispatcher_type: str = "allgather"
    """One of ``available_dispatchers()``."""
    ranks_per_node: Optional[int] = None
    """Ranks that share a node (None: LOCAL_WORLD_SIZE from the launcher, else all ranks)."""
    alpha_intra: float = 5e-6
    """Cost model: latency (s) of one intra-node message."""
    beta_intra: float = 1.0 / 100e9
    """Cost model: seconds per byte within a node."""
    alpha_inter: float = 2e-5
    """Cost model: latency (s) of one inter-node message."""
    beta_inter: float = 1.0 / 12.5e9
    """Cost model: seconds per byte between nodes (one network card per node, shared by its ranks)."""
    calibrate: bool = False
    """Measure alpha/beta with a short ping-pong when the dispatcher is built (``auto`` only)."""

    def __post_init__(self) -> None:
        if self.dispatcher_type not in available_dispatchers():
            raise InputError(
                f"--moe-token-dispatcher-type {self.dispatcher_type!r} is not one of {tuple(available_dispatchers())}"
            )
        if self.ranks_per_node is not None and self.ranks_per_node < 1:
            raise InputError(f"--moe-ranks-per-node must be >= 1 (got {self.ranks_per_node})")
        for name in ("alpha_intra", "beta_intra", "alpha_inter", "beta_inter"):
            if getattr(self, name) < 0:
                raise InputError(f"--moe-a2a-{name.replace('_', '-')} must be >= 0")
