"""Check a store for rows that no clean ingest leaves behind, and repair them.

What a fault can leave (two writers before the writer lock existed, a disk error, a bug):

- **duplicated rows**: a document record, chunk, section or sentence row stored twice under one
  key. Search then returns a chunk twice and every later replace of that document fails
  ("ambiguous merge insert"). Repaired in place: one row per key is kept, and the document's
  record is marked stale (its hashes blanked), so the next ingest re-chunks it, reusing the
  stored vectors by chunk id (nothing is re-embedded, nothing is lost meanwhile).
- **chunk counts that disagree with the record**: the same repair (the record goes stale).
- **orphans**: chunk, section or sentence rows of a document without a record. A run killed
  between its chunks and its records leaves these. The next ingest replaces those of the
  documents it writes and deletes the rest (the file may be gone by then); `twin doctor`
  deletes them all (they are searchable while there).

A repair is crash-safe by its order: the affected records are deleted first (their documents
then count as not ingested), their rows are rewritten, the stale records written last. Killed
in between, the next check finds orphans, and the next ingest redoes those documents.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from llmtwin.store.lancedb_store import LanceStore, read_columns, sql_in


@dataclass
class StoreCheck:
    documents: int = 0
    chunks: int = 0
    duplicate_records: list[str] = field(default_factory=list)  # doc ids stored twice
    duplicate_chunks: int = 0  # extra rows (beyond one per key)
    duplicate_sections: int = 0
    duplicate_sentences: int = 0
    count_mismatch: list[str] = field(default_factory=list)  # records whose n_chunks is wrong
    orphan_chunks: int = 0
    orphan_sections: int = 0
    orphan_sentences: int = 0
    repaired: list[str] = field(default_factory=list)  # doc ids rewritten (records made stale)
    orphans_deleted: int = 0
    # what delete_orphans deletes: per table, orphan rows by doc id; sentence rows by a gone chunk id
    orphan_rows: dict[str, Counter] = field(default_factory=dict)
    gone_sentence_chunks: Counter = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return not (self.damaged_rows or self.orphans)

    @property
    def damaged_rows(self) -> int:
        return (
            len(self.duplicate_records) + self.duplicate_chunks + self.duplicate_sections
            + self.duplicate_sentences + len(self.count_mismatch)
        )

    @property
    def orphans(self) -> int:
        return self.orphan_chunks + self.orphan_sections + self.orphan_sentences

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "documents": self.documents,
            "chunks": self.chunks,
            "duplicate_records": self.duplicate_records,
            "duplicate_chunks": self.duplicate_chunks,
            "duplicate_sections": self.duplicate_sections,
            "duplicate_sentences": self.duplicate_sentences,
            "count_mismatch": self.count_mismatch,
            "orphan_chunks": self.orphan_chunks,
            "orphan_sections": self.orphan_sections,
            "orphan_sentences": self.orphan_sentences,
            "repaired": self.repaired,
            "orphans_deleted": self.orphans_deleted,
        }


def check_store(store: LanceStore, *, repair: bool = False, orphans: bool = False) -> StoreCheck:
    """What is wrong with the store; with `repair`, fix duplicated rows and wrong counts (and,
    with `orphans`, delete orphan rows). The caller holds the writer lock when repairing. Each
    table's key columns are read once (projected: no vectors)."""
    result = StoreCheck()
    docs = read_columns(store.docs, ["doc_id", "n_chunks", "status"])
    chunks = read_columns(store.chunks, ["chunk_id", "doc_id"])
    sections = read_columns(store.sections, ["section_id", "doc_id"])
    sentences = read_columns(store.sentences, ["chunk_id", "doc_id", "idx"])

    doc_ids = docs.column("doc_id").to_pylist()
    records = Counter(doc_ids)
    chunk_ids = chunks.column("chunk_id").to_pylist()
    live_chunks = set(chunk_ids)
    result.documents, result.chunks = len(records), len(live_chunks)
    result.duplicate_records = sorted(d for d, n in records.items() if n > 1)

    affected: set[str] = set(result.duplicate_records)
    result.duplicate_chunks = _duplicates(chunks, ["chunk_id"], affected)
    result.duplicate_sections = _duplicates(sections, ["section_id"], affected)
    result.duplicate_sentences = _duplicates(sentences, ["chunk_id", "idx"], affected)

    per_doc = Counter(doc_id for _, doc_id in set(zip(chunk_ids, chunks.column("doc_id").to_pylist())))
    for doc_id, n, status in zip(doc_ids, docs.column("n_chunks").to_pylist(), docs.column("status").to_pylist()):
        expected = n if status == "stored" else 0
        if per_doc.get(doc_id, 0) != expected and doc_id not in result.count_mismatch:
            result.count_mismatch.append(doc_id)
    affected |= set(result.count_mismatch)

    for name, table in (("chunks", chunks), ("sections", sections), ("sentences", sentences)):
        result.orphan_rows[name] = Counter(d for d in table.column("doc_id").to_pylist() if d not in records)
    result.gone_sentence_chunks = Counter(
        c for c, d in zip(sentences.column("chunk_id").to_pylist(), sentences.column("doc_id").to_pylist())
        if d in records and c not in live_chunks
    )
    result.orphan_chunks = sum(result.orphan_rows["chunks"].values())
    result.orphan_sections = sum(result.orphan_rows["sections"].values())
    result.orphan_sentences = sum(result.orphan_rows["sentences"].values()) + sum(result.gone_sentence_chunks.values())

    if repair and affected:
        _rewrite(store, sorted(affected))
        result.repaired = sorted(affected)
    if repair and orphans and result.orphans:
        result.orphans_deleted = delete_orphans(store, result)
    return result


