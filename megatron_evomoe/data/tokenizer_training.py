"""Train a byte-level BPE or WordPiece tokenizer and write it in Megatron-LM's file formats (tools/train_tokenizer.py).

Outputs in the output directory:
- always `tokenizer.json` (HF format; loadable as --tokenizer-type HuggingFaceTokenizer);
- BPE: `vocab.json` (token → id) + `merges.txt` (a `#version` header line, then one merge per line), GPT-2's
  format, loadable as --tokenizer-type GPT2BPETokenizer here and in Megatron-LM; `<|endoftext|>` is the one
  special token (the EOD);
- WordPiece: `vocab.txt` (one token per line, line number = id) with `[PAD] [UNK] [CLS] [SEP] [MASK]` first,
  loadable as BertWordPieceLowerCase (with --lowercase) or BertWordPieceCase.

Why byte-level BPE for GPT: every byte has a token, so no text is ever unknown. The corpus is streamed into the
trainer, so memory is the trainer's word counts, not the corpus. Files are written to a temporary directory
inside the output directory and moved into place at the end.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Iterator

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from megatron_evomoe.data.corpus_reader import INPUT_FORMATS, CorpusReader, resolve_input_files
from megatron_evomoe.data.errors import DataInputError
from megatron_evomoe.data.tokenizer import (
    BERT_CASE_TYPE,
    BERT_LOWER_TYPE,
    BERT_SPECIAL_TOKENS,
    GPT2_EOD_TOKEN,
    GPT2_TYPE,
)

MODEL_TYPES = ("bpe", "wordpiece")
_BYTE_ALPHABET_SIZE = 256


@dataclass
class TokenizerTrainingConfig:
    """Settings of one tokenizer training run (the flags of tools/train_tokenizer.py)."""

    input: list[str]
    """Files, directories or globs (--input)."""

    output_dir: str
    """Where the tokenizer files are written (--output-dir)."""

    model_type: str = "bpe"
    """'bpe' (byte-level, GPT-2 style) or 'wordpiece' (BERT style) (--type)."""

    vocab_size: int = 4096
    """Target vocabulary size, special tokens included (--vocab-size)."""

    json_keys: list[str] = field(default_factory=lambda: ["text"])
    """JSON keys whose texts are trained on, for JSONL input (--json-keys)."""

    input_format: str = "auto"
    """'auto' (.jsonl/.json are JSONL, other files plain text, one document per line), 'jsonl' or 'text'."""

    lowercase: bool = False
    """Lowercase (and strip accents) before WordPiece; WordPiece only (--lowercase)."""

    min_frequency: int = 2
    """Minimum pair/word frequency for a merge or a vocabulary entry (--min-frequency)."""

    def __post_init__(self) -> None:
        if isinstance(self.input, str):
            self.input = [self.input]
        if self.model_type not in MODEL_TYPES:
            raise DataInputError(f"--type must be one of {MODEL_TYPES}, got {self.model_type!r}")
        if self.input_format not in INPUT_FORMATS:
            raise DataInputError(f"--input-format must be one of {INPUT_FORMATS}, got {self.input_format!r}")
        minimum = _BYTE_ALPHABET_SIZE + 1 if self.model_type == "bpe" else len(BERT_SPECIAL_TOKENS) + 1
        if self.vocab_size < minimum:
            raise DataInputError(f"--vocab-size must be >= {minimum} for {self.model_type}, got {self.vocab_size}")
        if self.min_frequency < 1:
            raise DataInputError(f"--min-frequency must be >= 1, got {self.min_frequency}")
        if self.lowercase and self.model_type != "wordpiece":
            raise DataInputError("--lowercase applies to --type wordpiece only (byte-level BPE is case-preserving)")
        if not self.json_keys:
            raise DataInputError("--json-keys must name at least one key")

    @property
    def megatron_tokenizer_type(self) -> str:
        """The --tokenizer-type that loads the Megatron-format files written by this run."""
        if self.model_type == "bpe":
            return GPT2_TYPE
        return BERT_LOWER_TYPE if self.lowercase else BERT_CASE_TYPE


@dataclass
class TokenizerTrainingResult:
    """What a training run produced."""

    files: dict[str, str]
    """Role ('tokenizer_json', 'vocab_file', 'merge_file') → path written."""

    tokenizer_type: str
    """The --tokenizer-type for the Megatron-format files."""

    vocab_size: int
    num_documents: int
    num_empty_documents: int
    seconds: float

    def summary(self) -> str:
        """A one-line summary for the console."""
        return (
            f"trained {self.tokenizer_type} tokenizer: vocab {self.vocab_size} from {self.num_documents} documents "
            f"({self.num_empty_documents} empty skipped) in {self.seconds:.1f}s -> "
            + ", ".join(self.files.values())
        )


def _new_tokenizer(config: TokenizerTrainingConfig) -> tuple[Tokenizer, trainers.Trainer]:
    if config.model_type == "bpe":
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=config.vocab_size,
            min_frequency=config.min_frequency,
            special_tokens=[GPT2_EOD_TOKEN],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        return tokenizer, trainer
    special = list(BERT_SPECIAL_TOKENS.values())
    tokenizer = Tokenizer(models.WordPiece(unk_token=BERT_SPECIAL_TOKENS["unk"]))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=config.lowercase, strip_accents=config.lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(
        vocab_size=config.vocab_size,
        min_frequency=config.min_frequency,
        special_tokens=special,
        continuing_subword_prefix="##",
        show_progress=False,
    )
    return tokenizer, trainer


def _add_bert_post_processor(tokenizer: Tokenizer) -> None:
    """Make tokenizer.json add [CLS]/[SEP] like BERT when used for pairs through HF (our tokenize never does)."""
    cls, sep = BERT_SPECIAL_TOKENS["cls"], BERT_SPECIAL_TOKENS["sep"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, tokenizer.token_to_id(cls)), (sep, tokenizer.token_to_id(sep))],
    )


def _texts(reader: CorpusReader) -> Iterator[str]:
    for document in reader:
        yield from (text for text in document.texts.values() if text.strip())


def train_tokenizer(config: TokenizerTrainingConfig) -> TokenizerTrainingResult:
    """Train on the input corpus and write the tokenizer files into `config.output_dir`.

    Raises:
        DataInputError: bad or empty input, or an output directory that cannot be written.
    """
    start = time.perf_counter()
    files = resolve_input_files(config.input, config.input_format)
    reader = CorpusReader(files, config.json_keys, config.input_format)
    tokenizer, trainer = _new_tokenizer(config)
    tokenizer.train_from_iterator(_texts(reader), trainer)
    if config.model_type == "wordpiece":
        _add_bert_post_processor(tokenizer)
    written = _write_files(tokenizer, config)
    return TokenizerTrainingResult(
        files=written,
        tokenizer_type=config.megatron_tokenizer_type,
        vocab_size=tokenizer.get_vocab_size(with_added_tokens=True),
        num_documents=reader.num_documents,
        num_empty_documents=reader.num_empty,
        seconds=time.perf_counter() - start,
    )


def _write_files(tokenizer: Tokenizer, config: TokenizerTrainingConfig) -> dict[str, str]:
    try:
        os.makedirs(config.output_dir, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=".tokenizer-", dir=config.output_dir)
    except OSError as err:
        raise DataInputError(f"--output-dir {config.output_dir!r}: cannot write ({err.strerror})") from None
    try:
        tokenizer.save(os.path.join(staging, "tokenizer.json"))
        # model.save writes vocab.json + merges.txt (with the '#version' header) for BPE, vocab.txt for WordPiece.
        tokenizer.model.save(staging)
        roles = {"tokenizer_json": "tokenizer.json"}
        if config.model_type == "bpe":
            roles.update(vocab_file="vocab.json", merge_file="merges.txt")
        else:
            roles.update(vocab_file="vocab.txt")
        written = {}
        for role, name in roles.items():
            written[role] = os.path.join(config.output_dir, name)
            os.replace(os.path.join(staging, name), written[role])
        return written
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def megatron_tokenizer_args(result: TokenizerTrainingResult) -> list[str]:
    """The tokenizer flags that load the Megatron-format files of `result` (for printing usage hints)."""
    args = ["--tokenizer-type", result.tokenizer_type, "--vocab-file", result.files["vocab_file"]]
    if "merge_file" in result.files:
        args += ["--merge-file", result.files["merge_file"]]
    return args

