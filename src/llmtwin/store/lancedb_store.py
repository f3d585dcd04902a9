"""The embedded store: LanceDB tables for chunks (vectors, text, BM25 index), sections and documents.

Crash safety comes from the order of atomic writes. Each `write_batch` commits, per table, one
merge-insert that replaces every row of the batch's documents (chunks and sections first, the
document records last). A document counts as ingested only once its record carries the new
hash, so an ingest killed anywhere is redone for exactly the documents whose record is missing
or stale, and the deterministic chunk ids make the redo land on the same rows.

A store version (what `twin status` lists and traces name) is one completed ingest: the LanceDB
table versions at its end, appended to `versions.jsonl`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lancedb
import numpy as np
import pyarrow as pa

from llmtwin.config import write_text_atomic
from llmtwin.errors import TwinError
from llmtwin.store.base import DocRecord, StoreVersion
from llmtwin.types import Chunk, Hit, Section

log = logging.getLogger(__name__)

# Chunks re-scored with their sentence vectors per dense search (at least the number asked for).
SENTENCE_POOL = 100
# memory_dtype=auto: float32 vectors (numpy, no torch in a search) where the int8 first pass scores
# every chunk and the chunk and sentence vectors take at most this many bytes in float32; else
# float16 (torch). Right after a query embedding, with the CPU caches cold, the re-scoring of a
# few hundred gathered rows took 0.14 ms in float32 numpy against 0.43 ms in float16 torch here.
AUTO_FLOAT32_BYTES = 512 * 2**20

_HIT_COLUMNS = [
    "chunk_id", "doc_id", "source", "text", "start", "end",
    "heading_path", "parent_id", "idx", "file_type", "metadata",
]


def read_columns(table, names: list[str]) -> pa.Table:
    """These columns of every row of a LanceDB table: a projected scan, so a chunk or sentence
    table's vectors are not read (on the disfl_qa store 21 vs 80 ms for the chunks' ids, 6 vs
    73 ms for the sentences', against to_arrow().select())."""
    return table.search().select(names).limit(None).to_arrow()


def sql_quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def sql_in(column: str, values: list[str]) -> str:
    return f"{column} IN ({', '.join(sql_quote(v) for v in values)})"


def _chunk_schema(dim: int) -> pa.Schema:
    return pa.schema([
        ("chunk_id", pa.string()),
        ("doc_id", pa.string()),
        ("source", pa.string()),
        ("file_type", pa.string()),
        ("text", pa.string()),
        ("start", pa.int64()),
        ("end", pa.int64()),
        ("heading_path", pa.list_(pa.string())),
        ("parent_id", pa.string()),
        ("idx", pa.int32()),
        ("metadata", pa.string()),
        ("vector", pa.list_(pa.float32(), dim)),
    ])


def _sentence_schema(dim: int) -> pa.Schema:
    """One row per sentence of a chunk (ingest.sentence_vectors): dense search scores a chunk by the
    best of its own vector and its sentences' (a question often paraphrases one sentence)."""
    return pa.schema([
        ("chunk_id", pa.string()),
        ("doc_id", pa.string()),
        ("idx", pa.int32()),
        ("vector", pa.list_(pa.float32(), dim)),
    ])


_SECTION_SCHEMA = pa.schema([
    ("section_id", pa.string()),
    ("doc_id", pa.string()),
    ("heading_path", pa.list_(pa.string())),
    ("start", pa.int64()),
    ("end", pa.int64()),
    ("text", pa.string()),
])

_DOC_SCHEMA = pa.schema([
    ("doc_id", pa.string()),
    ("source", pa.string()),
    ("file_type", pa.string()),
    ("file_hash", pa.string()),
    ("content_hash", pa.string()),
    ("dedup_hash", pa.string()),
    ("minhash", pa.binary()),
    ("n_chunks", pa.int32()),
    ("status", pa.string()),
    ("duplicate_of", pa.string()),
    ("line", pa.int64()),
    ("metadata", pa.string()),
])


