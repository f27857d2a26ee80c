"""Tokenize a JSONL corpus into megatron.core IndexedDataset files (.bin/.idx), Megatron-LM compatible.

    python tools/preprocess_data.py --input corpus.jsonl --output-prefix data/my \\
        --tokenizer-type GPT2BPETokenizer --vocab-file tok/vocab.json --merge-file tok/merges.txt \\
        --append-eod --workers 2
    # -> data/my_text_document.bin / .idx ; train with --data-path data/my_text_document

--input takes JSONL files (one JSON object per line), directories (their *.jsonl/*.json files, sorted) or
glob patterns. With --split-sentences each sentence becomes one sequence (PREFIX_KEY_sentence.*) and
documents stay as document boundaries. Sentences are split with NLTK Punkt; NLTK's pretrained models cannot be
downloaded offline, so unless --punkt-model gives one (a punkt_tab directory or a legacy Punkt pickle) Punkt
is trained on the first ~1M characters of the input itself. Outputs are written under temporary names and
renamed at the end, so a failed run leaves nothing under the final names. The logic is in
megatron_evomoe/data/preprocess.py.
"""

import argparse
import logging
import sys
import warnings


def build_parser() -> argparse.ArgumentParser:
    """The tool's flags (tokenizer flags from megatron_evomoe.data.flags, shared with the training scripts)."""
    from megatron_evomoe.data.flags import add_tokenizer_args
    from megatron_evomoe.help_format import HelpFormatter

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    group = parser.add_argument_group("input data")
    group.add_argument("--input", nargs="+", required=True, help="JSONL file(s), directories or glob patterns")
    group.add_argument("--json-keys", nargs="+", default=["text"], help="JSON keys to tokenize (one output each)")
    group.add_argument("--split-sentences", action="store_true", help="one sequence per sentence (NLTK Punkt)")
    group.add_argument(
        "--punkt-model",
        default=None,
        help="Punkt model for --split-sentences: a punkt_tab directory or a legacy Punkt pickle; "
        "default: train Punkt on the input itself (NLTK data cannot be downloaded offline)",
    )
    group.add_argument(
        "--keep-newlines", action="store_true", help="keep the newlines after each sentence (--split-sentences)"
    )
    add_tokenizer_args(parser)
    group = parser.add_argument_group("output data")
    group.add_argument("--output-prefix", required=True, help="outputs are PREFIX_KEY_document.bin/.idx")
    group.add_argument("--append-eod", action="store_true", help="append the end-of-document token")
    group = parser.add_argument_group("runtime")
    group.add_argument("--workers", type=int, default=1, help="encoding processes (output identical for any value)")
    group.add_argument("--log-interval", type=int, default=1000, help="log progress every N documents")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    """Parse the command line."""
    return build_parser().parse_args(argv)


def main(argv=None) -> int:
    """Run the tool; user errors become one line on stderr and exit status 1."""
    warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    from megatron_evomoe.data.errors import DataInputError
    from megatron_evomoe.data.preprocess import PreprocessConfig, preprocess_data
    from megatron_evomoe.data.tokenizer import tokenizer_spec_from_args

    try:
        config = PreprocessConfig(
            input=args.input,
            output_prefix=args.output_prefix,
            tokenizer=tokenizer_spec_from_args(args),
            json_keys=args.json_keys,
            append_eod=args.append_eod,
            split_sentences=args.split_sentences,
            punkt_model=args.punkt_model,
            keep_newlines=args.keep_newlines,
            workers=args.workers,
            log_interval=args.log_interval,
        )
    except DataInputError as err:  # flag validation
        print(f"preprocess_data.py: error: {err}", file=sys.stderr)
        return 1
    try:
        stats = preprocess_data(config)
    except (DataInputError, OSError) as err:
        print(f"preprocess_data.py: error: {err}", file=sys.stderr)
        return 1
    print(stats.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
