"""Routing analytics plots from a pretraining run's ``--log-json`` file (paper Fig. 4, Table VII).

    python tools/plot_routing.py --log-json runs/evomoe/log.jsonl --output-dir runs/evomoe/plots \
        --tokenizer-type GPT2BPETokenizer --vocab-file tok/vocab.json --merge-file tok/merges.txt --token the

Writes ``expert_load.png`` (each expert's share of tokens per log interval, per MoE layer: Fig. 4a),
``phases.png`` (temperature and mean experts per token across EvoMoE's phases), and, when the run
was trained with ``--log-routing-probe N``, ``token_expert.png`` (the expert chosen for one token
over training: Fig. 4b) and ``top_tokens.png`` / ``top_tokens.md`` (the most frequent tokens of each
expert: Table VII). The token to follow: ``--token TEXT`` (needs the tokenizer flags), ``--token-id``,
``--probe-position``, or by default the probe's most frequent token. No checkpoint is needed: the
probe records per-token routing during training.
"""

import argparse
import os
import sys

from megatron_evomoe.analysis import routing_plots as plots
from megatron_evomoe.analysis.run_log import read_records


def build_parser() -> argparse.ArgumentParser:
    """The tool's flags (tokenizer flags from megatron_evomoe.data.flags, to decode ``--token``)."""
    from megatron_evomoe.data.flags import add_tokenizer_args
    from megatron_evomoe.help_format import HelpFormatter

    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False, formatter_class=HelpFormatter)
    parser.add_argument("--log-json", required=True, help="the run's metrics file (pretraining's --log-json)")
    parser.add_argument("--output-dir", required=True, help="directory for the plots and the top-tokens table")
    parser.add_argument("--token", default=None, help="follow this token (decoded text, e.g. 'the'; needs the tokenizer)")
    parser.add_argument("--token-id", type=int, default=None, help="follow the token with this id")
    parser.add_argument(
        "--probe-position", type=int, default=None, help="follow the token at this position of the routing probe"
    )
    parser.add_argument("--top-k", type=int, default=5, help="tokens per expert in the top-tokens table")
    add_tokenizer_args(parser)
    return parser


def parse(argv=None):
    return build_parser().parse_args(argv)


def decoder(args):
    """``token id -> text`` from the tokenizer flags, or None without them."""
    if args.tokenizer_type is None:
        return None
    from megatron_evomoe.data.tokenizer import build_tokenizer_from_args

    tokenizer = build_tokenizer_from_args(args)
    return lambda token_id: tokenizer.detokenize([token_id])


def main(argv=None) -> int:
    args = parse(argv)
    records = read_records(args.log_json)
    if not records:
        print(f"error: no records in {args.log_json}", file=sys.stderr)
        return 2
    os.makedirs(args.output_dir, exist_ok=True)
    out = lambda name: os.path.join(args.output_dir, name)  # noqa: E731
    written = [plots.plot_expert_load(records, out("expert_load.png")), plots.plot_phases(records, out("phases.png"))]
    if plots.probe_records(records):
        decode = decoder(args)
        position = plots.choose_probe_position(records, args.token, args.token_id, args.probe_position, decode)
        token_id = plots.probe_records(records)[0]["routing_probe"]["token_ids"][position]  # the probe is fixed
        label = plots.show_token(token_id, decode)
        written.append(plots.plot_token_expert(records, position, out("token_expert.png"), label))
        table = plots.top_tokens(records, args.top_k)
        written.append(plots.plot_top_tokens(table, out("top_tokens.png"), decode, args.top_k))
        with open(out("top_tokens.md"), "w") as handle:
            handle.write(plots.top_tokens_markdown(table, decode, args.top_k))
        written.append(out("top_tokens.md"))
    else:
        print("no routing_probe records (train with --log-routing-probe N): skipping token_expert and top_tokens")
    print("wrote " + ", ".join(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
