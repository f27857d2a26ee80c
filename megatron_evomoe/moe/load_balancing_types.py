"""The names of ``--moe-router-load-balancing-type`` (megatron-core's), free of torch.

Why a module of its own: router Configs read these names, and the flag parser imports the Configs
without torch so that ``--help`` answers at once; the statistics themselves are in ``load_balancing.py``.
"""

LOAD_BALANCING_TYPES = ("aux_loss", "seq_aux_loss", "global_aux_loss", "none")
"""``--moe-router-load-balancing-type`` choices (megatron-core's, without ``sinkhorn``, a router of its own)."""

AUX_LOSS, SEQ_AUX_LOSS, GLOBAL_AUX_LOSS, NONE = LOAD_BALANCING_TYPES

MEGATRON_LOSS_NAMES = {
    AUX_LOSS: "load_balancing_loss",
    SEQ_AUX_LOSS: "seq_load_balancing_loss",
    GLOBAL_AUX_LOSS: "global_load_balancing_loss",
}
"""The name megatron-core's router logs each type's balance loss under (``attach_and_log_load_balancing_loss``)."""
