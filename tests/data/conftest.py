"""Shared fixtures for the data tests: a small corpus, trained tokenizers and preprocessed data (built once)."""

import importlib.util
import json
import os
import subprocess
import sys
import warnings

import pytest

warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")

from megatron_evomoe.data.preprocess import PreprocessConfig, preprocess_data  # noqa: E402
from megatron_evomoe.data.pydoc_corpus import pydoc_documents, write_pydoc_corpus  # noqa: E402
from megatron_evomoe.data.tokenizer import TokenizerSpec  # noqa: E402
from megatron_evomoe.data.tokenizer_training import TokenizerTrainingConfig, train_tokenizer  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL_VOCAB = 600


def write_jsonl(path, records):
    """Write dicts as JSONL (strings are written as given, one per line, for hand-made bad lines)."""
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(record if isinstance(record, str) else json.dumps(record, ensure_ascii=False))
            f.write("\n")
    return str(path)


def run_tool(script, *args):
    """Run tools/<script> as a real command line; returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "tools", script), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=300,
    )


def load_tool(script):
    """Import tools/<script> as a module, to call its main(argv) in-process (cheaper than a subprocess)."""
    spec = importlib.util.spec_from_file_location(script.removesuffix(".py"), os.path.join(REPO_ROOT, "tools", script))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def corpus_path(tmp_path_factory):
    """The pydoc corpus as JSONL."""
    path = tmp_path_factory.mktemp("corpus") / "pydoc.jsonl"
    write_pydoc_corpus(str(path))
    return str(path)


@pytest.fixture(scope="session")
def small_corpus_path(tmp_path_factory):
    """20 pydoc documents plus a title key, for fast preprocessing tests."""
    path = tmp_path_factory.mktemp("small") / "small.jsonl"
    records = [{"text": d["text"], "title": d["topic"]} for d in pydoc_documents()[:20]]
    return write_jsonl(path, records)


@pytest.fixture(scope="session")
def bpe_dir(tmp_path_factory, corpus_path):
    """A byte-level BPE tokenizer trained on the corpus."""
    out = tmp_path_factory.mktemp("bpe")
    train_tokenizer(TokenizerTrainingConfig([corpus_path], str(out), model_type="bpe", vocab_size=SMALL_VOCAB))
    return str(out)


@pytest.fixture(scope="session")
def bpe_spec(bpe_dir):
    return TokenizerSpec("GPT2BPETokenizer", os.path.join(bpe_dir, "vocab.json"), os.path.join(bpe_dir, "merges.txt"))


@pytest.fixture(scope="session")
def bpe_tokenizer(bpe_spec):
    return bpe_spec.build()


@pytest.fixture(scope="session")
def gpt_prefixes(tmp_path_factory, corpus_path, bpe_spec):
    """Two preprocessed datasets (with EOD): A = the whole corpus, B = its documents in reverse order."""
    out = tmp_path_factory.mktemp("gptdata")
    reversed_path = write_jsonl(out / "reversed.jsonl", reversed(pydoc_documents()))
    prefixes = []
    for name, source in (("a", corpus_path), ("b", reversed_path)):
        config = PreprocessConfig([source], str(out / name), bpe_spec, append_eod=True)
        preprocess_data(config)
        prefixes.append(config.output_prefix_for("text"))
    return prefixes
