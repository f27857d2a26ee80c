"""Tokenize a JSONL corpus into megatron.core IndexedDataset files (the logic of tools/preprocess_data.py).

Outputs follow Megatron-LM: for each --json-keys KEY, `PREFIX_KEY_document.bin/.idx`, or with
--split-sentences `PREFIX_KEY_sentence.bin/.idx` holding one sequence per sentence, with the document
boundaries in the index's document_indices. With --append-eod the tokenizer's EOD id ends each document (the
last sentence with --split-sentences). Documents blank for a key are skipped for that key and counted.

How it runs:
- Streaming: the corpus is read one line at a time and encoded in batches of `workers * chunksize * 4`
  documents; memory does not grow with the corpus (except the one int per sequence every .idx needs).
  Why not `Pool.imap` over the reader: imap's feeder thread drains the whole input iterator into the task queue
  as fast as it can, so memory grows with the corpus whenever workers are slower than reading. Instead each
  batch goes to `Pool.map_async(chunksize=...)` while the previous batch's results are written
  (double-buffered).
- Order: results are written in input order, so any --workers value gives byte-identical files.
- Atomic outputs: files are written under temporary names and renamed only after every key succeeded; on any
  error the temporaries are deleted (see indexed_writer.py).
- Each output gets a ``PREFIX.tokenizer.json`` record of its tokenizer (tokenizer_record.py), which training
  checks against its own tokenizer.
- Sentence splitting: NLTK Punkt, trained on (a sample of) this corpus unless --punkt-model is given, because
  NLTK's pretrained models cannot be downloaded here (see sentence_splitter.py). The parameters are trained
  once in the parent, so every worker splits identically.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np
from megatron.core.datasets.indexed_dataset import DType
from nltk.tokenize.punkt import PunktParameters
from tqdm import tqdm

from megatron_evomoe.data.corpus_reader import CorpusReader, Document, resolve_input_files
from megatron_evomoe.data.errors import DataInputError
from megatron_evomoe.data.indexed_writer import AtomicIndexedDatasetWriter
from megatron_evomoe.data.sentence_splitter import SentenceSplitter, load_punkt_params, train_punkt_params
from megatron_evomoe.data.tokenizer import FastTokenizer, MissingSpecialTokenError, TokenizerSpec
from megatron_evomoe.data.tokenizer_record import publish_record, record_path, write_record_tmp
from megatron_evomoe.progress import progress_text

logger = logging.getLogger(__name__)

# Per key: (token ids [num_tokens], sequence lengths) or None when the document is blank for that key.
EncodedDocument = dict[str, Optional[tuple[np.ndarray, list[int]]]]


@dataclass
class PreprocessConfig:
    """Everything one preprocessing run needs (the flags of tools/preprocess_data.py)."""

    input: list[str]
    """JSONL files, directories (their *.jsonl/*.json files) or glob patterns (--input)."""

    output_prefix: str
    """Output path prefix; outputs are PREFIX_KEY_document.* / PREFIX_KEY_sentence.* (--output-prefix)."""

    tokenizer: TokenizerSpec
    """The tokenizer flags."""

    json_keys: list[str] = field(default_factory=lambda: ["text"])
    """JSON keys to tokenize; one output dataset per key (--json-keys)."""

    append_eod: bool = False
    """Append the tokenizer's EOD id to every document (--append-eod)."""

    split_sentences: bool = False
    """One sequence per sentence instead of per document (--split-sentences)."""

    punkt_model: Optional[str] = None
    """A punkt_tab directory or Punkt pickle; None trains Punkt on the input (--punkt-model)."""

    keep_newlines: bool = False
    """Keep the newlines after each sentence when splitting sentences (--keep-newlines)."""

    workers: int = 1
    """Encoding processes; 1 encodes in this process (--workers)."""

    chunksize: int = 32
    """Documents per task handed to a worker."""

    log_interval: int = 1000
    """Log progress every this many documents (--log-interval)."""

    punkt_train_chars: int = 1_000_000
    """Characters of input used to train Punkt when no --punkt-model is given."""

    def __post_init__(self) -> None:
        if isinstance(self.input, str):
            self.input = [self.input]
        if not self.input:
            raise DataInputError("--input: give at least one file, directory or glob")
        if not self.output_prefix:
            raise DataInputError("--output-prefix must not be empty")
        if not self.json_keys or any(not k for k in self.json_keys):
            raise DataInputError(f"--json-keys must be non-empty key names, got {self.json_keys!r}")
        if len(set(self.json_keys)) != len(self.json_keys):
            raise DataInputError(f"--json-keys has duplicates: {self.json_keys!r}")
        for name in ("workers", "chunksize", "log_interval", "punkt_train_chars"):
            if getattr(self, name) < 1:
                raise DataInputError(f"{name} must be >= 1, got {getattr(self, name)}")

    def output_prefix_for(self, key: str) -> str:
        """The IndexedDataset prefix written for one JSON key."""
        level = "sentence" if self.split_sentences else "document"
        return f"{self.output_prefix}_{key}_{level}"


@dataclass
class PreprocessStats:
    """What a run read and wrote."""

    output_prefixes: dict[str, str]
    """JSON key → IndexedDataset prefix written."""

    num_documents: int = 0
    """Input documents with text for at least one key."""

    num_empty_documents: int = 0
    """Input documents (or blank lines) skipped because every requested key was blank."""

    num_skipped: dict[str, int] = field(default_factory=dict)
    """Per key: non-empty documents that were blank for this key (not written for it)."""

    num_sequences: dict[str, int] = field(default_factory=dict)
    """Per key: sequences written (documents, or sentences with --split-sentences)."""

    num_tokens: dict[str, int] = field(default_factory=dict)
    """Per key: tokens written."""

    num_bytes: int = 0
    """Input bytes read."""

    seconds: float = 0.0
    """Wall time of the whole run."""

    def summary(self) -> str:
        """A one-line summary for the console."""
        per_key = "; ".join(
            f"{key}: {self.num_sequences[key]} sequences, {self.num_tokens[key]} tokens"
            + (f", {self.num_skipped[key]} blank skipped" if self.num_skipped[key] else "")
            + f" -> {prefix}.bin/.idx"
            for key, prefix in self.output_prefixes.items()
        )
        seconds = max(self.seconds, 1e-9)
        return (
            f"{self.num_documents} documents ({self.num_empty_documents} empty skipped), "
            f"{self.num_bytes / 1e6:.2f} MB in {self.seconds:.2f}s ({self.num_documents / seconds:.0f} docs/s, "
            f"{self.num_bytes / 1e6 / seconds:.2f} MB/s); {per_key}"
        )


@dataclass(frozen=True)
class EncoderSpec:
    """What a worker needs to build its DocumentEncoder; small and picklable."""

    tokenizer: TokenizerSpec
    json_keys: tuple[str, ...]
    append_eod: bool
    dtype: type
    punkt_params: Optional[PunktParameters] = None
    keep_newlines: bool = False


class DocumentEncoder:
    """Turns one document's texts into token arrays and sequence lengths, per JSON key.

    Args:
        spec: the encoding settings.
        tokenizer: an already-built tokenizer for `spec.tokenizer` (saves rebuilding it in this process).
    """

    def __init__(self, spec: EncoderSpec, tokenizer: Optional[FastTokenizer] = None) -> None:
        self._spec = spec
        self._tokenizer = tokenizer if tokenizer is not None else spec.tokenizer.build()
        self._eod = self._tokenizer.eod if spec.append_eod else None
        self._splitter = (
            SentenceSplitter(spec.punkt_params, spec.keep_newlines) if spec.punkt_params is not None else None
        )

    def encode(self, texts: dict[str, str]) -> EncodedDocument:
        """Encode each requested key; None for a key whose text is blank (or gives no tokens)."""
        encoded: EncodedDocument = {}
        for key in self._spec.json_keys:
            text = texts[key]
            sentences = self._splitter.split(text) if self._splitter is not None else [text]
            ids_per_sequence = [ids for ids in (self._tokenizer.tokenize(s) for s in sentences if s.strip()) if ids]
            if not ids_per_sequence:
                encoded[key] = None
                continue
            if self._eod is not None:
                ids_per_sequence[-1].append(self._eod)
            lengths = [len(ids) for ids in ids_per_sequence]
            tokens = np.fromiter(
                itertools.chain.from_iterable(ids_per_sequence), dtype=self._spec.dtype, count=sum(lengths)
            )
            encoded[key] = (tokens, lengths)
        return encoded


# The one process-global: it exists only inside Pool worker processes (set by the initializer, never in the
# parent). multiprocessing offers no other way to hand each worker a heavy object once instead of per task.
_WORKER_ENCODER: Optional[DocumentEncoder] = None


def _init_worker(spec: EncoderSpec) -> None:
    global _WORKER_ENCODER
    _WORKER_ENCODER = DocumentEncoder(spec)


def _encode_in_worker(texts: dict[str, str]) -> EncodedDocument:
    return _WORKER_ENCODER.encode(texts)


def _batched(items: Iterable[Document], size: int) -> Iterator[list[Document]]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def encode_documents(
    documents: Iterable[Document],
    spec: EncoderSpec,
    workers: int = 1,
    chunksize: int = 32,
    tokenizer: Optional[FastTokenizer] = None,
) -> Iterator[tuple[Document, EncodedDocument]]:
    """Encode documents, in input order, in this process (workers=1) or in a Pool of `workers` processes.

    Reading stays in this process, so reader errors surface here, in order, with their file and line.
    """
    if workers == 1:
        encoder = DocumentEncoder(spec, tokenizer)
        for document in documents:
            yield document, encoder.encode(dict(document.texts))
        return
    batch_size = workers * chunksize * 4
    with multiprocessing.Pool(workers, initializer=_init_worker, initargs=(spec,)) as pool:
        pending = None
        for batch in _batched(documents, batch_size):
            handle = pool.map_async(_encode_in_worker, [dict(d.texts) for d in batch], chunksize)
            if pending is not None:
                yield from zip(pending[0], pending[1].get())
            pending = (batch, handle)
        if pending is not None:
            yield from zip(pending[0], pending[1].get())


class _Progress:
    """A progress bar with docs/s and MB/s on a terminal (tqdm; off when stderr is not a TTY), and a
    log line every `interval` documents (for batch jobs' log files, as Megatron-LM prints) with the
    elapsed time and the time left, from the bytes read of the input's known size."""

    def __init__(self, interval: int, total_bytes: int) -> None:
        self.interval = interval
        self.start = time.perf_counter()
        self.num_documents = 0
        self.num_bytes = 0
        self.total_bytes = total_bytes
        self.bar = tqdm(unit=" docs", disable=None, dynamic_ncols=True, mininterval=0.5)

    def update(self, num_bytes: int) -> None:
        self.num_documents += 1
        self.num_bytes += num_bytes
        self.bar.update(1)
        if self.num_documents % 100 == 0:
            self.bar.set_postfix_str(f"{self._mb_per_s():.2f} MB/s", refresh=False)
        if self.num_documents % self.interval == 0:
            elapsed = max(time.perf_counter() - self.start, 1e-9)
            logger.info(
                "processed %d documents (%.1f docs/s, %.2f MB/s, %.1f%% of %.1f MB) | %s",
                self.num_documents,
                self.num_documents / elapsed,
                self._mb_per_s(),
                100.0 * self.num_bytes / max(self.total_bytes, 1),
                self.total_bytes / 1e6,
                progress_text(self.num_bytes, self.total_bytes, elapsed),
            )

    def _mb_per_s(self) -> float:
        return self.num_bytes / max(time.perf_counter() - self.start, 1e-9) / 1e6

    def close(self) -> None:
        self.bar.close()


def _punkt_params(config: PreprocessConfig, files: Sequence[str]) -> PunktParameters:
    if config.punkt_model is not None:
        return load_punkt_params(config.punkt_model)
    logger.info("training the Punkt sentence splitter on up to %d characters of the input", config.punkt_train_chars)
    sample = CorpusReader(files, config.json_keys, "jsonl")
    texts = (text for document in sample for text in document.texts.values())
    return train_punkt_params(texts, config.punkt_train_chars)


def _prepare_output_directory(output_prefix: str) -> None:
    directory = os.path.dirname(os.path.abspath(output_prefix))
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as err:
        raise DataInputError(
            f"--output-prefix {output_prefix!r}: cannot create directory {directory!r} ({err.strerror})"
        ) from None
    if not os.access(directory, os.W_OK):
        raise DataInputError(f"--output-prefix {output_prefix!r}: directory {directory!r} is not writable")


def preprocess_data(config: PreprocessConfig) -> PreprocessStats:
    """Tokenize the corpus of `config` into one IndexedDataset per JSON key.

    Returns:
        The run's statistics (`summary()` gives the console line).

    Raises:
        DataInputError: bad input (malformed JSON line, missing key, non-UTF-8 bytes, no documents), missing
            tokenizer files, or an unwritable output location. No output exists under the final names then.
    """
    start = time.perf_counter()
    tokenizer = config.tokenizer.build()
    if config.append_eod:
        try:
            tokenizer.eod
        except MissingSpecialTokenError as err:
            raise DataInputError(f"--append-eod: {err}") from None
    if not config.split_sentences and (config.keep_newlines or config.punkt_model):
        logger.warning("--keep-newlines and --punkt-model only apply with --split-sentences; ignoring them")
    files = resolve_input_files(config.input, "jsonl")
    _prepare_output_directory(config.output_prefix)
    punkt_params = _punkt_params(config, files) if config.split_sentences else None
    dtype = DType.optimal_dtype(tokenizer.vocab_size)
    spec = EncoderSpec(
        config.tokenizer, tuple(config.json_keys), config.append_eod, dtype, punkt_params, config.keep_newlines
    )
    stats = PreprocessStats({key: config.output_prefix_for(key) for key in config.json_keys})
    stats.num_skipped = {key: 0 for key in config.json_keys}
    writers: dict[str, AtomicIndexedDatasetWriter] = {}
    try:
        for key in config.json_keys:
            writers[key] = AtomicIndexedDatasetWriter(config.output_prefix_for(key), dtype)
        reader = CorpusReader(files, config.json_keys, "jsonl")
        progress = _Progress(config.log_interval, sum(os.path.getsize(path) for path in files))
        for document, encoded in encode_documents(reader, spec, config.workers, config.chunksize, tokenizer):
            for key, item in encoded.items():
                if item is None:
                    stats.num_skipped[key] += 1
                else:
                    writers[key].add_document(*item)
            progress.update(document.num_bytes)
        progress.close()
        for key, writer in writers.items():
            if writer.num_sequences == 0:  # an empty dataset would make GPTDataset loop forever
                raise DataInputError(f"--json-keys {key!r}: every document is blank for this key")
        for writer in writers.values():
            writer.finalize()
        for key in writers:
            write_record_tmp(config.output_prefix_for(key), tokenizer)
        for key, writer in writers.items():
            writer.publish()
            publish_record(config.output_prefix_for(key))
    except BaseException:
        for key, writer in writers.items():
            writer.discard()
            stale = record_path(config.output_prefix_for(key)) + ".tmp"
            if os.path.exists(stale):
                os.remove(stale)
        raise
    stats.num_documents = reader.num_documents
    stats.num_empty_documents = reader.num_empty
    stats.num_bytes = reader.num_bytes
    stats.num_sequences = {key: w.num_sequences for key, w in writers.items()}
    stats.num_tokens = {key: w.num_tokens for key, w in writers.items()}
    stats.seconds = time.perf_counter() - start
    return stats
