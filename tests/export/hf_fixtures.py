"""A real-text tokenizer and tiny trained GPT-MoE checkpoints for the export tests."""

from __future__ import annotations

import os

from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from megatron_evomoe import initialize
from megatron_evomoe.training.loop import pretrain
from tests.tiny import VOCAB, tiny_gpt_task, tiny_run

TEXT = (
    "The quick brown fox jumps over the lazy dog. A mixture of experts sends each token to a few "
    "experts chosen by a gate. The gate starts dense and becomes sparse as its temperature falls. "
    "Each expert is a small feed forward network that learns from the tokens it is given."
)
PROMPT = "The gate sends the quick token to an expert"


def train_tokenizer(directory: str) -> str:
    """A word-level BPE ``tokenizer.json`` trained on :data:`TEXT` (fewer ids than the tiny vocabulary)."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB - 28, special_tokens=["<|endoftext|>", "<unk>"])
    tokenizer.train_from_iterator([TEXT], trainer)
    path = os.path.join(directory, "tokenizer.json")
    tokenizer.save(path)
    return path


def train_checkpoint(save: str, tokenizer_path: str, *flags: str):
    """Train the tiny GPT-MoE (``tests.tiny``) in this process and save its last step; returns the session."""
    initialize.set_seeds(7)
    run = tiny_run(
        "--max-position-embeddings", "64", "--save", save, "--save-interval", "1000",
        "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", tokenizer_path, *flags,
    )
    return pretrain(run, tiny_gpt_task(num_samples=64))
