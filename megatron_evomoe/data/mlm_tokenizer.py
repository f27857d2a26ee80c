"""A tokenizer view with every special token masked-LM training and GLUE inputs need.

BERT WordPiece vocabularies already have ``[CLS] [SEP] [MASK] [PAD]``. A byte-level BPE vocabulary
from ``tools/train_tokenizer.py`` (GPT-2 style) has only ``<|endoftext|>``. RoBERTa, trained on such
a BPE, adds ``<s> </s> <pad> <mask>`` as extra ids (fairseq's dictionary does the same); so does
:func:`with_mlm_special_tokens`, appending the roles a vocabulary lacks *after* its last id. Text is
still encoded by the underlying tokenizer, so preprocessed ``.bin`` files stay valid and the added
ids can never come out of text; only the BERT dataset and the GLUE encoder write them.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Mapping, Optional, Sequence

from megatron.core.tokenizers import MegatronTokenizerBase

from megatron_evomoe.data.tokenizer import build_tokenizer_from_args

MLM_ROLES = ("cls", "sep", "mask", "pad")
"""Roles a masked-LM / sentence-classification input needs."""

ADDED_TOKEN_NAMES = {"cls": "<s>", "sep": "</s>", "pad": "<pad>", "mask": "<mask>"}
"""Names of added ids (RoBERTa's), used for decoding and the vocabulary view."""


class MLMTokenizer(MegatronTokenizerBase):
    """Delegates to ``base`` and answers the roles it lacks with ids appended after its vocabulary.

    Args:
        base: a megatron-style tokenizer (``tokenize``, ``detokenize``, ``vocab``, ``inv_vocab``,
            ``vocab_size``, role properties that raise ``NotImplementedError`` when absent, and a
            ``unique_identifiers`` dict).
        added: role -> id for the roles that were added (ids ``>= base.vocab_size``).
    """

    def __init__(self, base, added: Mapping[str, int]):
        super().__init__(path=getattr(base, "path", ""), config={})
        self.base = base
        self.added = dict(added)
        self._added_names = {token_id: ADDED_TOKEN_NAMES[role] for role, token_id in self.added.items()}
        self.unique_identifiers = OrderedDict(getattr(base, "unique_identifiers", {}))
        self.unique_identifiers["added_special_tokens"] = sorted(self.added.items())
        self._vocab: Optional[dict] = None
        self._inv_vocab: Optional[dict] = None

    def tokenize(self, text: str) -> list[int]:
        """Ids of ``text`` (the base tokenizer's; never an added id)."""
        return self.base.tokenize(text)

    def detokenize(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; added ids print as their names (``<s>``, ``<mask>``, ...)."""
        pieces, run = [], []
        for token_id in (int(i) for i in ids):
            if token_id in self._added_names:
                if run:
                    pieces.append(self.base.detokenize(run))
                    run = []
                pieces.append(self._added_names[token_id])
            else:
                run.append(token_id)
        if run:
            pieces.append(self.base.detokenize(run))
        return "".join(pieces)

    def apply_chat_template(self, *args, **kwargs):
        raise NotImplementedError("masked-LM tokenizers carry no chat template")

    @property
    def vocab_size(self) -> int:
        """Base vocabulary plus the added ids."""
        return self.base.vocab_size + len(self.added)

    @property
    def vocab(self) -> dict:
        if self._vocab is None:
            self._vocab = {**self.base.vocab, **{name: i for i, name in self._added_names.items()}}
        return self._vocab

    @property
    def inv_vocab(self) -> dict:
        if self._inv_vocab is None:
            self._inv_vocab = {**self.base.inv_vocab, **self._added_names}
        return self._inv_vocab

    def _role(self, role: str) -> int:
        if role in self.added:
            return self.added[role]
        return getattr(self.base, role)

    @property
    def cls(self) -> int:
        return self._role("cls")

    @property
    def sep(self) -> int:
        return self._role("sep")

    @property
    def mask(self) -> int:
        return self._role("mask")

    @property
    def pad(self) -> int:
        return self._role("pad")

    @property
    def eod(self) -> int:
        return self.base.eod

    def __repr__(self) -> str:
        added = ", ".join(f"{ADDED_TOKEN_NAMES[r]}={i}" for r, i in self.added.items())
        return f"MLMTokenizer({self.base!r}, added: {added or 'none'})"


def missing_roles(tokenizer) -> list[str]:
    """The MLM roles ``tokenizer`` has no token for."""
    missing = []
    for role in MLM_ROLES:
        try:
            getattr(tokenizer, role)
        except (NotImplementedError, AttributeError):
            missing.append(role)
    return missing


def with_mlm_special_tokens(tokenizer):
    """``tokenizer`` itself when it has every MLM role, else an :class:`MLMTokenizer` adding the
    missing ones (in the order cls, sep, mask, pad) after its last id."""
    missing = missing_roles(tokenizer)
    if not missing:
        return tokenizer
    first = tokenizer.vocab_size
    return MLMTokenizer(tokenizer, {role: first + i for i, role in enumerate(missing)})


def mlm_tokenizer_from_args(args):
    """The tokenizer of the tokenizer flags, with the MLM special tokens (BERT entry scripts)."""
    return with_mlm_special_tokens(build_tokenizer_from_args(args))
