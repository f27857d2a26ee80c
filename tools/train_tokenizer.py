"""Train a byte-level BPE (GPT) or WordPiece (BERT) tokenizer and write Megatron-LM tokenizer files.

    python tools/train_tokenizer.py --input corpus.jsonl --type bpe --vocab-size 4096 --output-dir tok/
    python tools/train_tokenizer.py --input 'texts/*.txt' --type wordpiece --lowercase --vocab-size 8000 \\
        --output-dir tok/

Writes tok/tokenizer.json plus vocab.json + merges.txt (bpe: --tokenizer-type GPT2BPETokenizer) or vocab.txt
(wordpiece: BertWordPieceLowerCase / BertWordPieceCase). The logic is in megatron_evomoe/data/tokenizer_training.py.
"""

import argparse
import sys
import warnings


def build_parser() -> argparse.ArgumentParser:
    """The tool's flags."""
    from megatron_evomoe.help_format import HelpFormatter

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--input", nargs="+", required=True, help="files, directories or glob patterns")
    parser.add_argument(
        "--input-format",
        choices=("auto", "jsonl", "text"),
        default="auto",
        help="auto: .jsonl/.json files are JSONL, others plain text with one document per line",
    )
    parser.add_argument("--json-keys", nargs="+", default=["text"], help="JSON keys to train on (JSONL input)")
    parser.add_argument("--type", choices=("bpe", "wordpiece"), default="bpe", help="tokenizer model")
    parser.add_argument("--vocab-size", type=int, required=True, help="vocabulary size, special tokens included")
    parser.add_argument("--output-dir", required=True, help="directory for the tokenizer files")
    parser.add_argument("--lowercase", action="store_true", help="lowercase and strip accents (wordpiece only)")
    parser.add_argument("--min-frequency", type=int, default=2, help="minimum frequency of a merge / vocab entry")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    """Parse the command line."""
    return build_parser().parse_args(argv)


def main(argv=None) -> int:
    """Run the tool; user errors become one line on stderr and exit status 1."""
    args = parse_args(argv)
    warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")
    from megatron_evomoe.data.errors import DataInputError
    from megatron_evomoe.data.tokenizer_training import (
        TokenizerTrainingConfig,
        megatron_tokenizer_args,
        train_tokenizer,
    )

    try:
        config = TokenizerTrainingConfig(
            input=args.input,
            output_dir=args.output_dir,
            model_type=args.type,
            vocab_size=args.vocab_size,
            json_keys=args.json_keys,
            input_format=args.input_format,
            lowercase=args.lowercase,
            min_frequency=args.min_frequency,
        )
    except DataInputError as err:  # flag validation
        print(f"train_tokenizer.py: error: {err}", file=sys.stderr)
        return 1
    try:
        result = train_tokenizer(config)
    except (DataInputError, OSError) as err:
        print(f"train_tokenizer.py: error: {err}", file=sys.stderr)
        return 1
    print(result.summary())
    print("load with: " + " ".join(megatron_tokenizer_args(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
