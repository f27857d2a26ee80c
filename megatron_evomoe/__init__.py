"""megatron_evomoe: EvoMoE and baseline MoE routers on megatron-core."""

__version__ = "0.1.0"
