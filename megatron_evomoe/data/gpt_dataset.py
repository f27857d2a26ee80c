"""The GPT dataset provider: .bin/.idx prefixes → megatron.core GPTDataset / BlendedDataset per split.

We configure megatron.core's `BlendedMegatronDatasetBuilder` + `GPTDataset` rather than re-implementing
sampling, so shuffling, blending and index caches are exactly Megatron-LM's and caches are shared with it.

Samples: `dataset[i]` is a dict of torch tensors (megatron's GPTDataset reads seq_length + 1 tokens and shifts):
    tokens          [seq_length] int64   input ids
    labels          [seq_length] int64   tokens shifted left by one (labels[j] == next token after tokens[j])
    loss_mask       [seq_length] float   0 on padding (and on EOD with eod_mask_loss)
    position_ids    [seq_length] int64   0..seq_length-1 (restarting after EOD with reset_position_ids)
    attention_mask  [1, seq_length, seq_length] bool, True = masked, only with create_attention_mask
                    (--reset-attention-mask)
A blended split's samples also carry "dataset_id" (which prefix the sample came from).

What this module adds around megatron:
- `GPTDataConfig`, validated with clear errors, and `data_config_from_args` (Megatron-LM flag names).
- Up-front checks with clear errors: every prefix has its .bin/.idx, the .bin has the size its .idx indexes
  (a truncated file or a pair from two datasets), the tokenizer matches the one recorded by preprocessing
  (`tokenizer_record.py`); token ids are below the tokenizer's
  vocabulary size (checked on the first `vocab_check_max_tokens` tokens of each .bin — default 2**27, i.e. all
  of any corpus below ~128M tokens per prefix, in ~0.1 s per 100M tokens; None scans whole files); and a
  split that asks for samples but got no documents (megatron's GPTDataset would loop forever on it).
- A split with no documents that asks for no samples (0, or None = one epoch) is not built: its entry is None.
- Works with and without torch.distributed: by default every rank builds (rank 0 first, then the others
  read rank 0's index caches, megatron's own ordering); pass `is_built_on_rank` to build on fewer ranks.
"""

from __future__ import annotations

import copy
import math
import os
import re
import struct
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from megatron.core.datasets.blended_dataset import BlendedDataset
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
from megatron.core.datasets.indexed_dataset import DType, IndexedDataset, get_bin_path, get_idx_path
from megatron.core.datasets.utils import Split, get_blend_from_list

from megatron_evomoe.data.errors import DataInputError
from megatron_evomoe.data.tokenizer_record import check_tokenizer_record

Blend = tuple[list[str], Optional[list[float]]]
"""megatron's blend: (prefixes, weights or None)."""

PATH_FLAGS = {
    "data_path": "--data-path",
    "train_data_path": "--train-data-path",
    "valid_data_path": "--valid-data-path",
    "test_data_path": "--test-data-path",
}
_SPLIT_PATTERN = re.compile(r"^\s*\d+(\.\d*)?(\s*,\s*\d+(\.\d*)?){0,2}\s*$")
_INDEX_MAGIC = b"MMIDIDX\x00\x00"
_INDEX_DTYPE_OFFSET = len(_INDEX_MAGIC) + 8  # magic, then a uint64 version, then the dtype code byte
_INDEX_HEADER_BYTES = _INDEX_DTYPE_OFFSET + 1 + 16  # ... then uint64 sequence and document counts
_SCAN_CHUNK_TOKENS = 1 << 24