class LanceStore:
    """Open with the embedder that will write to it; `dim=None` opens an existing store as it is."""

    def __init__(
        self,
        path: Path,
        embedder_name: str | None = None,
        dim: int | None = None,
        memory_max_chunks: int = 200_000,
        memory_dtype: str = "auto",
        memory_max_sentences: int = 1_000_000,
        memory_scan: str = "int8",
    ):
        self.path = path
        meta = self._read_meta()
        if meta is None:
            if dim is None or embedder_name is None:
                raise TwinError(f"{path}: nothing ingested yet; run `twin ingest PATH...` first")
            path.mkdir(parents=True, exist_ok=True)
            write_text_atomic(path / "meta.json", json.dumps({"embedder": embedder_name, "dim": dim}))
        elif embedder_name is not None and (meta["embedder"] != embedder_name or (dim and meta["dim"] != dim)):
            raise TwinError(
                f"{path}: the store was embedded with {meta['embedder']} (dim {meta['dim']}), "
                f"the config asks for {embedder_name} (dim {dim}); "
                "run `twin ingest --rebuild PATH...` to re-embed"
            )
        self.embedder_name = meta["embedder"] if meta else embedder_name
        self.dim = int(meta["dim"] if meta else dim)
        self.db = lancedb.connect(str(path))
        self._open_tables()
        self.memory_max_chunks = memory_max_chunks
        self.memory_max_sentences = memory_max_sentences
        self.memory_dtype = memory_dtype
        self.memory_scan = memory_scan
        self._cache: _MemoryCache | None = None
        self._not_in_memory: tuple[int, int] | None = None  # the version found too big for the cache
        self._sentence_count: tuple[tuple[int, int], int] | None = None  # (version, sentence rows)
        self._fts_checked: tuple[int, int] | None = None
        # The (chunks, sentences) table versions as this handle last read them. A local table opened
        # without a read-consistency interval sees no other handle's writes, so only our own writes
        # move them: they reset it, and searches skip the round trip to LanceDB's event-loop thread
        # (two per hybrid search, which serialised concurrent searches behind that one thread).
        self._chunks_version: tuple[int, int] | None = None
        self._chunk_writes = 0  # finished writes: a version read across one is not kept
        self._fts_present = False
        self._groups: tuple[tuple[int, int], dict[str, str]] | None = None  # near_duplicate_groups, by version

    def _open_tables(self) -> None:
        existing = set(self.db.list_tables().tables)
        self.chunks = self._open("chunks", _chunk_schema(self.dim), existing)
        self.sections = self._open("sections", _SECTION_SCHEMA, existing)
        self.docs = self._open("documents", _DOC_SCHEMA, existing)
        self.sentences = self._open("sentences", _sentence_schema(self.dim), existing)

    def refresh(self) -> None:
        """See every write committed so far, by any process (a writer calls this once it holds
        the writer lock: its plan must start from the latest rows, not from what it last read)."""
        self._open_tables()
        self.after_write()

    def _read_meta(self) -> dict | None:
        meta_path = self.path / "meta.json"
        if not meta_path.exists():
            return None
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            return {"embedder": str(meta["embedder"]), "dim": int(meta["dim"])}
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise TwinError(
                f"{meta_path}: unreadable store description ({type(e).__name__}: {e}); it should hold "
                '{"embedder": NAME, "dim": N} of the embedder that wrote the store '
                "(or run `twin ingest --rebuild PATH...`)"
            ) from None

    def _open(self, name: str, schema: pa.Schema, existing: set[str]):
        if name in existing:
            return self.db.open_table(name)
        try:
            return self.db.create_table(name, schema=schema)
        except (ValueError, OSError):  # created meanwhile, or listed differently
            return self.db.open_table(name)

    # -- reading ---------------------------------------------------------------
    def documents(self) -> list[DocRecord]:
        rows = self.docs.to_arrow().to_pylist()
        return [
            DocRecord(**{**row, "metadata": json.loads(row["metadata"] or "{}")}) for row in rows
        ]

    def near_duplicate_groups(self) -> dict[str, str]:
        """doc id → the document its near-duplicate group started from, for every stored document
        that is a kept near duplicate or the original of one (empty when there are none). Read once
        per table version this handle has seen."""
        version = self._version()
        if self._groups is None or self._groups[0] != version:
            rows = read_columns(self.docs, ["doc_id", "duplicate_of", "status"]).to_pylist()
            groups: dict[str, str] = {}
            for row in rows:
                if row["status"] == "stored" and row["duplicate_of"]:
                    groups[row["doc_id"]] = row["duplicate_of"]
                    groups.setdefault(row["duplicate_of"], row["duplicate_of"])
            self._groups = (version, groups)
        return self._groups[1]

    def count_chunks(self) -> int:
        return self.chunks.count_rows()

    def chunk_vectors(self, doc_ids: list[str]) -> dict[str, np.ndarray]:
        """Existing vectors of these documents' chunks, by chunk id (reused when a file changes)."""
        if not doc_ids:
            return {}
        table = (
            self.chunks.search()
            .where(sql_in("doc_id", doc_ids))
            .select(["chunk_id", "vector"])
            .limit(None)
            .to_arrow()
        )
        ids = table.column("chunk_id").to_pylist()
        if not ids:
            return {}
        vectors = table.column("vector").combine_chunks().flatten().to_numpy().reshape(len(ids), -1)
        return dict(zip(ids, vectors))

    def get_chunks(self, chunk_ids: list[str]) -> list[Chunk]:
        if not chunk_ids:
            return []
        rows = (
            self.chunks.search().where(sql_in("chunk_id", chunk_ids)).select(_HIT_COLUMNS)
            .limit(None).to_list()
        )
        by_id = {row["chunk_id"]: _row_to_chunk(row) for row in rows}
        return [by_id[c] for c in chunk_ids if c in by_id]

    def get_vectors(self, chunk_ids: list[str]) -> dict[str, np.ndarray]:
        """Stored vectors of these chunks, by chunk id (MMR's redundancy term)."""
        if not chunk_ids:
            return {}
        table = (
            self.chunks.search().where(sql_in("chunk_id", list(dict.fromkeys(chunk_ids))))
            .select(["chunk_id", "vector"]).limit(None).to_arrow()
        )
        ids = table.column("chunk_id").to_pylist()
        if not ids:
            return {}
        vectors = table.column("vector").combine_chunks().flatten().to_numpy().reshape(len(ids), -1)
        return dict(zip(ids, vectors.astype(np.float32, copy=False)))

    def get_sections(self, section_ids: list[str]) -> dict[str, Section]:
        """Parent sections by id (sentence windows and auto-merging read their text)."""
        if not section_ids:
            return {}
        rows = (
            self.sections.search().where(sql_in("section_id", list(dict.fromkeys(section_ids))))
            .limit(None).to_list()
        )
        return {
            row["section_id"]: Section(
                row["section_id"], row["doc_id"], list(row["heading_path"] or []),
                int(row["start"]), int(row["end"]), row["text"],
            )
            for row in rows
        }

    def children(self, parent_ids: list[str]) -> dict[str, list[str]]:
        """Chunk ids of each parent section, in document order."""
        if not parent_ids:
            return {}
        rows = (
            self.chunks.search().where(sql_in("parent_id", list(dict.fromkeys(parent_ids))))
            .select(["chunk_id", "parent_id", "idx"]).limit(None).to_list()
        )
        out: dict[str, list[tuple[int, str]]] = {}
        for row in rows:
            out.setdefault(row["parent_id"], []).append((int(row["idx"]), row["chunk_id"]))
        return {p: [c for _, c in sorted(kids)] for p, kids in out.items()}

    # -- writing ---------------------------------------------------------------
    def write_batch(
        self, docs: list[DocRecord], sections: list[Section], chunks: list[Chunk], vectors: np.ndarray
    ) -> None:
        """Replace everything stored for `docs` with the given rows: one atomic commit per table."""
        if not docs:
            return
        where = sql_in("doc_id", sorted({d.doc_id for d in docs}))
        self._replace(self.sections, "section_id", _sections_table(sections), where)
        if self.sentences.count_rows() > 0:  # sentence rows of chunks that are no longer there
            stale = f"{where} AND NOT ({sql_in('chunk_id', [c.chunk_id for c in chunks])})" if chunks else where
            try:
                self.sentences.delete(stale)
            finally:
                self.after_write()
        try:
            self._replace(self.chunks, "chunk_id", _chunks_table(chunks, vectors, self.dim), where)
        finally:
            self.after_write()
        self.put_records(docs)

    def chunks_without_sentences(self) -> list[str]:
        """Ids of the chunks that have no sentence rows yet (ingest.sentence_vectors fills them in)."""
        have = set(read_columns(self.sentences, ["chunk_id"]).column("chunk_id").to_pylist())
        ids = read_columns(self.chunks, ["chunk_id"]).column("chunk_id").to_pylist()
        return [c for c in ids if c not in have]

    def add_sentences(self, chunks: list[Chunk], vectors: np.ndarray) -> None:
        """Sentence vectors in the order of their chunks (`chunks[i]` owns `vectors[i]`; a chunk's
        rows come together, in sentence order). Rows the chunks already had are replaced."""
        if not chunks:
            return
        owners = list(dict.fromkeys(c.chunk_id for c in chunks))
        idx: dict[str, int] = {}
        numbers = []
        for c in chunks:
            numbers.append(idx.get(c.chunk_id, 0))
            idx[c.chunk_id] = numbers[-1] + 1
        flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1), pa.float32())
        rows = pa.table(
            {
                "chunk_id": [c.chunk_id for c in chunks],
                "doc_id": [c.doc_id for c in chunks],
                "idx": pa.array(numbers, pa.int32()),
                "vector": pa.FixedSizeListArray.from_arrays(flat, self.dim),
            },
            schema=_sentence_schema(self.dim),
        )
        try:
            self.sentences.delete(sql_in("chunk_id", owners))
            self.sentences.add(rows)
        finally:
            self.after_write()

    def put_records(self, docs: list[DocRecord]) -> None:
        """Rewrite document records only (their chunks stay as they are)."""
        if docs:
            self.docs.merge_insert("doc_id").when_matched_update_all().when_not_matched_insert_all().execute(
                _docs_table(docs)
            )

    @staticmethod
    def _replace(table, key: str, rows: pa.Table, where: str) -> None:
        if rows.num_rows == 0:
            table.delete(where)
            return
        (
            table.merge_insert(key)
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .when_not_matched_by_source_delete(where)
            .execute(rows)
        )

    def delete_documents(self, doc_ids: list[str]) -> None:
        """Chunks and sections first, the record last: a crash in between is redone next run."""
        for start in range(0, len(doc_ids), 500):
            where = sql_in("doc_id", doc_ids[start : start + 500])
            try:
                self.sentences.delete(where)
                self.chunks.delete(where)
            finally:
                self.after_write()
            self.sections.delete(where)
            self.docs.delete(where)

    def refresh_indexes(self) -> None:
        """Bring the BM25 index up to date and compact the small fragments of many batches."""
        if self.chunks.count_rows() == 0:
            return
        has_fts = any("text" in idx.columns for idx in self.chunks.list_indices())
        try:
            if has_fts:
                self.chunks.optimize()
            else:
                from lancedb.index import FTS

                self.chunks.create_index(
                    "text", config=FTS(stem=True, remove_stop_words=True, ascii_folding=True)
                )
        finally:
            self.after_write()
        self.sections.optimize()
        self.docs.optimize()
        if self.sentences.count_rows() > 0:
            try:
                self.sentences.optimize()
            finally:
                self.after_write()

    # -- versions --------------------------------------------------------------
    @property
    def _versions_path(self) -> Path:
        return self.path / "versions.jsonl"

    def versions(self) -> list[StoreVersion]:
        if not self._versions_path.exists():
            return []
        out = []
        lines = self._versions_path.read_text(encoding="utf-8", errors="replace").splitlines()
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                out.append(StoreVersion(**json.loads(line)))
            except (ValueError, TypeError) as e:
                # A torn last line (a crash mid-append before appends were atomic) is skipped;
                # the next commit rewrites the file without it. A bad line elsewhere is reported.
                if n == len(lines):
                    log.warning("%s: line %d is torn; ignored", self._versions_path, n)
                    continue
                raise TwinError(f"{self._versions_path}: line {n}: not a store version ({e})") from None
        return out

    def current_version(self) -> int:
        versions = self.versions()
        return versions[-1].version if versions else 0

    def commit_version(self, summary: dict[str, Any]) -> StoreVersion:
        version = StoreVersion(
            version=self.current_version() + 1,
            time=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            tables={
                "chunks": self.chunks.version,
                "sections": self.sections.version,
                "documents": self.docs.version,
                "sentences": self.sentences.version,
            },
            summary=summary,
        )
        lines = [json.dumps(v.__dict__) for v in [*self.versions(), version]]
        write_text_atomic(self._versions_path, "\n".join(lines) + "\n")
        return version

    # -- search ----------------------------------------------------------------
    def dense_search(
        self, vector: np.ndarray, limit: int, where: str | None = None, sentences: bool = True
    ) -> list[Hit]:
        """Exact cosine search: in memory when the table fits the cache (a filter is a row mask).
        `sentences`: where the store has sentence vectors, the best SENTENCE_POOL chunks (at least
        `limit`) are re-scored with the best of their own and their sentences' cosines."""
        vector = np.asarray(vector, dtype=np.float32)
        ranked = self.dense_rows(vector, limit, where, sentences)
        if ranked is not None:
            return ranked.hits()
        cache = self._memory()
        if cache is not None:  # more sentence vectors than memory_max_sentences: read the pool's from the store
            pool = cache.dense(vector, max(limit, SENTENCE_POOL), self._allowed(cache, where), sentences=False).hits()
            return self._rescore(pool, vector, limit)
        rescore = sentences and limit > 0 and self._sentence_rows() > 0
        query = (
            self.chunks.search(vector, vector_column_name="vector")
            .distance_type("cosine")
            .select(_HIT_COLUMNS + ["_distance"])
            .limit(max(limit, SENTENCE_POOL) if rescore else limit)
        )
        if where:
            query = query.where(where, prefilter=True)
        hits = [Hit(_row_to_chunk(row), 1.0 - float(row["_distance"])) for row in query.to_list()]
        return self._rescore(hits, vector, limit) if rescore else hits

    def dense_rows(
        self, vector: np.ndarray, limit: int, where: str | None = None, sentences: bool = True
    ) -> Ranked | None:
        """`dense_search` as rows of the in-memory table (no `Hit` built yet), or None where the
        table is not in memory or its sentence vectors would be read from the store."""
        cache = self._memory()
        if cache is None or (sentences and cache.sentences is None and cache.sentence_rows):
            return None
        return cache.dense(np.asarray(vector, dtype=np.float32), limit, self._allowed(cache, where), sentences)

    def text_rows(self, query: str, limit: int, where: str | None = None) -> Ranked | None:
        """`text_search` as rows of the in-memory table, or None where the table is not in memory."""
        cache = self._memory()
        return None if cache is None else cache.text(query, limit, self._allowed(cache, where))

    def _rescore(self, hits: list[Hit], vector: np.ndarray, limit: int) -> list[Hit]:
        """Each hit scored by the best of its own and its stored sentences' cosines, best `limit` kept."""
        if not hits:
            return hits
        unit = vector / max(float(np.linalg.norm(vector)), 1e-12)
        found = self.sentence_vectors([h.chunk.chunk_id for h in hits])
        out = []
        for hit in hits:
            rows = found.get(hit.chunk.chunk_id)
            score = hit.score if rows is None else max(hit.score, float((rows @ unit).max()))
            out.append(Hit(hit.chunk, score, hit.scores))
        return sorted(out, key=lambda h: -h.score)[:limit]

    def sentence_vectors(self, chunk_ids: list[str]) -> dict[str, np.ndarray]:
        """Stored sentence vectors of these chunks (row-normalised), by chunk id."""
        out: dict[str, list[np.ndarray]] = {}
        for start in range(0, len(chunk_ids), 500):
            table = (
                self.sentences.search().where(sql_in("chunk_id", chunk_ids[start : start + 500]))
                .select(["chunk_id", "vector"]).limit(None).to_arrow()
            )
            ids = table.column("chunk_id").to_pylist()
            if ids:
                vectors = table.column("vector").combine_chunks().flatten().to_numpy().reshape(len(ids), -1)
                for cid, v in zip(ids, vectors):
                    out.setdefault(cid, []).append(v)
        stacked = {cid: np.stack(rows) for cid, rows in out.items()}
        return {cid: m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12) for cid, m in stacked.items()}

    def text_search(self, query: str, limit: int, where: str | None = None) -> list[Hit]:
        """BM25: in memory (store/bm25.py) when the table fits the cache, else the LanceDB FTS index."""
        if not query.strip():
            return []
        ranked = self.text_rows(query, limit, where)
        if ranked is not None:
            return ranked.hits()
        if not self._has_fts():
            return []
        try:
            rows = self._fts(query, limit, where, _HIT_COLUMNS + ["_score"])
        except (ValueError, RuntimeError, OSError):
            # query syntax characters (quotes, colons, brackets): search the plain words instead
            plain = " ".join("".join(c if c.isalnum() else " " for c in query).split())
            rows = self._fts(plain, limit, where, _HIT_COLUMNS + ["_score"]) if plain else []
        return [Hit(_row_to_chunk(row), float(row["_score"])) for row in rows]

    def _allowed(self, cache: _MemoryCache, where: str | None) -> np.ndarray | None:
        """The cache rows a SQL filter lets through, as a boolean mask (None: no filter)."""
        if not where:
            return None
        mask = cache.masks.get(where)
        if mask is None:
            ids = (
                self.chunks.search().where(where).select(["chunk_id"]).limit(max(len(cache.chunks), 1))
                .to_arrow().column("chunk_id").to_pylist()
            )
            mask = np.zeros(len(cache.chunks), dtype=bool)
            mask[[cache.row[i] for i in ids if i in cache.row]] = True
            if len(cache.masks) >= 64:
                cache.masks.clear()
            cache.masks[where] = mask
        return mask

    def _fts(self, query: str, limit: int, where: str | None, columns: list[str]) -> list[dict]:
        builder = (
            self.chunks.search(query, query_type="fts", fts_columns="text")
            .select(columns)
            .limit(limit)
        )
        if where:
            builder = builder.where(where, prefilter=True)
        return builder.to_list()

    def after_write(self) -> None:
        """After every write to the chunks or sentences table (in `finally`: a failed write may have
        committed)."""
        self._chunk_writes += 1
        self._chunks_version = None

    def _version(self) -> tuple[int, int]:
        version = self._chunks_version
        if version is None:
            writes = self._chunk_writes
            version = (self.chunks.version, self.sentences.version)
            if writes == self._chunk_writes:  # no write finished meanwhile: the value is current
                self._chunks_version = version
        return version

    def _has_fts(self) -> bool:
        version = self._version()
        if self._fts_checked != version:
            self._fts_present = any("text" in idx.columns for idx in self.chunks.list_indices())
            self._fts_checked = version
        return self._fts_present

    def _sentence_rows(self) -> int:
        """Stored sentence vectors, counted once per table version."""
        version = self._version()
        if self._sentence_count is None or self._sentence_count[0] != version:
            self._sentence_count = (version, self.sentences.count_rows())
        return self._sentence_count[1]

    def _memory(self) -> _MemoryCache | None:
        """The chunks table in memory (vectors as one matrix), reloaded when the table changes.
        A table too big for it is counted once per version, not on every search."""
        version = self._version()
        if self._cache is not None and self._cache.version == version:
            return self._cache
        self._cache = None
        if self._not_in_memory == version:
            return None
        if self.memory_max_chunks <= 0 or self.chunks.count_rows() > self.memory_max_chunks:
            self._not_in_memory = version
            return None
        rows = self._sentence_rows()
        sentences = self.sentences.to_arrow().select(["chunk_id", "vector"]) if 0 < rows <= self.memory_max_sentences else None
        self._cache = _MemoryCache(version, self.chunks.to_arrow(), self.memory_dtype, sentences, rows, self.memory_scan)
        return self._cache


