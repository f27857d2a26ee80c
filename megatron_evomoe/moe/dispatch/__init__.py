"""Token dispatchers (DESIGN.md "Seams: Dispatcher"), selected by --moe-token-dispatcher-type.

``allgather`` is the reference (no all-to-all). The all-to-all family shares one engine
(``routed.py``): a dispatcher is a *route*, i.e. which chunks of (source rank, expert) rows each rank
sends to whom in each phase (``routes.py``); permutations between phases follow from the routes.

* ``alltoall``: one flat all-to-all over the expert-parallel group.
* ``hierarchical``: the paper's topology-aware all-to-all (gather to a node leader, leaders-only
  inter-node all-to-all, scatter to the expert owners).
* ``hierarchical_2d``: intra-node all-to-all, then inter-node all-to-all among same-local-rank peers.
* ``auto``: the α-β cost model (``cost_model.py``) picks one of the three per call.
"""

from __future__ import annotations

import importlib

from megatron_evomoe.errors import InputError

# name -> "module:Class", imported on demand (the allgather reference needs megatron-core, the
# all-to-all family does not).
_DISPATCHERS = {
    "allgather": "megatron_evomoe.moe.dispatch.allgather:AllGatherDispatcher",
    "alltoall": "megatron_evomoe.moe.dispatch.routed:AllToAllDispatcher",
    "hierarchical": "megatron_evomoe.moe.dispatch.routed:HierarchicalDispatcher",
    "hierarchical_2d": "megatron_evomoe.moe.dispatch.routed:Hierarchical2DDispatcher",
    "auto": "megatron_evomoe.moe.dispatch.auto:AutoDispatcher",
}


def available_dispatchers() -> list[str]:
    """Names accepted by --moe-token-dispatcher-type (the only list of them)."""
    return list(_DISPATCHERS)


def dispatcher_class(name: str):
    """The TokenDispatcher subclass registered under ``name``."""
    if name not in _DISPATCHERS:
        raise InputError(
            f"--moe-token-dispatcher-type {name!r} is not available (choose from {available_dispatchers()})"
        )
    module_name, class_name = _DISPATCHERS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)