def _duplicates(table: pa.Table, keys: list[str], affected: set[str]) -> int:
    """Extra rows beyond one per key; the documents holding them are added to `affected`."""
    if table.num_rows == 0:
        return 0
    counts = table.group_by(keys).aggregate([("doc_id", "count")])
    dup = counts.filter(pc.greater(counts.column("doc_id_count"), 1))
    if dup.num_rows == 0:
        return 0
    extra = sum(n - 1 for n in dup.column("doc_id_count").to_pylist())
    bad = set(zip(*(dup.column(k).to_pylist() for k in keys)))
    cols = [table.column(k).to_pylist() for k in keys]
    for i, doc_id in enumerate(table.column("doc_id").to_pylist()):
        if tuple(c[i] for c in cols) in bad:
            affected.add(doc_id)
    return extra


def _unique(table: pa.Table, keys: list[str]) -> pa.Table:
    seen: set[tuple] = set()
    keep = []
    cols = [table.column(k).to_pylist() for k in keys]
    for i in range(table.num_rows):
        key = tuple(c[i] for c in cols)
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return table.take(pa.array(keep, pa.int64())) if len(keep) < table.num_rows else table


def _rewrite(store: LanceStore, doc_ids: list[str]) -> None:
    for start in range(0, len(doc_ids), 500):
        batch = doc_ids[start : start + 500]
        where = sql_in("doc_id", batch)
        records = _unique(store.docs.search().where(where).limit(None).to_arrow(), ["doc_id"])
        rows = {
            "chunks": _unique(store.chunks.search().where(where).limit(None).to_arrow(), ["chunk_id"]),
            "sections": _unique(store.sections.search().where(where).limit(None).to_arrow(), ["section_id"]),
            "sentences": _unique(store.sentences.search().where(where).limit(None).to_arrow(), ["chunk_id", "idx"]),
        }
        store.docs.delete(where)  # from here on these documents count as not ingested
        for name, table in (("chunks", store.chunks), ("sections", store.sections), ("sentences", store.sentences)):
            try:
                table.delete(where)
                if rows[name].num_rows:
                    table.add(rows[name].select(table.schema.names))
            finally:
                store.after_write()
        stale = records.set_column(
            records.schema.get_field_index("file_hash"), "file_hash", pa.array([""] * records.num_rows, pa.string())
        )
        stale = stale.set_column(
            stale.schema.get_field_index("content_hash"), "content_hash", pa.array([""] * stale.num_rows, pa.string())
        )
        if stale.num_rows:
            store.docs.add(stale.select(store.docs.schema.names))


def delete_orphans(store: LanceStore, check: StoreCheck, keep: set[str] = frozenset()) -> int:
    """Delete the orphan rows `check` found: rows of documents without a record (except the doc
    ids in `keep`, about to be rewritten) and sentence rows of chunks that are gone. Returns the
    number of rows deleted. Valid while nothing has written rows without records since the check."""
    deleted = 0
    for name, table in (("chunks", store.chunks), ("sections", store.sections), ("sentences", store.sentences)):
        bad = sorted(d for d in check.orphan_rows.get(name, ()) if d not in keep)
        gone = sorted(check.gone_sentence_chunks) if name == "sentences" else []
        deleted += sum(check.orphan_rows[name][d] for d in bad) + sum(check.gone_sentence_chunks[c] for c in gone)
        if not bad and not gone:
            continue
        try:
            for start in range(0, len(bad), 500):
                table.delete(sql_in("doc_id", bad[start : start + 500]))
            for start in range(0, len(gone), 500):
                table.delete(sql_in("chunk_id", gone[start : start + 500]))
        finally:
            store.after_write()
    return deleted