@dataclass
class GPTDataConfig:
    """Where the GPT training data is and how it is cut into samples."""

    seq_length: int
    """Tokens per sample (--seq-length); each sample reads seq_length + 1 tokens for the shifted labels."""

    data_path: Optional[list[str]] = None
    """One distribution for all splits, cut by `split`: [PREFIX], [P1, P2, ...] (blended by size) or
    [W1, P1, W2, P2, ...] (weighted) (--data-path)."""

    train_data_path: Optional[list[str]] = None
    """Train-only blend, same syntax; excludes data_path (--train-data-path)."""

    valid_data_path: Optional[list[str]] = None
    """Validation-only blend (--valid-data-path)."""

    test_data_path: Optional[list[str]] = None
    """Test-only blend (--test-data-path)."""

    split: str = "969,30,1"
    """train,valid,test proportions of each data_path prefix's documents, e.g. '969,30,1' (--split)."""

    data_cache_path: Optional[str] = None
    """Directory for the index caches; None puts them in a cache/ directory beside each prefix
    (--data-cache-path)."""

    seed: int = 1234
    """Seed of the document and sample shuffles (--data-seed, default --seed)."""

    mmap_bin_files: bool = True
    """Memory-map the .bin files instead of reading them (--mmap-bin-files)."""

    reset_position_ids: bool = False
    """Restart position ids after each EOD (--reset-position-ids)."""

    reset_attention_mask: bool = False
    """Block attention across EOD tokens (--reset-attention-mask)."""

    eod_mask_loss: bool = False
    """Zero the loss mask on EOD tokens (--eod-mask-loss)."""

    create_attention_mask: bool = False
    """Put a [1, s, s] mask in each sample. The model's attention builds the causal mask itself, so
    only --reset-attention-mask (document boundaries) needs it."""

    num_dataset_builder_threads: int = 1
    """Threads building the per-prefix datasets of a blend."""

    vocab_check_max_tokens: Optional[int] = 1 << 27
    """Tokens per .bin checked against the vocabulary size; None checks whole files, 0 skips the check."""

    def __post_init__(self) -> None:
        if self.seq_length < 1:
            raise DataInputError(f"--seq-length must be >= 1, got {self.seq_length}")
        for name, flag in PATH_FLAGS.items():
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, str):
                value = value.split()
                setattr(self, name, value)
            _parse_blend(value, flag)
        per_split = any(getattr(self, name) is not None for name in list(PATH_FLAGS)[1:])
        if self.data_path is None and not per_split:
            raise DataInputError(NO_TRAINING_DATA)
        if self.data_path is not None and per_split:
            raise DataInputError(
                "--data-path excludes --train-data-path/--valid-data-path/--test-data-path: give one or the other"
            )
        if not _SPLIT_PATTERN.match(self.split) or sum(float(x) for x in self.split.split(",")) <= 0:
            raise DataInputError(
                f"--split must be 1 to 3 comma-separated non-negative numbers with a positive sum "
                f"(e.g. 969,30,1), got {self.split!r}"
            )
        if self.num_dataset_builder_threads < 1:
            raise ValueError(f"num_dataset_builder_threads must be >= 1, got {self.num_dataset_builder_threads}")
        if self.vocab_check_max_tokens is not None and self.vocab_check_max_tokens < 0:
            raise ValueError(f"vocab_check_max_tokens must be None or >= 0, got {self.vocab_check_max_tokens}")

    def blend(self) -> Optional[Blend]:
        """megatron's `blend` (data_path mode), else None."""
        return None if self.data_path is None else _parse_blend(self.data_path, PATH_FLAGS["data_path"])

    def blend_per_split(self) -> Optional[list[Optional[Blend]]]:
        """megatron's `blend_per_split` [train, valid, test] (per-split paths mode), else None."""
        if self.data_path is not None:
            return None
        return [
            None if getattr(self, name) is None else _parse_blend(getattr(self, name), PATH_FLAGS[name])
            for name in ("train_data_path", "valid_data_path", "test_data_path")
        ]

    def check_paths_exist(self) -> None:
        """Every prefix has its .bin and .idx (``--dry-run``: no file is read)."""
        for prefix, flag in self.prefixes():
            _check_prefix_files(prefix, flag)

    def check_files(self, tokenizer) -> None:
        """Every prefix has its .bin/.idx and no token id beyond ``tokenizer``'s vocabulary."""
        for prefix, flag in self.prefixes():
            _check_prefix_files(prefix, flag)
            check_index_matches_data(prefix, flag)
            check_tokenizer_record(prefix, tokenizer, flag)
            if self.vocab_check_max_tokens != 0:
                check_token_ids(prefix, tokenizer.vocab_size, self.vocab_check_max_tokens, flag)

    def megatron_config_kwargs(self, tokenizer) -> dict:
        """The fields every megatron.core BlendedMegatronDatasetConfig (GPT, BERT) takes from here."""
        return dict(
            random_seed=self.seed,
            sequence_length=self.seq_length,
            blend=self.blend(),
            blend_per_split=self.blend_per_split(),
            split=self.split if self.data_path is not None else None,
            path_to_cache=self.data_cache_path,
            mmap_bin_files=self.mmap_bin_files,
            tokenizer=tokenizer,
            num_dataset_builder_threads=self.num_dataset_builder_threads,
        )

    def prefixes(self) -> list[tuple[str, str]]:
        """Every (prefix, flag it came from), for checks and messages."""
        found = []
        for name, flag in PATH_FLAGS.items():
            if getattr(self, name) is not None:
                found.extend((prefix, flag) for prefix in _parse_blend(getattr(self, name), flag)[0])
        return found


