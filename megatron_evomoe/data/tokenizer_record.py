"""Which tokenizer made a ``.bin/.idx`` dataset: a sidecar ``PREFIX.tokenizer.json`` beside it.

Why: token ids carry no trace of their tokenizer. Data tokenized with a WordPiece vocabulary and
trained with a BPE one of similar size (or the reverse) trains without any error, on noise.
``tools/preprocess_data.py`` records the tokenizer's type, its number of ids and a SHA-256 of its
vocabulary (the tokens in id order); training refuses data whose record does not match its
tokenizer. Data written before the record existed (or by Megatron-LM) has no sidecar and still
loads, with a one-line note.

A tokenizer that appends ids after the data's vocabulary (BERT/RoBERTa's added special tokens,
``data/mlm_tokenizer.py``) matches: the first ``vocab_size`` ids of the training tokenizer are compared.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Optional

import torch

from megatron_evomoe.data.errors import DataInputError

logger = logging.getLogger(__name__)

SUFFIX = ".tokenizer.json"


def record_path(prefix: str) -> str:
    """``PREFIX.tokenizer.json``."""
    return prefix + SUFFIX


def tokenizer_record(tokenizer, num_ids: Optional[int] = None) -> dict:
    """Type, number of ids and vocabulary hash of ``tokenizer`` (of its first ``num_ids`` ids)."""
    base = getattr(tokenizer, "base", tokenizer)  # an MLMTokenizer's underlying tokenizer
    num_ids = tokenizer.vocab_size if num_ids is None else num_ids
    inv_vocab = tokenizer.inv_vocab
    tokens = [inv_vocab.get(i) for i in range(num_ids)]
    digest = hashlib.sha256(json.dumps(tokens, ensure_ascii=False).encode("utf-8")).hexdigest()
    return {"tokenizer_type": getattr(base, "tokenizer_type", type(base).__name__), "vocab_size": num_ids,
            "vocab_sha256": digest}


def write_record_tmp(prefix: str, tokenizer) -> str:
    """Write the record of ``tokenizer`` under a temporary name; returns it (renamed by :func:`publish_record`)."""
    tmp = record_path(prefix) + ".tmp"
    with open(tmp, "w") as f:
        json.dump(tokenizer_record(tokenizer), f, indent=1, sort_keys=True)
    return tmp


def publish_record(prefix: str) -> None:
    """Rename the temporary record to ``PREFIX.tokenizer.json``."""
    os.replace(record_path(prefix) + ".tmp", record_path(prefix))


def check_tokenizer_record(prefix: str, tokenizer, flag: str = "--data-path") -> None:
    """Raise DataInputError when PREFIX was tokenized by another tokenizer than ``tokenizer``."""
    path = record_path(prefix)
    if not os.path.isfile(path):
        if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
            logger.warning("note: %s has no %s (written before it existed): its tokenizer is not checked", prefix, SUFFIX)
        return
    try:
        with open(path, "rb") as f:
            saved = json.load(f)
        saved_ids = int(saved["vocab_size"])
        saved_type, saved_hash = saved["tokenizer_type"], saved["vocab_sha256"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataInputError(f"data prefix {prefix!r} ({flag}): {path} is corrupt ({exc})") from None
    ours = tokenizer_record(tokenizer, min(saved_ids, tokenizer.vocab_size))
    if saved_type != ours["tokenizer_type"] or saved_ids > tokenizer.vocab_size or saved_hash != ours["vocab_sha256"]:
        raise DataInputError(
            f"data prefix {prefix!r} ({flag}) was tokenized with {saved_type} ({saved_ids} ids, vocabulary "
            f"{saved_hash[:12]}), this run's tokenizer is {ours['tokenizer_type']} ({tokenizer.vocab_size} ids, "
            f"vocabulary {ours['vocab_sha256'][:12]}) ({path}): pass the tokenizer flags used by "
            "tools/preprocess_data.py, or re-run it with this tokenizer"
        )
