"""The one fixture for multi-rank tests: run a function on N gloo processes of this machine.

``run_ranks(fn, world_size, *args)`` is ``megatron_evomoe.analysis.local_world.run_local_world``
with the test helpers preloaded as well; see there.
"""

from __future__ import annotations

from typing import Any, Callable, List

from megatron_evomoe.analysis.local_world import DEFAULT_PRELOAD, run_local_world

_PRELOAD = (*DEFAULT_PRELOAD, "tests.tiny")


def run_ranks(fn: Callable, world_size: int, *args: Any, env: dict | None = None, timeout: float = 600) -> List[Any]:
    """Run ``fn(*args)`` on ``world_size`` fresh processes; results ordered by rank."""
    return run_local_world(fn, world_size, *args, env=env, timeout=timeout, preload=_PRELOAD)
