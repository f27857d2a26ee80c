"""Offline end-to-end demo on the embedded pydoc corpus: corpus -> BPE tokenizer -> .bin/.idx -> GPT datasets
-> a small GPT-MoE trained with EvoMoE (shared expert, expert-diversify, DTS gate, Top-1).

    python tools/demo.py --output-dir demo_output        # or: make demo

Data steps skip themselves when their outputs exist, so a second run goes straight to training. Needs no
network and no GPU (about 2-4 minutes on 2 CPU cores).
"""

import argparse
import os
import sys
import time
import warnings

DEMO_VOCAB_SIZE = 4096
DEMO_SEQ_LENGTH = 128
DEMO_SPLIT = "949,50,1"


def _run_step(name: str, outputs: list, run, timings: dict):
    """Run `run()` unless all `outputs` exist; record its wall time (or 'cached') under `name`.

    Returns:
        What `run()` returned, or None when the step was skipped.
    """
    if all(os.path.exists(path) for path in outputs):
        timings[name] = "cached"
        return None
    start = time.perf_counter()
    result = run()
    timings[name] = f"{time.perf_counter() - start:.2f}s"
    return result


def prepare_demo_data(output_dir: str) -> dict:
    """Build (or reuse) the demo corpus, tokenizer and preprocessed data under `output_dir`.

    Returns:
        dict with corpus, tokenizer_type, vocab_file, merge_file, data_prefix (for --data-path), timings
        (step → wall time or 'cached') and, for steps that ran, their summaries.
    """
    from megatron_evomoe.data.preprocess import PreprocessConfig, preprocess_data
    from megatron_evomoe.data.pydoc_corpus import write_pydoc_corpus
    from megatron_evomoe.data.tokenizer import GPT2_TYPE, TokenizerSpec
    from megatron_evomoe.data.tokenizer_training import TokenizerTrainingConfig, train_tokenizer

    corpus = os.path.join(output_dir, "pydoc_corpus.jsonl")
    tokenizer_dir = os.path.join(output_dir, "tokenizer")
    vocab_file = os.path.join(tokenizer_dir, "vocab.json")
    merge_file = os.path.join(tokenizer_dir, "merges.txt")
    output_prefix = os.path.join(output_dir, "data", "pydoc")
    spec = TokenizerSpec(GPT2_TYPE, vocab_file, merge_file)
    preprocess_config = PreprocessConfig([corpus], output_prefix, spec, append_eod=True)
    data_prefix = preprocess_config.output_prefix_for("text")
    timings, summaries = {}, {}

    tokenizer_config = TokenizerTrainingConfig([corpus], tokenizer_dir, model_type="bpe", vocab_size=DEMO_VOCAB_SIZE)
    _run_step("corpus", [corpus], lambda: write_pydoc_corpus(corpus), timings)
    trained = _run_step("tokenizer", [vocab_file, merge_file], lambda: train_tokenizer(tokenizer_config), timings)
    preprocessed = _run_step(
        "preprocess", [data_prefix + ".bin", data_prefix + ".idx"], lambda: preprocess_data(preprocess_config), timings
    )
    for step, result in (("tokenizer", trained), ("preprocess", preprocessed)):
        if result is not None:
            summaries[step] = result.summary()
    return dict(
        corpus=corpus,
        tokenizer_type=GPT2_TYPE,
        vocab_file=vocab_file,
        merge_file=merge_file,
        data_prefix=data_prefix,
        timings=timings,
        summaries=summaries,
    )


