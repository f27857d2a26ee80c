"""Upcycle a dense GPT checkpoint into an EvoMoE (or any router's) MoE checkpoint.

The dense checkpoint is ours or Megatron-LM's (``torch_dist``, same architecture flags), from any
TP/PP/EP layout. By default every other layer becomes an MoE layer whose experts are spawned from
the dense FFN exactly as EvoMoE's expert-diversify spawns them, and the run resumed from it starts
in gate-sparsify (the DTS gate at tau max)::

    python tools/upcycle_checkpoint.py --load checkpoints/dense --save checkpoints/evomoe \
        --num-experts 8 --moe-layer-freq 2

It prints the flags to resume with (e.g. ``--num-experts 8 --moe-layer-freq 2 --moe-router-type dts
--evomoe-shared-expert-iters 2000``), to add to the dense run's ``pretrain_gpt_moe.py`` flags with
``--load checkpoints/evomoe``. ``--method copy`` copies the FFN unchanged (Megatron-LM's
``--moe-use-upcycling``), ``--router switch`` (or any registered router) picks another gate, and
``--reset-iteration`` restarts the iteration count and LR schedule. See
``megatron_evomoe/training/upcycle.py``.
"""

import sys

from megatron_evomoe.training.upcycle import main

if __name__ == "__main__":
    sys.exit(main())
