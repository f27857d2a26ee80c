"""The MoE layer of this repository: routers, dispatchers, EvoMoE phases, balance losses."""