def _unit_rows(table: pa.Table) -> np.ndarray:
    """The table's `vector` column as float32 rows of norm 1 (0 rows for an empty table)."""
    n = table.num_rows
    if n == 0:
        return np.zeros((0, table.schema.field("vector").type.list_size), np.float32)
    matrix = table.column("vector").combine_chunks().flatten().to_numpy().reshape(n, -1).astype(np.float32, copy=False)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.ascontiguousarray(matrix / np.maximum(norms, 1e-12), dtype=np.float32)


def _as_dtype(unit: np.ndarray, dtype: str):
    """Unit rows as searched: a float16 torch tensor (numpy has no fast float16 matrix-vector
    product) or the float32 numpy array."""
    if dtype == "float16":
        import torch

        return torch.from_numpy(unit).half()
    return unit


def _gather(matrix, rows: np.ndarray):
    """matrix[rows], by numpy also for a float16 tensor (its numpy view): 0.03 ms for ~220 rows
    here, against 0.17 ms for torch's own indexing."""
    if isinstance(matrix, np.ndarray):
        return matrix[rows]
    import torch

    return torch.from_numpy(matrix.numpy()[rows])


def _mv(matrix, unit: np.ndarray) -> np.ndarray:
    if isinstance(matrix, np.ndarray):
        return matrix @ unit
    import torch

    with torch.inference_mode():
        return torch.mv(matrix, torch.from_numpy(unit).half()).float().numpy()


