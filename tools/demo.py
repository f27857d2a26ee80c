"""Offline end-to-end demo on the embedded pydoc corpus: corpus → BPE tokenizer → .bin/.idx → GPT datasets.

    python tools/demo.py --output-dir demo_output        # or: make demo

Every step skips itself when its outputs exist, so a second run only rebuilds the (cached) datasets. Needs no
network and no GPU. `prepare_demo_data` is the reusable part: later steps (training) call it and get the
paths they need.
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


def main(argv=None) -> int:
    """Prepare the demo data, build the datasets and print statistics."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="demo_output", help="where every demo artefact goes")
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
