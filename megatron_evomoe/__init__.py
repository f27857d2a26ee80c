"""megatron_evomoe: EvoMoE and baseline MoE routers on megatron-core."""

import warnings as _warnings

__version__ = "0.1.0"

# megatron-core warns at import time that the optional GPU extras (Transformer Engine, apex) are
# absent; the torch fallbacks it names are this repository's designed CPU path, so the warnings
# are noise for our users. Only these messages are silenced.
for _message in (
    ".*Transformer Engine.*not installed.*",
    ".*Apex is not installed.*",
    ".*apex.*not installed.*",
    "moe_ffn_hidden_size is not set.*",
):
    _warnings.filterwarnings("ignore", message=_message)