def build_demo_datasets(demo: dict, seq_length: int = DEMO_SEQ_LENGTH, split: str = DEMO_SPLIT) -> dict:
    """Build one epoch of each split of the demo data and return datasets + statistics."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from megatron_evomoe.data.gpt_dataset import GPTDataConfig, build_gpt_datasets
    from megatron_evomoe.data.tokenizer import build_tokenizer, padded_vocab_size

    start = time.perf_counter()
    tokenizer = build_tokenizer(demo["tokenizer_type"], demo["vocab_file"], demo["merge_file"])
    config = GPTDataConfig(seq_length=seq_length, data_path=[demo["data_prefix"]], split=split)
    train, valid, test = build_gpt_datasets(config, tokenizer, [None, None, None])
    seconds = time.perf_counter() - start
    indexed = IndexedDataset(demo["data_prefix"])
    stats = dict(
        documents=len(indexed.document_indices) - 1,
        tokens=int(indexed.sequence_lengths.sum()),
        vocab_size=tokenizer.vocab_size,
        padded_vocab_size=padded_vocab_size(tokenizer.vocab_size),
        # None: the split got no documents (e.g. 1/1000 of ~80 documents) and is not built.
        samples={
            name: None if ds is None else len(ds) for name, ds in zip(("train", "valid", "test"), (train, valid, test))
        },
        seconds=seconds,
    )
    del indexed
    return dict(train=train, valid=valid, test=test, tokenizer=tokenizer, stats=stats)


def demo_training_flags(demo: dict, output_dir: str, train_iters: int) -> list:
    """pretrain_gpt_moe.py flags of the demo: a 4-layer hidden-128 GPT with 4 experts on layers 1
    and 3, trained with EvoMoE (shared expert for 10% of the steps, tau 2.0 -> 0.3 over 40%, Top-1 after).

    Batch arithmetic: 1 process, micro batch 8 x 2 micro-batches = global batch 16 sequences of 128 tokens.
    """
    shared = max(1, train_iters // 10)
    anneal = max(1, (train_iters * 4) // 10)
    return [
        "--tokenizer-type", demo["tokenizer_type"], "--vocab-file", demo["vocab_file"],
        "--merge-file", demo["merge_file"], "--data-path", demo["data_prefix"], "--split", DEMO_SPLIT,
        "--num-layers", "4", "--hidden-size", "128", "--num-attention-heads", "4",
        "--seq-length", str(DEMO_SEQ_LENGTH), "--num-experts", "4", "--moe-layer-freq", "2",
        "--moe-router-type", "dts", "--evomoe-shared-expert-iters", str(shared),
        "--dts-anneal-iters", str(anneal), "--micro-batch-size", "8", "--global-batch-size", "16",
        "--train-iters", str(train_iters), "--lr", "2e-3", "--min-lr", "1e-4", "--lr-decay-style", "polynomial",
        "--lr-warmup-iters", str(max(1, train_iters // 20)), "--adam-beta2", "0.98", "--weight-decay", "0.1",
        "--log-interval", str(max(1, train_iters // 15)), "--eval-interval", str(max(1, train_iters // 3)),
        "--eval-iters", "2", "--log-json", os.path.join(output_dir, "train_log.jsonl"),
    ]


def expert_load_table(record: dict) -> str:
    """Per MoE layer: the share of (token, expert) assignments each expert received."""
    lines = ["layer  " + "  ".join(f"expert{e:<2}" for e in range(len(record["tokens_per_expert"][0])))]
    for layer, counts in enumerate(record["tokens_per_expert"]):
        total = sum(counts) or 1.0
        lines.append(f"{layer:<5}  " + "  ".join(f"{100.0 * c / total:7.1f}%" for c in counts))
    return "\n".join(lines)


def main(argv=None) -> int:
    """Prepare the demo data, print its statistics, then train a small GPT-MoE with EvoMoE."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="demo_output", help="where every demo artefact goes")
    parser.add_argument("--train-iters", type=int, default=300, help="training iterations (0: data only)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")

    demo = prepare_demo_data(args.output_dir)
    for step, summary in demo["summaries"].items():
        print(f"[{step}] {summary}")
    built = build_demo_datasets(demo)
    stats = built["stats"]
    print(f"corpus:     {demo['corpus']} ({stats['documents']} documents, {stats['tokens']} tokens)")
    print(f"tokenizer:  {demo['tokenizer_type']} vocab {stats['vocab_size']} (padded {stats['padded_vocab_size']})")
    print(f"data:       --data-path {demo['data_prefix']}")
    samples = ", ".join(
        f"{name} {'none (no documents in this split)' if count is None else count}"
        for name, count in stats["samples"].items()
    )
    print(f"datasets:   seq {DEMO_SEQ_LENGTH}, split {DEMO_SPLIT}: samples {samples}")
    sample = built["train"][0]
    print("sample:     " + ", ".join(f"{k} {list(v.shape)}" for k, v in sample.items()))
    steps = ", ".join(f"{name} {t}" for name, t in demo["timings"].items())
    print(f"wall time:  {steps}, datasets {stats['seconds']:.2f}s")
    if args.train_iters <= 0:
        return 0
    return train_demo(demo, args.output_dir, args.train_iters)


def train_demo(demo: dict, output_dir: str, train_iters: int) -> int:
    """Run pretrain_gpt_moe.py on the demo data (the real command line), then summarise."""
    import json
    import subprocess

    log = os.path.join(output_dir, "train_log.jsonl")
    if os.path.exists(log):
        os.remove(log)
    flags = demo_training_flags(demo, output_dir, train_iters)
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pretrain_gpt_moe.py")
    print("\ntraining: python pretrain_gpt_moe.py " + " ".join(flags) + "\n", flush=True)
    start = time.perf_counter()
    code = subprocess.call([sys.executable, script, *flags])
    if code != 0:
        return code
    records = [json.loads(line) for line in open(log)]
    trained = [r for r in records if "lm_loss" in r]
    evals = [r for r in records if "val_ppl" in r]
    print(f"\ndone in {time.perf_counter() - start:.0f}s: lm loss {trained[0]['lm_loss']:.3f} (iteration "
          f"{trained[0]['iteration']}) -> {trained[-1]['lm_loss']:.3f} (iteration {trained[-1]['iteration']})")
    print("validation perplexity: " + " -> ".join(f"{r['val_ppl']:.1f} (it {r['iteration']})" for r in evals))
    print(f"training FLOPs: {trained[-1]['flops']:.3e}")
    print(f"expert load over the last {max(1, train_iters // 15)} iterations (phase {trained[-1]['phase']}):")
    print(expert_load_table(trained[-1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