NO_TRAINING_DATA = "no training data: give --data-path, or --train-data-path/--valid-data-path/--test-data-path"


def gives_data_path(args) -> bool:
    """Whether the parsed flags name any data (--data-path or a per-split path)."""
    return any(getattr(args, name, None) is not None for name in PATH_FLAGS)


def require_data(config: Optional[GPTDataConfig]) -> GPTDataConfig:
    """``config``, or the one-line error of a run that names no data (``RunConfig.data`` is None)."""
    if config is None:
        raise DataInputError(NO_TRAINING_DATA)
    return config


def data_seed(args) -> int:
    """The seed of the data shuffles: --data-seed if given, else --seed (Megatron-LM uses --seed)."""
    seed = getattr(args, "data_seed", None)
    return getattr(args, "seed", GPTDataConfig.seed) if seed is None else seed


def data_config_from_args(args) -> GPTDataConfig:
    """Map an argparse namespace (flags of `flags.add_data_args`, plus --seq-length and --seed from the
    training parser) to a GPTDataConfig."""
    return GPTDataConfig(
        seq_length=args.seq_length,
        data_path=args.data_path,
        train_data_path=args.train_data_path,
        valid_data_path=args.valid_data_path,
        test_data_path=args.test_data_path,
        split=args.split,
        data_cache_path=args.data_cache_path,
        seed=data_seed(args),
        mmap_bin_files=args.mmap_bin_files,
        reset_position_ids=args.reset_position_ids,
        reset_attention_mask=args.reset_attention_mask,
        # The causal mask is implicit in the model's attention; a [s, s] mask per sample is only
        # worth building when it carries document boundaries.
        create_attention_mask=args.reset_attention_mask,
        eod_mask_loss=args.eod_mask_loss,
    )


def build_gpt_datasets(
    config: GPTDataConfig,
    tokenizer,
    train_valid_test_num_samples: Sequence[Optional[int]],
    is_built_on_rank: Optional[Callable[[], bool]] = None,
) -> tuple[Optional[torch.utils.data.Dataset], ...]:
    """Build the train, valid and test datasets.

    Args:
        config: the data config.
        tokenizer: a megatron.core tokenizer (e.g. `tokenizer.build_tokenizer(...)`); needs `vocab_size`, `eod`
            and a `unique_identifiers` dict attribute.
        train_valid_test_num_samples: samples wanted per split; None = one epoch of that split's documents
            (not allowed for a weighted blend). Megatron-LM passes train_iters * global_batch_size etc.
        is_built_on_rank: with torch.distributed initialised, whether this rank builds (megatron's contract:
            True on global rank 0); None = every rank. Ignored without torch.distributed.

    Returns:
        (train, valid, test): GPTDataset or BlendedDataset each, or None for a split that is not built (no
        documents and no samples wanted, or not built on this rank).

    Raises:
        DataInputError: missing .bin/.idx, token ids >= vocab size, or samples wanted from an empty split.
        ValueError: malformed sample counts.
    """
    sizes = _validate_num_samples(train_valid_test_num_samples, config)
    config.check_files(tokenizer)
    gpt_config = GPTDatasetConfig(
        **config.megatron_config_kwargs(tokenizer),
        reset_position_ids=config.reset_position_ids,
        reset_attention_mask=config.reset_attention_mask,
        eod_mask_loss=config.eod_mask_loss,
        create_attention_mask=config.create_attention_mask,
    )
    _drop_empty_splits(gpt_config, config, sizes)
    builder = _GPTDatasetBuilder(GPTDataset, sizes, is_built_on_rank or _always, gpt_config)
    return tuple(builder.build())


def check_token_ids(prefix: str, vocab_size: int, max_tokens: Optional[int] = None, flag: str = "--data-path") -> None:
    """Raise DataInputError if a token id in the first `max_tokens` tokens (None: all) of PREFIX.bin is
    >= vocab_size, i.e. the data was made with another tokenizer. Reads the .bin in chunks (flat memory)."""
    dtype = _index_dtype(prefix, flag)
    if np.iinfo(dtype).max < vocab_size:
        return  # every value this dtype can hold is a valid id
    bin_path = get_bin_path(prefix)
    num_tokens = os.path.getsize(bin_path) // np.dtype(dtype).itemsize
    if max_tokens is not None:
        num_tokens = min(num_tokens, max_tokens)
    if num_tokens == 0:
        return
    tokens = np.memmap(bin_path, dtype=dtype, mode="r", shape=(num_tokens,))
    max_id = max(int(tokens[i : i + _SCAN_CHUNK_TOKENS].max()) for i in range(0, num_tokens, _SCAN_CHUNK_TOKENS))
    del tokens
    if max_id >= vocab_size:
        raise DataInputError(
            f"data prefix {prefix!r} ({flag}) contains token id {max_id}, but the tokenizer has only {vocab_size} ids: "
            "the data was tokenized with a different tokenizer; re-run tools/preprocess_data.py with the "
            "tokenizer flags used for training"
        )


