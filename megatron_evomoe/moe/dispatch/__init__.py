"""Token dispatchers (DESIGN.md "Seams: Dispatcher"), selected by --moe-token-dispatcher-type."""

from megatron_evomoe.moe.dispatch.allgather import AllGatherDispatcher

DISPATCHERS = {
    "allgather": AllGatherDispatcher,
}
