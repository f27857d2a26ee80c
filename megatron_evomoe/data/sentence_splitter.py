"""Sentence splitting for `preprocess_data.py --split-sentences`, with NLTK's Punkt algorithm.

Why we train Punkt ourselves: Megatron-LM downloads NLTK's pretrained English Punkt model, but these machines
have no internet and NLTK's data cannot be fetched. Punkt is unsupervised, so by default we train it on a
sample of the corpus being split (`train_punkt_params`). A user who has a model passes it with --punkt-model:
either NLTK's current `punkt_tab` directory format (collocations.tab, sent_starters.txt, abbrev_types.txt,
ortho_context.tab — e.g. `nltk_data/tokenizers/punkt_tab/english`) or a legacy Punkt pickle (loaded through
NLTK's allow-listed unpickler, which only admits Punkt classes).

--keep-newlines: each sentence keeps the whitespace (newlines included) that follows it, so concatenating the
sentences of a document gives back its text from the first sentence on. Without it, sentences are stripped,
as Megatron-LM does.
"""

from __future__ import annotations

import os
from typing import Iterable

from nltk.tabdata import PunktDecoder
from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer, PunktTrainer, punkt_pickle_load

from megatron_evomoe.data.errors import DataInputError

PUNKT_TAB_FILES = ("collocations.tab", "sent_starters.txt", "abbrev_types.txt", "ortho_context.tab")


class SentenceSplitter:
    """Splits a document into sentences with fixed Punkt parameters (picklable).

    Args:
        params: trained Punkt parameters.
        keep_newlines: keep the whitespace after each sentence (see the module docstring).
    """

    def __init__(self, params: PunktParameters, keep_newlines: bool = False) -> None:
        self._punkt = PunktSentenceTokenizer(params)
        self.keep_newlines = keep_newlines

    def split(self, text: str) -> list[str]:
        """The sentences of `text`, in order; never an empty string."""
        if not self.keep_newlines:
            return [s for s in self._punkt.tokenize(text) if s]
        starts = [start for start, _ in self._punkt.span_tokenize(text)]
        ends = starts[1:] + [len(text)]
        return [text[start:end] for start, end in zip(starts, ends) if start < end]


def train_punkt_params(texts: Iterable[str], max_chars: int = 1_000_000) -> PunktParameters:
    """Train Punkt on texts until about `max_chars` characters have been seen.

    Deterministic for a given text sequence. Raises DataInputError when no text was given.
    """
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    trainer = PunktTrainer()
    num_chars = 0
    for text in texts:
        trainer.train(text, finalize=False)
        num_chars += len(text)
        if num_chars >= max_chars:
            break
    if num_chars == 0:
        raise DataInputError("no text to train the sentence splitter on")
    trainer.finalize_training()
    return trainer.get_params()


def load_punkt_params(path: str) -> PunktParameters:
    """Load Punkt parameters from a punkt_tab directory or a legacy Punkt pickle (--punkt-model).

    Raises:
        DataInputError: the path is missing or not a Punkt model; the message names --punkt-model.
    """
    if os.path.isdir(path):
        return _load_punkt_tab(path)
    if not os.path.isfile(path):
        raise DataInputError(f"--punkt-model {path!r}: no such file or directory")
    try:
        with open(path, "rb") as f:
            loaded = punkt_pickle_load(f)
    except Exception as err:  # the allow-listed unpickler raises many types for non-Punkt content
        raise DataInputError(f"--punkt-model {path!r}: not a Punkt pickle ({err})") from None
    if isinstance(loaded, PunktSentenceTokenizer):
        return loaded._params  # the pickle format only exposes the parameters through this attribute
    if isinstance(loaded, PunktParameters):
        return loaded
    raise DataInputError(f"--punkt-model {path!r}: holds a {type(loaded).__name__}, not a Punkt model")


def _load_punkt_tab(directory: str) -> PunktParameters:
    # NLTK's own loader refuses paths outside its data directories, so the four files are decoded here.
    missing = [name for name in PUNKT_TAB_FILES if not os.path.isfile(os.path.join(directory, name))]
    if missing:
        raise DataInputError(f"--punkt-model {directory!r}: not a punkt_tab directory (missing {', '.join(missing)})")
    decoder = PunktDecoder()
    params = PunktParameters()

    def open_file(name):
        return open(os.path.join(directory, name), encoding="utf-8")

    try:
        with open_file("collocations.tab") as f:
            params.collocations = set(decoder.tab2tups(f))
        with open_file("sent_starters.txt") as f:
            params.sent_starters = decoder.txt2set(f)
        with open_file("abbrev_types.txt") as f:
            params.abbrev_types = decoder.txt2set(f)
        with open_file("ortho_context.tab") as f:
            params.ortho_context = decoder.tab2intdict(f)
    except (ValueError, UnicodeDecodeError) as err:
        raise DataInputError(f"--punkt-model {directory!r}: malformed punkt_tab file ({err})") from None
    return params
