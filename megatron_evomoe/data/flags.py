"""The data and tokenizer command-line flags, with Megatron-LM's names and defaults.

This is the one place these flags are defined: tools/preprocess_data.py, tools/train_tokenizer.py and the
training argument parser all call these functions, so a flag cannot drift between them. Mapping the parsed
namespace to configs is done by `tokenizer.tokenizer_spec_from_args` and `gpt_dataset.data_config_from_args`.
"""

from __future__ import annotations

import argparse

from megatron_evomoe.data.tokenizer_types import TOKENIZER_TYPES

TOKENIZER_GROUP = "tokenizer"
"""The title of the tokenizer flags' group (``training/model_args.py`` saves them with a checkpoint)."""

BLEND_HELP = (
    "one prefix, several prefixes (blended by size), or a weighted blend 'W1 PREFIX1 W2 PREFIX2 ...' "
    "(e.g. 0.7 A 0.3 B); a prefix names PREFIX.bin/PREFIX.idx"
)


def add_tokenizer_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Add --tokenizer-type, --vocab-file, --merge-file and --tokenizer-model.

    Returns:
        The argument group, so a caller can add tool-specific tokenizer flags next to them.
    """
    group = parser.add_argument_group(TOKENIZER_GROUP)
    group.add_argument(
        "--tokenizer-type",
        choices=TOKENIZER_TYPES,
        default=None,
        help="GPT2BPETokenizer: --vocab-file vocab.json + --merge-file merges.txt; "
        "BertWordPieceLowerCase/BertWordPieceCase: --vocab-file vocab.txt; "
        "HuggingFaceTokenizer: --tokenizer-model tokenizer.json (or its directory)",
    )
    group.add_argument("--vocab-file", default=None, help="GPT-2 vocab.json or BERT vocab.txt")
    group.add_argument("--merge-file", default=None, help="GPT-2 BPE merges.txt")
    group.add_argument(
        "--tokenizer-model", default=None, help="HF tokenizer.json, or a directory containing tokenizer.json"
    )
    return group


def add_data_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Add the dataset flags read by `gpt_dataset.data_config_from_args` (and --num-workers for the loader).

    --data-path (one distribution split by --split) and --train/valid/test-data-path (one distribution per
    split) are mutually exclusive; the config validation says so.

    Returns:
        The argument group.
    """
    group = parser.add_argument_group("data")
    group.add_argument(
        "--data-path", nargs="*", default=None, help=f"data for all splits, divided by --split: {BLEND_HELP}"
    )
    for split in ("train", "valid", "test"):
        group.add_argument(
            f"--{split}-data-path",
            nargs="*",
            default=None,
            help=f"{split} data, instead of --data-path + --split: {BLEND_HELP}",
        )
    group.add_argument(
        "--split",
        default="969,30,1",
        help="train,valid,test proportions of the documents of each --data-path prefix",
    )
    group.add_argument(
        "--data-cache-path",
        default=None,
        help="directory for the dataset index caches (default: a cache/ directory beside each prefix)",
    )
    group.add_argument(
        "--data-seed",
        type=int,
        default=None,
        help="seed of the document and sample shuffles of every split (default: --seed, as in Megatron-LM); "
        "fix it to train and score several --seed runs on the same samples and validation tokens",
    )
    group.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
    group.add_argument(
        "--mmap-bin-files",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="memory-map the .bin files; --no-mmap-bin-files reads them with file reads",
    )
    group.add_argument(
        "--reset-position-ids", action="store_true", help="restart position ids after each end-of-document token"
    )
    group.add_argument(
        "--reset-attention-mask",
        action="store_true",
        help="block attention across end-of-document tokens within a sample",
    )
    group.add_argument("--eod-mask-loss", action="store_true", help="do not train on end-of-document tokens")
    return group