class _MemoryCache:
    """Chunk rows, a normalised vector matrix, the sentence vectors if any, and (built on first use)
    a BM25 index: exact dense search in ~1 ms and BM25 in well under 1 ms at 10k chunks."""

    def __init__(self, version: tuple[int, int], table: pa.Table, dtype: str = "auto",
                 sentences: pa.Table | None = None, sentence_rows: int = 0, scan: str = "int8"):
        self.version = version
        self.sentence_rows = sentence_rows  # stored, whether held here (`sentences`) or not
        rows = table.drop_columns(["vector"]).to_pylist()
        self.chunks = [_row_to_chunk(row) for row in rows]
        self.row = {c.chunk_id: i for i, c in enumerate(self.chunks)}
        unit = _unit_rows(table)
        self.scan = None  # the int8 first pass (store/int8_scan.py), if any
        if scan == "int8":
            from llmtwin.store.int8_scan import int8_scan

            self.scan = int8_scan(unit)
        if dtype == "auto":
            held = (len(unit) + (sentences.num_rows if sentences is not None else 0)) * unit.shape[1] * 4
            dtype = "float32" if self.scan is not None and held <= AUTO_FLOAT32_BYTES else "float16"
        self.dtype = dtype
        self.matrix = _as_dtype(unit, dtype)
        del unit
        # Sentence vectors sorted by their chunk's row: chunk row r owns sentence rows
        # start[r]:end[r] (none where they are equal).
        self.sentences = None
        if sentences is not None and sentences.num_rows:
            owner = np.array([self.row.get(c, -1) for c in sentences.column("chunk_id").to_pylist()])
            keep = np.flatnonzero(owner >= 0)  # rows of chunks still in this snapshot
            keep = keep[np.argsort(owner[keep], kind="stable")]
            if len(keep):
                chunk_rows = np.arange(len(self.chunks))
                start = np.searchsorted(owner[keep], chunk_rows, side="left")
                end = np.searchsorted(owner[keep], chunk_rows, side="right")
                self.sentences = (_as_dtype(_unit_rows(sentences.take(keep)), dtype), start, end)
        self.masks: dict[str, np.ndarray] = {}  # filter → allowed rows (LanceStore._allowed)
        self._bm25 = None
        self._bm25_lock = threading.Lock()
        self._id_order: np.ndarray | None = None

    def dense(self, vector: np.ndarray, limit: int, allowed: np.ndarray | None = None,
              sentences: bool = True) -> Ranked:
        """The `limit` chunks closest to `vector` (cosine). With `sentences` and sentence vectors
        stored, the best SENTENCE_POOL (at least `limit`) by chunk vector are re-scored with the
        best of their own and their sentences' cosines, then cut to `limit`: the cost stays that
        of one product over the chunks plus a few hundred sentences, however many are stored."""
        if not self.chunks or limit <= 0:
            return Ranked.empty(self)
        unit = np.ascontiguousarray(vector, dtype=np.float32)
        unit = unit / max(float(np.linalg.norm(unit)), 1e-12)
        rescore = sentences and self.sentences is not None
        needed = max(limit, SENTENCE_POOL) if rescore else limit
        if self.scan is None:
            scores = self._scores(unit)
            top = self._top(scores, needed, allowed)
        else:  # int8 cosines of every chunk; the best 2 × needed re-scored exactly, the best kept
            scores = self.scan(unit)
            candidates = np.sort(self._top(scores, max(2 * needed, needed + 64), allowed))
            scores[candidates] = _mv(_gather(self.matrix, candidates), unit)
            top = candidates[self._top(scores[candidates], needed, None)]  # sorted rows: ties by table order
        if rescore:
            scores[top] = self._best_of_sentences(unit, top, scores[top])
        top = top[np.lexsort((top, -scores[top]))][:limit]  # by score, then table order: deterministic
        return Ranked(top, scores[top], self)

    @staticmethod
    def _top(scores: np.ndarray, limit: int, allowed: np.ndarray | None) -> np.ndarray:
        """Rows of the `limit` best scores (among the allowed rows), in no particular order; among
        scores tied with the last one taken, the first rows in table order (float16 scores tie
        often). `np.partition` finds that score: right after a query embedding (the CPU caches
        cold) 0.09 ms for 264 of 10,944 scores here, against 0.30 ms for torch's top-k (which
        is faster in a tight loop: 44 µs)."""
        rows = None if allowed is None else np.flatnonzero(allowed)
        values = scores if rows is None else scores[rows]
        limit = min(limit, len(values))
        if limit == len(values):
            return np.arange(limit) if rows is None else rows
        if limit == 0:
            return np.zeros(0, dtype=np.int64)
        last = np.partition(values, len(values) - limit)[len(values) - limit]  # the limit-th best
        above = np.flatnonzero(values > last)
        picked = np.concatenate((above, np.flatnonzero(values == last)[: limit - len(above)]))
        return picked if rows is None else rows[picked]

    def _scores(self, unit: np.ndarray) -> np.ndarray:
        """Cosine of every chunk with the unit vector, one matrix-vector product per query: OpenBLAS
        multiplies a few stacked queries far slower than one by one (2: 4.6 ms vs 2 × 0.55 ms here).
        float16: the scores come back at float16 resolution (~5e-4 near 1; ties then go by table
        order); a 14k × 384 matrix is 11 MB instead of 22, and two concurrent searches cost 4.8
        instead of 6.5 ms of CPU each (the query encoder's weights and the matrix then fit the
        cache together); nDCG@10 on all 8,000 disfl_qa questions is unchanged."""
        return _mv(self.matrix, unit)

    def _best_of_sentences(self, unit: np.ndarray, rows: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """max(score, best sentence cosine) for each chunk row (a row without sentences keeps its score)."""
        matrix, start, end = self.sentences
        lengths = end[rows] - start[rows]
        has = lengths > 0
        if not has.any():
            return scores
        first, lengths = start[rows][has], lengths[has]
        offsets = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        picked = np.repeat(first - offsets, lengths) + np.arange(int(lengths.sum()))
        best = np.maximum.reduceat(_mv(_gather(matrix, picked), unit), offsets)
        out = scores.copy()
        out[has] = np.maximum(out[has], best)
        return out

    def text(self, query: str, limit: int, allowed: np.ndarray | None = None) -> Ranked:
        if self._bm25 is None:
            with self._bm25_lock:  # concurrent first searches build it once
                if self._bm25 is None:
                    from llmtwin.store.bm25 import MemoryBM25

                    self._bm25 = MemoryBM25(c.text for c in self.chunks)
        return Ranked(*self._bm25.top_rows(query, limit, allowed), self)

    @property
    def id_order(self) -> np.ndarray:
        """Each row's place in chunk-id order (fusion breaks ties by chunk id), built on first use."""
        if self._id_order is None:
            order = np.empty(len(self.chunks), dtype=np.int64)
            order[np.argsort(np.array([c.chunk_id for c in self.chunks]), kind="stable")] = np.arange(len(self.chunks))
            self._id_order = order
        return self._id_order


@dataclass
class Ranked:
    """Rows of one in-memory snapshot of the chunk table (`cache`), best first, with their scores:
    a search's candidates before any `Hit` is built (a hybrid search fuses ~200 to return 10)."""

    rows: np.ndarray
    scores: np.ndarray
    cache: _MemoryCache

    @staticmethod
    def empty(cache: _MemoryCache) -> Ranked:
        return Ranked(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32), cache)

    def hits(self, label: str | None = None) -> list[Hit]:
        """As hits; `label` also keeps each score under that name (e.g. "dense")."""
        chunks = self.cache.chunks
        pairs = zip(self.rows.tolist(), self.scores.tolist())
        if label is None:
            return [Hit(chunks[i], s) for i, s in pairs]
        return [Hit(chunks[i], s, {label: s}) for i, s in pairs]