class _GPTDatasetBuilder(BlendedMegatronDatasetBuilder):
    """megatron's builder, made to work without torch.distributed when a data cache path is set.

    megatron.core 0.16.1's BlendedDataset calls torch.distributed.get_rank() on a cache miss whenever
    path_to_cache is set, which raises without an initialised process group (blended_dataset.py:153). In
    that case (single process) the BlendedDataset gets a config copy without the cache path: its cheap
    indices are rebuilt in memory; the GPTDataset caches are still used.
    """

    @staticmethod
    def build_generic_dataset(cls, is_built_on_rank, synchronize_ranks, *args):
        if cls is BlendedDataset and not torch.distributed.is_initialized():
            *rest, config = args
            config = copy.copy(config)
            config.path_to_cache = None
            args = (*rest, config)
        return BlendedMegatronDatasetBuilder.build_generic_dataset(cls, is_built_on_rank, synchronize_ranks, *args)


def _always() -> bool:
    return True


def _parse_blend(values: Sequence[str], flag: str) -> Blend:
    if len(values) == 0:
        raise DataInputError(f"{flag} was given without any data prefix")
    prefixes, weights = get_blend_from_list(list(values))
    if weights is None and len(prefixes) > 1 and any(_is_number(p) for p in prefixes):
        raise DataInputError(
            f"{flag}: weights and prefixes must alternate, 'W1 PREFIX1 W2 PREFIX2 ...'; got {list(values)}"
        )
    if weights is not None and not all(math.isfinite(w) and w > 0 for w in weights):
        raise DataInputError(f"{flag}: blend weights must be positive numbers, got {weights}")
    if any(not p for p in prefixes):
        raise DataInputError(f"{flag}: empty data prefix in {list(values)}")
    return prefixes, weights


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _validate_num_samples(num_samples: Sequence[Optional[int]], config: GPTDataConfig) -> list[Optional[int]]:
    sizes = list(num_samples)
    if len(sizes) != len(Split):
        raise ValueError(f"train_valid_test_num_samples needs 3 entries (train, valid, test), got {sizes}")
    for split, size in zip(Split, sizes):
        if size is not None and (not isinstance(size, (int, np.integer)) or size < 0):
            raise ValueError(f"number of {split.name} samples must be None or an integer >= 0, got {size!r}")
    blends = [config.blend()] * len(Split) if config.data_path is not None else config.blend_per_split()
    for index, split in enumerate(Split):
        blend = blends[index]
        if blend is not None and blend[1] is not None and sizes[index] is None:
            raise ValueError(f"a weighted blend needs a number of {split.name} samples, got None")
    return [None if s is None else int(s) for s in sizes]


def _check_prefix_files(prefix: str, flag: str) -> None:
    for path in (get_bin_path(prefix), get_idx_path(prefix)):
        if not os.path.isfile(path):
            raise DataInputError(f"data prefix {prefix!r} ({flag}): missing {path}")


