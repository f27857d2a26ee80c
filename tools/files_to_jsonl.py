"""Turn a tree of text files into a JSONL corpus, one document per file (then preprocess it as usual).

    python tools/files_to_jsonl.py --input docs/_sources more_docs/ --pattern '*.rst.txt' '*.txt' \\
        --output corpus.jsonl
    python tools/preprocess_data.py --input corpus.jsonl --output-prefix data/docs ...

Files are visited in sorted order, decompressed when they end in .gz, and exact duplicates, files that are not
UTF-8 and files shorter than --min-chars are left out (and counted). The logic is in
megatron_evomoe/data/text_files.py.
"""

import argparse
import sys


def parse_args(argv=None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", nargs="+", required=True, help="directories (walked recursively) or files")
    parser.add_argument("--pattern", nargs="+", default=["*.txt"], help="shell patterns for file base names")
    parser.add_argument("--output", required=True, help="the JSONL file to write")
    parser.add_argument("--min-chars", type=int, default=200, help="leave out shorter files (index pages, stubs)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    """Run the tool; user errors become one line on stderr and exit status 1."""
    args = parse_args(argv)
    from megatron_evomoe.data.errors import DataInputError
    from megatron_evomoe.data.text_files import write_jsonl_from_files

    try:
        summary = write_jsonl_from_files(args.input, args.output, args.pattern, args.min_chars)
    except (DataInputError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {args.output}: {summary.summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