def _row_to_chunk(row: dict) -> Chunk:
    return Chunk(
        chunk_id=row["chunk_id"],
        doc_id=row["doc_id"],
        source=row["source"],
        text=row["text"],
        start=int(row["start"]),
        end=int(row["end"]),
        heading_path=list(row["heading_path"] or []),
        parent_id=row["parent_id"],
        index=int(row["idx"]),
        file_type=row["file_type"],
        metadata=json.loads(row["metadata"] or "{}"),
    )


def _chunks_table(chunks: list[Chunk], vectors: np.ndarray, dim: int) -> pa.Table:
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1), pa.float32())
    return pa.table(
        {
            "chunk_id": [c.chunk_id for c in chunks],
            "doc_id": [c.doc_id for c in chunks],
            "source": [c.source for c in chunks],
            "file_type": [c.file_type for c in chunks],
            "text": [c.text for c in chunks],
            "start": pa.array([c.start for c in chunks], pa.int64()),
            "end": pa.array([c.end for c in chunks], pa.int64()),
            "heading_path": pa.array([c.heading_path for c in chunks], pa.list_(pa.string())),
            "parent_id": [c.parent_id for c in chunks],
            "idx": pa.array([c.index for c in chunks], pa.int32()),
            "metadata": [json.dumps(c.metadata, default=str) for c in chunks],
            "vector": pa.FixedSizeListArray.from_arrays(flat, dim),
        },
        schema=_chunk_schema(dim),
    )


