"""What the pipelines need from a store. LanceDB (embedded) is the default implementation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from llmtwin.types import Chunk, Hit, Section


@dataclass
class DocRecord:
    """What the store remembers of one document: enough to skip, replace, delete and dedup it."""

    doc_id: str
    source: str
    file_type: str
    file_hash: str
    content_hash: str
    dedup_hash: str
    minhash: bytes
    n_chunks: int
    status: str  # "stored" or "duplicate"
    duplicate_of: str = ""
    line: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class StoreVersion:
    version: int
    time: str
    tables: dict[str, int]
    summary: dict[str, Any]


class Store(Protocol):
    def documents(self) -> list[DocRecord]: ...

    def chunk_vectors(self, doc_ids: list[str]) -> dict[str, np.ndarray]: ...

    def write_batch(
        self, docs: list[DocRecord], sections: list[Section], chunks: list[Chunk], vectors: np.ndarray
    ) -> None: ...

    def delete_documents(self, doc_ids: list[str]) -> None: ...

    def commit_version(self, summary: dict[str, Any]) -> StoreVersion: ...

    def versions(self) -> list[StoreVersion]: ...

    def dense_search(self, vector: np.ndarray, limit: int, where: str | None) -> list[Hit]: ...

    def text_search(self, query: str, limit: int, where: str | None) -> list[Hit]: ...

    def count_chunks(self) -> int: ...
