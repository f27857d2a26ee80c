"""A small corpus, BPE tokenizer and GPT data for the launch-script tests (built in-process, ~1 s)."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)


@pytest.fixture(scope="package")
def corpus_data(tmp_path_factory):
    """40 pydoc documents -> vocab-512 BPE tokenizer -> corpus_text_document.bin/.idx."""
    from megatron_evomoe.data.preprocess import PreprocessConfig, preprocess_data
    from megatron_evomoe.data.pydoc_corpus import pydoc_documents
    from megatron_evomoe.data.tokenizer import GPT2_TYPE, TokenizerSpec
    from megatron_evomoe.data.tokenizer_training import TokenizerTrainingConfig, train_tokenizer

    root = tmp_path_factory.mktemp("example_data")
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(doc) + "\n" for doc in pydoc_documents()[:40]))
    tok = root / "tokenizer"
    train_tokenizer(TokenizerTrainingConfig([str(corpus)], str(tok), model_type="bpe", vocab_size=512))
    spec = TokenizerSpec(GPT2_TYPE, str(tok / "vocab.json"), str(tok / "merges.txt"))
    config = PreprocessConfig([str(corpus)], str(root / "corpus"), spec, append_eod=True)
    preprocess_data(config)
    return {
        "root": root, "corpus": str(corpus), "VOCAB_FILE": spec.vocab_file, "MERGE_FILE": spec.merge_file,
        "DATA_PATH": config.output_prefix_for("text"),
    }


def example_env(**overrides) -> dict:
    """The environment of an example script: this venv's python and torchrun, no GPU."""
    launcher = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "NNODES", "NODE_RANK",
                "GPUS_PER_NODE", "DRY_RUN", "SLURM_JOB_ID", "SLURM_NNODES", "SLURM_JOB_NODELIST")
    env = {k: v for k, v in os.environ.items() if k not in launcher}
    env.update(PYTHON=sys.executable, TORCHRUN=os.path.join(BIN, "torchrun"), OMP_NUM_THREADS="1")
    env.update({k: str(v) for k, v in overrides.items()})
    return env


def run_example(script: str, timeout: float = 300, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", os.path.join(REPO, "examples", script)], cwd=REPO, env=example_env(**env),
                          capture_output=True, text=True, timeout=timeout)


