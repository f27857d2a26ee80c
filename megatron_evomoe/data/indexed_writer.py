"""Writes one megatron.core IndexedDataset (PREFIX.bin + PREFIX.idx) so that it appears all at once or not at all.

Why: a preprocessing run that fails halfway must not leave a .bin/.idx pair that IndexedDataset would happily
open. Data goes to PREFIX.bin.tmp / PREFIX.idx.tmp through megatron.core's IndexedDatasetBuilder (so the
format is exactly megatron's), and `publish` renames them to the final names (atomic per file on POSIX).
Memory: token data streams to disk; the builder keeps one int per sequence for the index, as Megatron-LM does.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder, get_bin_path, get_idx_path

from megatron_evomoe.data.errors import DataInputError

TMP_SUFFIX = ".tmp"


class AtomicIndexedDatasetWriter:
    """Builds PREFIX.bin/.idx under temporary names; `finalize` then `publish`, or `discard` on error.

    Args:
        path_prefix: output prefix; the files are PREFIX.bin and PREFIX.idx.
        dtype: token dtype of the .bin (e.g. from megatron's DType.optimal_dtype(vocab_size)).

    Raises:
        DataInputError: the temporary .bin cannot be created (missing or read-only directory, ...).
    """

    def __init__(self, path_prefix: str, dtype: type) -> None:
        self.bin_path = get_bin_path(path_prefix)
        self.idx_path = get_idx_path(path_prefix)
        self._tmp_bin = self.bin_path + TMP_SUFFIX
        self._tmp_idx = self.idx_path + TMP_SUFFIX
        try:
            self._builder = IndexedDatasetBuilder(self._tmp_bin, dtype=dtype)
        except OSError as err:
            raise DataInputError(
                f"cannot write output file {self._tmp_bin!r} ({err.strerror}); check --output-prefix"
            ) from None
        self.num_documents = 0
        self.num_sequences = 0
        self.num_tokens = 0

    def add_document(self, tokens: np.ndarray, sequence_lengths: Sequence[int]) -> None:
        """Append one document made of consecutive sequences (one per sentence, or one for the document).

        Zero-length sequences are refused: megatron's GPTDataset loops forever on an epoch with no tokens.
        """
        if not sequence_lengths or min(sequence_lengths) < 1 or sum(sequence_lengths) != len(tokens):
            raise ValueError(
                f"sequence lengths {list(sequence_lengths)} must be positive and sum to the {len(tokens)} tokens"
            )
        self._builder.add_document(tokens, list(sequence_lengths))
        self.num_documents += 1
        self.num_sequences += len(sequence_lengths)
        self.num_tokens += len(tokens)

    def finalize(self) -> None:
        """Close the .bin and write the index, still under the temporary names."""
        self._builder.finalize(self._tmp_idx)

    def publish(self) -> None:
        """Rename the finalized temporary files to PREFIX.bin / PREFIX.idx (replacing older ones)."""
        os.replace(self._tmp_bin, self.bin_path)
        os.replace(self._tmp_idx, self.idx_path)

    def discard(self) -> None:
        """Close and delete the temporary files; the final names are left untouched."""
        if not self._builder.data_file.closed:
            self._builder.data_file.close()
        for path in (self._tmp_bin, self._tmp_idx):
            if os.path.exists(path):
                os.remove(path)
