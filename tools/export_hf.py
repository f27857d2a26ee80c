"""Export a GPT-MoE checkpoint as a self-contained Hugging Face model directory.

    pip install -e '.[hf]'
    python tools/export_hf.py --load ckpt --output-dir hf_model

The checkpoint may come from any TP/PP/EP layout (it is resharded onto one CPU process). The MoE
layers route with the checkpoint's final routing state (EvoMoE after T_D: Top-1 at the final tau).
Tokenizer flags default to those the run recorded; give them to point at moved files. Then::

    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained("hf_model", trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained("hf_model", trust_remote_code=True)
"""

import argparse
import os
import sys

import torch

from megatron_evomoe import initialize
from megatron_evomoe.errors import InputError
from megatron_evomoe.export.gpt_checkpoint import TOKENIZER_FLAGS
from megatron_evomoe.export.hf_export import export_checkpoint
from megatron_evomoe.export.hf_writer import DTYPES
from megatron_evomoe.training.entry import quiet_megatron


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--load", required=True, help="checkpoint directory (the training run's --save, or one of its iter_XXXXXXX)"
    )
    parser.add_argument("--ckpt-step", type=int, default=None, help="iteration to export (default: the latest)")
    parser.add_argument("--output-dir", required=True, help="the Hugging Face model directory to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output-dir")
    parser.add_argument(
        "--dtype", choices=list(DTYPES), default="float32",
        help="of the exported weights (float32: exact for fp32 and bf16 checkpoints alike)",
    )
    group = parser.add_argument_group("tokenizer (default: the flags recorded in the checkpoint)")
    for name in TOKENIZER_FLAGS:
        group.add_argument("--" + name.replace("_", "-"), default=None)
    return parser.parse_args(argv)


def main(argv=None) -> str:
    args = parse_args(argv)
    quiet_megatron()
    owns_world = not torch.distributed.is_initialized()  # in-process callers (tests) keep theirs
    if owns_world:
        os.environ.setdefault("EVOMOE_FORCE_CPU", "1")  # one process on the CPU, whatever the machine has
    try:
        initialize.initialize(initialize.ParallelLayout(), seed=0)
        overrides = {name: getattr(args, name) for name in TOKENIZER_FLAGS}
        directory, source = export_checkpoint(args.load, args.output_dir, args.ckpt_step, overrides, args.overwrite,
                                               args.dtype)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    finally:
        if owns_world:
            initialize.shutdown()
    state = source.routing_state
    routing = f", routing {state.phase} (tau {state.temperature:g})" if state is not None else ""
    print(f"exported iteration {source.iteration} of {args.load} to {directory}{routing}")
    if source.tokenizer is None:
        print("note: the run recorded no tokenizer flags: no tokenizer files written (pass --tokenizer-type ...)")
    if source.run.model.moe_expert_capacity_factor is not None:
        print("note: the exported model is dropless (--moe-expert-capacity-factor is not applied)")
    return directory


if __name__ == "__main__":
    main()
