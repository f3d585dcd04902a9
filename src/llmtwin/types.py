"""The few types that flow between stages: Document, Chunk, Hit, Citation, Answer and reports.

Plain dataclasses (no I/O, no heavy imports). `to_dict()` gives the JSON shape the CLI prints.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Document:
    """One loaded, cleaned document. A file gives one; a JSONL file gives one per record."""

    doc_id: str  # file: its path relative to the project (posix); JSONL: the record's `id`
    source: str  # the file it came from (posix path, relative to the project where possible)
    text: str  # cleaned text
    file_type: str  # md, txt, rst, html, pdf, code, json, jsonl
    metadata: dict[str, Any] = field(default_factory=dict)
    file_hash: str = ""  # sha256 of the raw file bytes (all records of a JSONL file share it)
    line: int | None = None  # JSONL: 1-based line number of the record

    @property
    def content_hash(self) -> str:
        from llmtwin.feature.hashing import text_hash

        return text_hash(self.text, self.metadata)


@dataclass
class LoadFailure:
    """A file (or a JSONL line) that could not be used, with the reason."""

    path: str
    error: str
    line: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {"path": self.path, "error": self.error}
        if self.line is not None:
            d["line"] = self.line
        return d


@dataclass
class Section:
    """A heading-delimited part of a document: the parent of its chunks (auto-merging retrieval)."""

    section_id: str
    doc_id: str
    heading_path: list[str]
    start: int  # character offsets into Document.text
    end: int
    text: str


@dataclass(frozen=True)
class Chunk:
    """Frozen: the store's in-memory copy hands the same objects to every search; a stage that
    changes a chunk (window, compress, merge) makes a new one with `dataclasses.replace`."""

    chunk_id: str
    doc_id: str
    source: str
    text: str
    start: int  # character offsets into the cleaned Document.text
    end: int
    heading_path: list[str] = field(default_factory=list)
    parent_id: str = ""  # Section.section_id
    index: int = 0  # position of the chunk in its document
    file_type: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Hit:
    """A chunk found for a query. `score` is the current stage's; `scores` keeps every stage's."""

    chunk: Chunk
    score: float
    scores: dict[str, float] = field(default_factory=dict)

    def to_dict(self, rank: int | None = None) -> dict[str, Any]:
        d = {
            "chunk_id": self.chunk.chunk_id,
            "doc_id": self.chunk.doc_id,
            "source": self.chunk.source,
            "score": self.score,
            "text": self.chunk.text,
        }
        if rank is not None:
            d = {"rank": rank, **d}
        return d


@dataclass
class Citation:
    n: int  # the [n] marker in the answer
    chunk_id: str
    doc_id: str
    source: str
    text: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Answer:
    answer: str
    citations: list[Citation]
    hits: list[Hit]
    trace_id: str
    timings: dict[str, float]
    abstained: bool = False
    mode: str = "generative"  # which path made it: extractive or generative
    answerability: float | None = None  # extractive: the selector's probability for the answer

    def to_dict(self) -> dict[str, Any]:
        return {
            "answer": self.answer,
            "citations": [c.to_dict() for c in self.citations],
            "abstained": self.abstained,
            "mode": self.mode,
            "answerability": self.answerability,
            "trace_id": self.trace_id,
            "timings": self.timings,
        }


@dataclass
class Duplicate:
    doc_id: str
    source: str
    duplicate_of: str  # doc_id of the document kept
    kind: str  # "exact" or "near"
    similarity: float  # 1.0 for exact; estimated Jaccard for near

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class IngestReport:
    added: list[str] = field(default_factory=list)  # doc ids
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    duplicates: list[Duplicate] = field(default_factory=list)
    failed: list[LoadFailure] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # files of a type llmtwin does not read
    ignored: list[LoadFailure] = field(default_factory=list)  # links out of the folders, special files
    repaired: list[str] = field(default_factory=list)  # doc ids whose damaged rows this run repaired
    chunks: int = 0  # chunks written by this run
    sentences: int = 0  # sentence vectors embedded by this run (ingest.sentence_vectors)
    store_version: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "deleted": self.deleted,
            "duplicates": [d.to_dict() for d in self.duplicates],
            "failed": [f.to_dict() for f in self.failed],
            "skipped": self.skipped,
            "ignored": [f.to_dict() for f in self.ignored],
            "repaired": self.repaired,
            "chunks": self.chunks,
            "sentences": self.sentences,
            "store_version": self.store_version,
            "seconds": round(self.seconds, 3),
        }