def check_index_matches_data(prefix: str, flag: str = "--data-path") -> None:
    """Raise DataInputError when PREFIX.idx is truncated or PREFIX.bin is not the data it indexes.

    megatron's .idx: magic, uint64 version, uint8 dtype code, uint64 sequence and document counts,
    then int32 lengths and int64 byte pointers per sequence and int64 document indices (and one int8
    mode per sequence for multimodal data). The .bin holds exactly the sequences it points at.
    """
    idx_path, bin_path = get_idx_path(prefix), get_bin_path(prefix)
    dtype = _index_dtype(prefix, flag)
    with open(idx_path, "rb") as f:
        header = f.read(_INDEX_HEADER_BYTES)
    if len(header) < _INDEX_HEADER_BYTES:
        raise DataInputError(f"data prefix {prefix!r} ({flag}): {idx_path} is truncated ({len(header)} bytes)")
    num_sequences, num_documents = struct.unpack("<QQ", header[_INDEX_DTYPE_OFFSET + 1 :])
    expected = _INDEX_HEADER_BYTES + 12 * num_sequences + 8 * num_documents
    size = os.path.getsize(idx_path)
    if size not in (expected, expected + num_sequences):
        raise DataInputError(
            f"data prefix {prefix!r} ({flag}): {idx_path} is {'truncated' if size < expected else 'corrupt'}: "
            f"{size} bytes, its header announces {num_sequences} sequences and {num_documents} documents "
            f"({expected} bytes)"
        )
    expected_bin = 0
    if num_sequences:
        with open(idx_path, "rb") as f:
            f.seek(_INDEX_HEADER_BYTES + 4 * (num_sequences - 1))
            (last_length,) = struct.unpack("<i", f.read(4))
            f.seek(_INDEX_HEADER_BYTES + 4 * num_sequences + 8 * (num_sequences - 1))
            (last_pointer,) = struct.unpack("<q", f.read(8))
        expected_bin = last_pointer + last_length * np.dtype(dtype).itemsize
    bin_size = os.path.getsize(bin_path)
    if bin_size != expected_bin:
        raise DataInputError(
            f"data prefix {prefix!r} ({flag}): {bin_path} has {bin_size} bytes but {idx_path} indexes "
            f"{expected_bin}: the .bin is truncated, or the two files come from different datasets"
        )


def _index_dtype(prefix: str, flag: str) -> type:
    idx_path = get_idx_path(prefix)
    with open(idx_path, "rb") as f:
        header = f.read(_INDEX_DTYPE_OFFSET + 1)
    if len(header) <= _INDEX_DTYPE_OFFSET or not header.startswith(_INDEX_MAGIC):
        raise DataInputError(f"data prefix {prefix!r} ({flag}): {idx_path} is not a megatron index file")
    try:
        return DType.dtype_from_code(header[_INDEX_DTYPE_OFFSET])
    except ValueError:
        raise DataInputError(
            f"data prefix {prefix!r} ({flag}): {idx_path} is corrupt (unknown token type code {header[_INDEX_DTYPE_OFFSET]})"
        ) from None


def _split_token_counts(
    prefix: str, split_matrix: Sequence[Optional[tuple[float, float]]]
) -> tuple[int, list[Optional[int]]]:
    """(number of documents, tokens in each split) of one prefix, with megatron's rounding of the split
    bookends to whole documents."""
    dataset = IndexedDataset(prefix)
    # Copy: the index is an mmap that closes when `dataset` is collected; a view would then segfault.
    sequence_lengths = np.array(dataset.sequence_lengths, dtype=np.int64)
    del dataset
    num_documents = len(sequence_lengths)
    counts = []
    for bookends in split_matrix:
        if bookends is None:
            counts.append(None)
            continue
        begin, end = (int(round(b * float(num_documents))) for b in bookends)
        counts.append(int(sequence_lengths[begin:end].sum()))
    return num_documents, counts


def _drop_empty_splits(gpt_config: GPTDatasetConfig, config: GPTDataConfig, sizes: list[Optional[int]]) -> None:
    """Skip (set to None) splits that have no tokens and want no samples; raise if one wants samples.

    A zero-token split must never reach megatron's GPTDataset: its epoch computation never terminates.
    """
    if gpt_config.blend is not None:
        prefixes = gpt_config.blend[0]
        counts_per_prefix = {p: _split_token_counts(p, gpt_config.split_matrix) for p in prefixes}
        for index, split in enumerate(Split):
            if gpt_config.split_matrix[index] is None:
                continue
            empty = [p for p in prefixes if counts_per_prefix[p][1][index] == 0]
            if not empty:
                continue
            if sizes[index] == 0 or (sizes[index] is None and len(empty) == len(prefixes)):
                gpt_config.split_matrix[index] = None
                continue
            raise DataInputError(
                f"data prefix {empty[0]!r} (--data-path) has no documents in the {split.name} split "
                f"(--split {config.split} of its {counts_per_prefix[empty[0]][0]} documents), "
                f"but {sizes[index] if sizes[index] is not None else 'one epoch of'} {split.name} samples were "
                f"requested: change --split or request no {split.name} samples"
            )
        return
    for index, split in enumerate(Split):
        blend = gpt_config.blend_per_split[index]
        if blend is None:
            continue
        empty = [p for p in blend[0] if _split_token_counts(p, [(0.0, 1.0)])[1][0] == 0]
        if not empty:
            continue
        if sizes[index] == 0 or (sizes[index] is None and len(empty) == len(blend[0])):
            gpt_config.blend_per_split[index] = None
            continue
        raise DataInputError(f"data prefix {empty[0]!r} (--{split.name}-data-path) has no tokens")