def _sections_table(sections: list[Section]) -> pa.Table:
    return pa.table(
        {
            "section_id": [s.section_id for s in sections],
            "doc_id": [s.doc_id for s in sections],
            "heading_path": pa.array([s.heading_path for s in sections], pa.list_(pa.string())),
            "start": pa.array([s.start for s in sections], pa.int64()),
            "end": pa.array([s.end for s in sections], pa.int64()),
            "text": [s.text for s in sections],
        },
        schema=_SECTION_SCHEMA,
    )


def _docs_table(docs: list[DocRecord]) -> pa.Table:
    return pa.table(
        {
            "doc_id": [d.doc_id for d in docs],
            "source": [d.source for d in docs],
            "file_type": [d.file_type for d in docs],
            "file_hash": [d.file_hash for d in docs],
            "content_hash": [d.content_hash for d in docs],
            "dedup_hash": [d.dedup_hash for d in docs],
            "minhash": pa.array([d.minhash for d in docs], pa.binary()),
            "n_chunks": pa.array([d.n_chunks for d in docs], pa.int32()),
            "status": [d.status for d in docs],
            "duplicate_of": [d.duplicate_of for d in docs],
            "line": pa.array([d.line for d in docs], pa.int64()),
            "metadata": [json.dumps(d.metadata, default=str) for d in docs],
        },
        schema=_DOC_SCHEMA,
    )
