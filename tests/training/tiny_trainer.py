"""The tiny GPT-MoE trained through the real entry point (``training.entry.main``), as a script.

``python -m tests.training.tiny_trainer FLAGS`` behaves like ``pretrain_gpt_moe.py FLAGS`` (flag
parsing, start-up checks, one-line errors, exit codes, signals) on synthetic data, so process-level
tests (SIGKILL, SIGTERM, failed saves) need no tokenizer or data files.
"""

import sys
from types import SimpleNamespace

from megatron_evomoe.training.entry import main as entry_main
from tests.tiny import VOCAB, tiny_args, tiny_gpt_task


def main(argv):
    """``entry.main`` on the tiny task with :func:`tests.tiny.tiny_args` + ``argv``."""
    return entry_main(lambda run, tokenizer: tiny_gpt_task(), "tiny GPT-MoE", tiny_args(*argv),
                      tokenizer_provider=lambda args: SimpleNamespace(vocab_size=VOCAB))


if __name__ == "__main__":
    main(sys.argv[1:])
