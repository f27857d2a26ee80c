"""A toy corpus, WordPiece tokenizer and preprocessed BERT data, made by the tests (no downloads).

Sentences are built from a small vocabulary with a sentiment adjective, so that a tiny MLM learns
something and a GLUE-format sentiment task (``toy_sst2``) is learnable. Importable by spawned ranks.
"""

from __future__ import annotations

import json
import os
import random

from megatron_evomoe.data.preprocess import PreprocessConfig, preprocess_data
from megatron_evomoe.data.tokenizer import TokenizerSpec
from megatron_evomoe.data.tokenizer_training import TokenizerTrainingConfig, train_tokenizer

SUBJECTS = ("the movie", "this film", "the book", "my dinner", "the show", "our trip", "the song", "that game")
VERBS = ("was", "is", "seemed", "felt", "looked", "sounded")
POSITIVE = ("good", "great", "wonderful", "excellent", "lovely", "brilliant")
NEGATIVE = ("bad", "terrible", "awful", "boring", "poor", "dreadful")
TAILS = ("today", "again", "to me", "for everyone", "in the end", "as always", "this time")


def sentence(rng: random.Random, positive: bool) -> str:
    """One sentence whose sentiment is its adjective."""
    adjective = rng.choice(POSITIVE if positive else NEGATIVE)
    return f"{rng.choice(SUBJECTS).capitalize()} {rng.choice(VERBS)} {adjective} {rng.choice(TAILS)}."


def write_corpus(path: str, num_documents: int = 200, seed: int = 0) -> str:
    """JSONL documents of 3-6 sentences each."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(num_documents):
            text = " ".join(sentence(rng, rng.random() < 0.5) for _ in range(rng.randint(3, 6)))
            f.write(json.dumps({"text": text}) + "\n")
    return path


def build_toy_bert_data(out_dir: str, num_documents: int = 200) -> dict:
    """Corpus -> WordPiece tokenizer -> sentence-split .bin/.idx; returns the paths and flags."""
    corpus = write_corpus(os.path.join(out_dir, "corpus.jsonl"), num_documents)
    tok_dir = os.path.join(out_dir, "tok")
    train_tokenizer(TokenizerTrainingConfig([corpus], tok_dir, model_type="wordpiece", vocab_size=120,
                                            lowercase=True, min_frequency=1))
    spec = TokenizerSpec("BertWordPieceLowerCase", os.path.join(tok_dir, "vocab.txt"))
    config = PreprocessConfig([corpus], os.path.join(out_dir, "toy"), spec, split_sentences=True)
    preprocess_data(config)
    prefix = config.output_prefix_for("text")
    return {
        "prefix": prefix,
        "vocab": spec.vocab_file,
        "tokenizer_flags": ["--tokenizer-type", "BertWordPieceLowerCase", "--vocab-file", spec.vocab_file],
    }


def toy_rows(task: str, count: int, seed: int, labeled: bool = True) -> list[tuple]:
    """(text_a, text_b, label string) rows of a learnable toy version of ``task``.

    SST-2: the sentiment of a short clause. RTE: entailment iff the second sentence is positive. MNLI: the
    second sentence's sentiment (entailment / contradiction), neutral when it has no adjective.
    """
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        positive = rng.random() < 0.5
        if task == "SST-2":
            adjective = rng.choice(POSITIVE if positive else NEGATIVE)
            row = (f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {adjective}", None, str(int(positive)))
        elif task == "RTE":
            row = (sentence(rng, rng.random() < 0.5), sentence(rng, positive),
                   "entailment" if positive else "not_entailment")
        elif task == "MNLI":
            kind = rng.choice(("entailment", "contradiction", "neutral"))
            second = f"{rng.choice(SUBJECTS)} {rng.choice(TAILS)}." if kind == "neutral" else sentence(
                rng, kind == "entailment")
            row = (sentence(rng, rng.random() < 0.5), second, kind)
        else:
            raise ValueError(task)
        rows.append(row if labeled else row[:2] + (None,))
    return rows
