"""Tokenizers for preprocessing and the dataset providers, backed by the Rust `tokenizers` library.

Why this module exists: Megatron-LM's own tokenizers live in Megatron-LM (not in the megatron-core wheel), and
megatron.core's new tokenizer system needs `transformers`/metadata files. We load Megatron-LM's *file formats*
(GPT-2 `vocab.json` + `merges.txt`, BERT `vocab.txt`, or a HF `tokenizer.json`) into one fast HF tokenizer, so
.bin/.idx data and checkpoints stay interchangeable with Megatron-LM.

Encoding contract (same as Megatron-LM's tokenizers): `tokenize(text)` returns the ids of the text only; it
never adds BOS/CLS/SEP/EOD (the preprocessor appends EOD itself with --append-eod). For the Megatron-format
types (GPT2BPETokenizer, BertWordPiece*), special-token strings written literally in the text (e.g.
"<|endoftext|>") are encoded as ordinary text, as Megatron-LM does; a `tokenizer.json` keeps whatever
added-token handling it declares.

Special tokens: GPT2BPETokenizer requires `<|endoftext|>` (EOD); BertWordPiece* require
`[PAD] [UNK] [CLS] [SEP] [MASK]` and use `[SEP]` as EOD. Other roles are looked up by the candidate strings in
`SPECIAL_TOKEN_CANDIDATES`; a role the vocabulary lacks raises `MissingSpecialTokenError`, a
NotImplementedError, which is what megatron.core's datasets treat as "this tokenizer has no such token"
(e.g. GPT has no pad token, so GPTDataset masks nothing as padding).
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

from megatron.core.tokenizers import MegatronTokenizerBase
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

from megatron_evomoe.data.errors import DataInputError
from megatron_evomoe.data.tokenizer_types import (
    BERT_CASE_TYPE, BERT_LOWER_TYPE, GPT2_TYPE, HF_TYPE, TOKENIZER_TYPES,
)

GPT2_EOD_TOKEN = "<|endoftext|>"
BERT_SPECIAL_TOKENS = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}

# Token strings tried, in order, for each role. The first one present in the vocabulary wins.
SPECIAL_TOKEN_CANDIDATES: Mapping[str, tuple[str, ...]] = {
    "eod": (GPT2_EOD_TOKEN, "</s>", "<|end_of_text|>", "<eos>", "[SEP]"),
    "pad": ("<pad>", "[PAD]", "<|pad|>"),
    "unk": ("<unk>", "[UNK]"),
    "cls": ("[CLS]", "<cls>"),
    "sep": ("[SEP]", "<sep>"),
    "mask": ("[MASK]", "<mask>"),
}


class MissingSpecialTokenError(NotImplementedError):
    """The tokenizer's vocabulary has no token for a special role (pad, mask, ...).

    A NotImplementedError because megatron.core's dataset code probes optional tokens and treats exactly that
    as "absent" (see megatron/core/datasets/megatron_dataset.py).
    """


class FastTokenizer(MegatronTokenizerBase):
    """A megatron.core tokenizer over a HF `tokenizers.Tokenizer`.

    Satisfies what megatron.core's GPT/BERT datasets read: `vocab_size`, `eod`, `pad` (probed), and a
    `unique_identifiers` dict *attribute* that goes into the dataset cache hash. Picklable, so DataLoader
    workers can receive datasets that hold it.

    Args:
        backend: the loaded HF tokenizer.
        tokenizer_type: one of TOKENIZER_TYPES, recorded for cache identity and messages.
        paths: the files it was loaded from (cache identity).
        special_token_ids: role ("eod", "pad", "cls", "sep", "mask", "unk") → id, for the roles present.
    """

    def __init__(
        self,
        backend: Tokenizer,
        tokenizer_type: str,
        paths: Sequence[str],
        special_token_ids: Mapping[str, int],
    ) -> None:
        super().__init__(path=paths[0] if paths else "", config={})
        self._backend = backend
        self.tokenizer_type = tokenizer_type
        self._special_token_ids = dict(special_token_ids)
        self._vocab: Optional[dict[str, int]] = None
        self._inv_vocab: Optional[dict[int, str]] = None
        self.unique_identifiers = OrderedDict(
            [("class", type(self).__name__), ("tokenizer_type", tokenizer_type), ("tokenizer_path", list(paths))]
        )

    def tokenize(self, text: str) -> list[int]:
        """Encode `text` to token ids, without adding any special token."""
        return self._backend.encode(text, add_special_tokens=False).ids

    def detokenize(self, ids: Sequence[int]) -> str:
        """Decode ids (list or numpy array) back to text; special tokens are kept, not skipped."""
        return self._backend.decode([int(i) for i in ids], skip_special_tokens=False)

    def to_json(self) -> str:
        """The tokenizer as a Hugging Face ``tokenizer.json`` (what a model export ships)."""
        return self._backend.to_str()

    def special_tokens(self) -> dict[str, str]:
        """role ("eod", "pad", "unk", ...) -> token string, for the roles this vocabulary has."""
        return {role: self._backend.id_to_token(token_id) for role, token_id in self._special_token_ids.items()}

    def apply_chat_template(self, *args, **kwargs):
        """Pretraining tokenizers carry no chat template."""
        raise NotImplementedError(f"{self.tokenizer_type} has no chat template")

    @property
    def vocab_size(self) -> int:
        """Number of token ids, added tokens included (not padded for TP; see `padded_vocab_size`)."""
        return self._backend.get_vocab_size(with_added_tokens=True)

    @property
    def vocab(self) -> dict[str, int]:
        """token → id, built on first use (a dict copy of the whole vocabulary)."""
        if self._vocab is None:
            self._vocab = self._backend.get_vocab(with_added_tokens=True)
        return self._vocab

    @property
    def inv_vocab(self) -> dict[int, str]:
        """id → token, built on first use."""
        if self._inv_vocab is None:
            self._inv_vocab = {i: t for t, i in self.vocab.items()}
        return self._inv_vocab

    def _special(self, role: str) -> int:
        try:
            return self._special_token_ids[role]
        except KeyError:
            raise MissingSpecialTokenError(
                f"{self.tokenizer_type} tokenizer has no {role} token "
                f"(none of {', '.join(SPECIAL_TOKEN_CANDIDATES[role])} is in its vocabulary)"
            ) from None

    @property
    def eod(self) -> int:
        """End-of-document id: `<|endoftext|>` for GPT-2 BPE, `[SEP]` for BERT WordPiece."""
        return self._special("eod")

    @property
    def pad(self) -> int:
        """Padding id; raises MissingSpecialTokenError when the vocabulary has none (GPT-2)."""
        return self._special("pad")

    @property
    def unk(self) -> int:
        """Unknown-token id."""
        return self._special("unk")

    @property
    def cls(self) -> int:
        """[CLS] id."""
        return self._special("cls")

    @property
    def sep(self) -> int:
        """[SEP] id."""
        return self._special("sep")

    @property
    def mask(self) -> int:
        """[MASK] id."""
        return self._special("mask")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.tokenizer_type}, vocab_size={self.vocab_size})"


@dataclass(frozen=True)
class TokenizerSpec:
    """How to load a tokenizer: the four Megatron-LM tokenizer flags. Small and picklable, so worker
    processes can rebuild the tokenizer instead of receiving it."""

    tokenizer_type: Optional[str]
    """One of TOKENIZER_TYPES (--tokenizer-type)."""

    vocab_file: Optional[str] = None
    """GPT-2 vocab.json or BERT vocab.txt (--vocab-file)."""

    merge_file: Optional[str] = None
    """GPT-2 merges.txt (--merge-file)."""

    tokenizer_model: Optional[str] = None
    """A HF tokenizer.json, or a directory holding one (--tokenizer-model)."""

    def build(self) -> FastTokenizer:
        """Load the tokenizer; see `build_tokenizer`."""
        return build_tokenizer(self.tokenizer_type, self.vocab_file, self.merge_file, self.tokenizer_model)


def build_tokenizer(
    tokenizer_type: Optional[str],
    vocab_file: Optional[str] = None,
    merge_file: Optional[str] = None,
    tokenizer_model: Optional[str] = None,
) -> FastTokenizer:
    """Load a tokenizer from Megatron-LM-format files.

    Args:
        tokenizer_type: GPT2BPETokenizer (vocab_file + merge_file), BertWordPieceLowerCase /
            BertWordPieceCase (vocab_file), or HuggingFaceTokenizer (tokenizer_model).
        vocab_file, merge_file, tokenizer_model: paths, as given to the flags of the same names.

    Returns:
        The FastTokenizer.

    Raises:
        DataInputError (a ValueError): unknown type, or a needed file that is missing, unreadable or malformed;
            the message names the flag and the path.
    """
    if tokenizer_type is None:
        raise DataInputError(f"--tokenizer-type is required (one of {', '.join(TOKENIZER_TYPES)})")
    if tokenizer_type == GPT2_TYPE:
        return _load_gpt2_bpe(vocab_file, merge_file)
    if tokenizer_type in (BERT_LOWER_TYPE, BERT_CASE_TYPE):
        return _load_bert_wordpiece(vocab_file, lowercase=tokenizer_type == BERT_LOWER_TYPE)
    if tokenizer_type == HF_TYPE:
        return _load_hf_json(tokenizer_model)
    raise DataInputError(
        f"--tokenizer-type {tokenizer_type!r} is not supported (choose from {', '.join(TOKENIZER_TYPES)})"
    )


def build_tokenizer_from_args(args) -> FastTokenizer:
    """Build the tokenizer from an argparse namespace holding the flags of `flags.add_tokenizer_args`."""
    return tokenizer_spec_from_args(args).build()


def tokenizer_spec_from_args(args) -> TokenizerSpec:
    """Map the tokenizer flags of an argparse namespace to a TokenizerSpec."""
    return TokenizerSpec(args.tokenizer_type, args.vocab_file, args.merge_file, args.tokenizer_model)


def padded_vocab_size(
    vocab_size: int, make_vocab_size_divisible_by: int = 128, tensor_model_parallel_size: int = 1
) -> int:
    """Round the vocabulary up so the embedding splits evenly over TP ranks in GEMM-friendly blocks.

    Same rule as Megatron-LM: the padded size is the smallest multiple of
    `make_vocab_size_divisible_by * tensor_model_parallel_size` that is >= `vocab_size`.
    """
    for name, value in (
        ("vocab_size", vocab_size),
        ("make_vocab_size_divisible_by", make_vocab_size_divisible_by),
        ("tensor_model_parallel_size", tensor_model_parallel_size),
    ):
        if not isinstance(value, int) or value < 1:
            raise DataInputError(f"{name} must be a positive integer, got {value!r}")
    multiple = make_vocab_size_divisible_by * tensor_model_parallel_size
    return -(-vocab_size // multiple) * multiple


def _readable_file(path: Optional[str], flag: str, tokenizer_type: str) -> str:
    if path is None:
        raise DataInputError(f"{tokenizer_type} needs {flag}")
    if not os.path.isfile(path):
        raise DataInputError(f"{flag} {path!r}: no such file")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as err:
        raise DataInputError(f"{flag} {path!r}: cannot read ({err.strerror})") from None
    return path


def _special_token_ids(backend: Tokenizer, fixed: Mapping[str, str]) -> dict[str, int]:
    """Resolve role → id: roles in `fixed` use exactly that token, the rest use SPECIAL_TOKEN_CANDIDATES."""
    ids = {}
    for role, candidates in SPECIAL_TOKEN_CANDIDATES.items():
        for token in (fixed[role],) if role in fixed else candidates:
            token_id = backend.token_to_id(token)
            if token_id is not None:
                ids[role] = token_id
                break
    return ids


def _load_gpt2_bpe(vocab_file: Optional[str], merge_file: Optional[str]) -> FastTokenizer:
    vocab_file = _readable_file(vocab_file, "--vocab-file", GPT2_TYPE)
    merge_file = _readable_file(merge_file, "--merge-file", GPT2_TYPE)
    try:
        with open(vocab_file, encoding="utf-8") as f:
            vocab = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataInputError(f"--vocab-file {vocab_file!r}: not a GPT-2 vocab.json ({err})") from None
    if not isinstance(vocab, dict):
        raise DataInputError(f"--vocab-file {vocab_file!r}: not a GPT-2 vocab.json (expected a token→id object)")
    if GPT2_EOD_TOKEN not in vocab:
        raise DataInputError(f"--vocab-file {vocab_file!r}: has no {GPT2_EOD_TOKEN!r} token")
    try:
        model = models.BPE.from_file(vocab_file, merge_file)
    except Exception as err:  # the Rust loader raises a bare Exception for malformed files
        raise DataInputError(
            f"--merge-file {merge_file!r} does not fit --vocab-file {vocab_file!r}: {err}"
        ) from None
    backend = Tokenizer(model)
    # GPT-2's byte-level scheme: same regex pre-split and byte→unicode map as Megatron-LM's GPT2BPETokenizer.
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    special = _special_token_ids(backend, {"eod": GPT2_EOD_TOKEN})
    return FastTokenizer(backend, GPT2_TYPE, [vocab_file, merge_file], special)


def _load_bert_wordpiece(vocab_file: Optional[str], lowercase: bool) -> FastTokenizer:
    tokenizer_type = BERT_LOWER_TYPE if lowercase else BERT_CASE_TYPE
    vocab_file = _readable_file(vocab_file, "--vocab-file", tokenizer_type)
    try:
        with open(vocab_file, encoding="utf-8") as f:
            tokens = {line.rstrip("\n") for line in f}
    except UnicodeDecodeError as err:
        raise DataInputError(f"--vocab-file {vocab_file!r}: not a UTF-8 vocab.txt ({err})") from None
    missing = [t for t in BERT_SPECIAL_TOKENS.values() if t not in tokens]
    if missing:
        raise DataInputError(f"--vocab-file {vocab_file!r}: missing BERT special tokens {' '.join(missing)}")
    backend = Tokenizer(models.WordPiece.from_file(vocab_file, unk_token=BERT_SPECIAL_TOKENS["unk"]))
    # BERT's basic tokenizer: clean text, split CJK chars, lowercase + strip accents only for the uncased type.
    backend.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=lowercase)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    special = _special_token_ids(backend, {**BERT_SPECIAL_TOKENS, "eod": BERT_SPECIAL_TOKENS["sep"]})
    return FastTokenizer(backend, tokenizer_type, [vocab_file], special)


def _load_hf_json(tokenizer_model: Optional[str]) -> FastTokenizer:
    if tokenizer_model is not None and os.path.isdir(tokenizer_model):
        tokenizer_model = os.path.join(tokenizer_model, "tokenizer.json")
    path = _readable_file(tokenizer_model, "--tokenizer-model", HF_TYPE)
    try:
        backend = Tokenizer.from_file(path)
    except Exception as err:  # the Rust loader raises a bare Exception for malformed files
        raise DataInputError(f"--tokenizer-model {path!r}: not a HF tokenizer.json ({err})") from None
    return FastTokenizer(backend, HF_TYPE, [path], _special_token_ids(backend, {}))
