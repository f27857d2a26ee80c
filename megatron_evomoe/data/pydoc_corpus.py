"""The embedded offline demo corpus: CPython's pydoc topic help texts as JSONL.

Why this corpus: it ships inside every CPython (`pydoc_data.topics`), so demos and tests need no download and
no network; it is real English prose with code (~80 documents, ~0.5 MB), enough to train a small BPE
tokenizer and a tiny GPT. Its exact content depends on the Python version, so never hard-code its statistics.
"""

from __future__ import annotations

import json
import os

from pydoc_data.topics import topics as _PYDOC_TOPICS


def pydoc_documents() -> list[dict[str, str]]:
    """One document per pydoc topic, `{"text": ..., "topic": ...}`, sorted by topic name (deterministic);
    topics with blank text are left out."""
    return [
        {"text": _PYDOC_TOPICS[topic], "topic": topic}
        for topic in sorted(_PYDOC_TOPICS)
        if _PYDOC_TOPICS[topic].strip()
    ]


def write_pydoc_corpus(path: str) -> int:
    """Write the pydoc corpus as UTF-8 JSONL to `path` (through a temporary file, then renamed).

    Returns:
        The number of documents written.
    """
    documents = pydoc_documents()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp_path = f"{path}.tmp"
    try:
        with open(tmp_path, "w", encoding="utf-8") as f:
            for document in documents:
                f.write(json.dumps(document, ensure_ascii=False) + "\n")
        os.replace(tmp_path, path)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
    return len(documents)
