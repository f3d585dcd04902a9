"""The feature pipeline: files → load → clean → dedup → chunk → embed → store, incrementally.

Plan first, then write. Planning reads every file, skips those whose bytes hash as before,
and decides for each document: unchanged, added, updated, duplicate or failed. Writing embeds
the chunks of the planned documents in batches and commits each batch (whole documents only).
An interrupted run leaves whole documents behind it, never half ones, and the next run picks
up the rest (see store/lancedb_store.py for why that holds).
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from llmtwin.config import IngestConfig
from llmtwin.feature.chunk import chunk_document
from llmtwin.feature.clean import clean_text
from llmtwin.feature.dedup import Deduplicator
from llmtwin.feature.hashing import bytes_hash, dedup_hash
from llmtwin.feature.load import discover, load_bytes, read_file
from llmtwin.models.embedder import Embedder
from llmtwin.project import Project
from llmtwin.store.base import DocRecord
from llmtwin.store.doctor import check_store, delete_orphans
from llmtwin.store.lancedb_store import LanceStore
from llmtwin.types import Chunk, Document, IngestReport, LoadFailure, Section

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (chunks embedded so far, total); a chunk counts twice with sentence vectors


@dataclass
class _Planned:
    record: DocRecord
    sections: list[Section] = field(default_factory=list)
    chunks: list[Chunk] = field(default_factory=list)
    replaces: bool = False  # the store already holds chunks of this document


class _Keep(_Planned):
    """A record whose chunks stay as they are: only the record is rewritten."""


@dataclass
class _Plan:
    writes: list[_Planned] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)


def ingest(
    project: Project,
    paths: list[Path],
    store: LanceStore,
    embedder: Embedder,
    progress: Progress | None = None,
) -> IngestReport:
    """Run the pipeline. The caller holds the store's writer lock (`Twin.ingest` takes it)."""
    started = time.perf_counter()
    cfg = project.config.ingest
    report = IngestReport()
    # Rows a fault left duplicated (or records whose chunk count is wrong) are repaired first:
    # their records go stale and this run re-chunks those documents, reusing their vectors.
    check = check_store(store, repair=True)
    report.repaired = check.repaired
    plan = _plan(project, paths, store, embedder, cfg, report)
    if plan.deletes:
        store.delete_documents(plan.deletes)
    # Rows of documents without a record (a run killed between its chunks and its records) are
    # replaced where this run writes those documents, and deleted everywhere else.
    if check.orphans:
        delete_orphans(store, check, keep={w.record.doc_id for w in plan.writes})
    report.chunks = _write(plan.writes, store, embedder, cfg.batch_chunks, progress)
    if cfg.sentence_vectors:
        from llmtwin.feature.sentence_vectors import embed_missing_sentences

        base = report.chunks  # the sentences' pass counts on from the chunks': done and total grow, never go back
        step = (lambda done, total: progress(base + done, base + total)) if progress else None
        report.sentences = embed_missing_sentences(store, embedder, cfg.batch_chunks, step)
    store.refresh_indexes()
    summary = {
        "added": len(report.added),
        "updated": len(report.updated),
        "deleted": len(report.deleted),
        "unchanged": len(report.unchanged),
        "duplicates": len(report.duplicates),
        "failed": len(report.failed),
        "repaired": len(report.repaired),
        "chunks_written": report.chunks,
        "sentences_written": report.sentences,
        "chunks_total": store.count_chunks(),
        "embedder": embedder.name,
    }
    report.store_version = store.commit_version(summary).version
    report.seconds = time.perf_counter() - started
    return report


def _plan(
    project: Project,
    paths: list[Path],
    store: LanceStore,
    embedder: Embedder,
    cfg: IngestConfig,
    report: IngestReport,
) -> _Plan:
    plan = _Plan()
    found = discover(paths, cfg.exclude, cfg.follow_symlinks)
    report.skipped = [project.source_name(p) for p in found.skipped]
    report.ignored = [LoadFailure(_printable(project, p), reason) for p, reason in found.ignored]
    # A folder that cannot be listed is a failure, and what was stored from it stays.
    kept_roots = []
    for folder, reason in found.unreadable:
        report.failed.append(LoadFailure(_printable(project, folder), reason))
        kept_roots.append(project.source_name(folder))
    records = {r.doc_id: r for r in store.documents()}
    by_source: dict[str, list[DocRecord]] = defaultdict(list)
    for record in records.values():
        by_source[record.source].append(record)

    # Files gone from an ingested folder (or no longer ingestible there) are removed.
    files = []
    for path in found.files:
        source = project.source_name(path)
        if not _utf8(source):
            report.failed.append(LoadFailure(_printable(project, path), "file name is not valid UTF-8 (rename the file)"))
            kept_roots.append(source)  # what an earlier run stored under that name is left alone
            continue
        files.append((path, source))
    seen_sources = {source for _, source in files} | set(report.skipped)
    roots = [project.source_name(p) for p in paths]
    for source, recs in by_source.items():
        if (
            source not in seen_sources
            and any(_under(source, root) for root in roots)
            and not any(_under(source, kept) for kept in kept_roots)
        ):
            plan.deletes.extend(r.doc_id for r in recs)
    deleted = set(plan.deletes)
    report.deleted = sorted(deleted)

    # A duplicate whose original is being deleted must be looked at again.
    recheck = {r.source for r in records.values() if r.duplicate_of in deleted}

    # A fixed MinHash seed: signatures stored by earlier runs must stay comparable.
    dedup = Deduplicator(cfg.minhash_threshold, cfg.minhash_perm, cfg.shingle_words, seed=1)
    for record in records.values():
        if record.status == "stored" and record.doc_id not in deleted:
            dedup.add(record.doc_id, record.dedup_hash, record.minhash)

    # Which source owns each document id: a file's own path, or a record's `id`. An id stored from
    # one source is never taken over by another (a JSONL `id` naming another file's path is
    # refused, not written over it); within a run files are read before record files, so a
    # record can never claim a file's path first.
    owner: dict[str, str] = {doc_id: r.source for doc_id, r in records.items() if doc_id not in deleted}
    claimed: dict[str, str] = {}  # doc_id → source, this run
    max_bytes = int(cfg.max_file_mb * 1024 * 1024)
    files.sort(key=lambda item: (item[0].suffix.lower() in (".jsonl", ".json"), item[1]))
    for path, source in files:
        data, error = read_file(path, max_bytes)
        if data is None:
            report.failed.append(LoadFailure(source, error or "unreadable"))
            continue
        file_hash = bytes_hash(data)
        old = by_source.get(source, [])
        if old and source not in recheck and all(r.file_hash == file_hash for r in old):
            report.unchanged.extend(r.doc_id for r in old)
            for r in old:
                claimed[r.doc_id] = source
            if path.suffix.lower() in (".jsonl", ".json"):
                report.failed.extend(load_bytes(data, path, source)[1])  # its bad records, again
            continue
        docs, failures = load_bytes(data, path, source)
        report.failed.extend(failures)
        if failures and not docs and old:
            continue  # a file that became unreadable keeps what was stored from it
        current_ids = {d.doc_id for d in docs}
        for r in old:
            if r.doc_id not in current_ids and not _may_be_failed(r.doc_id, data, failures):
                plan.deletes.append(r.doc_id)  # a record removed from a JSONL file
                report.deleted.append(r.doc_id)
                owner.pop(r.doc_id, None)
        for doc in docs:
            holder = claimed.get(doc.doc_id) or owner.get(doc.doc_id)
            if holder is not None and holder != source:
                report.failed.append(
                    LoadFailure(source, f"duplicate id {doc.doc_id!r} (already the id of a document from {holder})", doc.line)
                )
                continue
            claimed[doc.doc_id] = source
            planned = _plan_document(doc, records.get(doc.doc_id), dedup, embedder, cfg, report)
            if planned is not None:
                plan.writes.append(planned)
    return plan


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _printable(project: Project, path: Path) -> str:
    """A path for a report, as found (a link by its own name, not its target's), even where its
    name is not valid UTF-8 (bad bytes as \\xNN)."""
    name = Path(os.path.relpath(os.path.abspath(path), project.root)).as_posix()
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _plan_document(
    doc: Document,
    old: DocRecord | None,
    dedup: Deduplicator,
    embedder: Embedder,
    cfg: IngestConfig,
    report: IngestReport,
) -> _Planned | None:
    doc.text = clean_text(doc.text, doc.file_type, cfg.boilerplate_min_repeats)
    if not doc.text:
        report.failed.append(LoadFailure(doc.source, "empty after cleaning", doc.line))
        return None
    content_hash = doc.content_hash
    if old is not None and old.content_hash == content_hash and old.status == "stored":
        # Same content, only the file around it changed (another record of a JSONL file).
        report.unchanged.append(doc.doc_id)
        if old.file_hash == doc.file_hash:
            return None
        old.file_hash, old.line = doc.file_hash, doc.line  # records above it may have moved
        return _Keep(old)
    if old is not None:
        dedup.remove(doc.doc_id)
    record = DocRecord(
        doc_id=doc.doc_id,
        source=doc.source,
        file_type=doc.file_type,
        file_hash=doc.file_hash,
        content_hash=content_hash,
        dedup_hash=dedup_hash(doc.text),
        minhash=b"",
        n_chunks=0,
        status="stored",
        line=doc.line,
        metadata=doc.metadata,
    )
    keep_near = cfg.near_duplicates == "keep"
    duplicate = dedup.check(doc, keep_near=keep_near)
    if duplicate is not None:
        report.duplicates.append(duplicate)
        record.duplicate_of = duplicate.duplicate_of
        if not (keep_near and duplicate.kind == "near"):
            record.status = "duplicate"
            return _Planned(record)
    # A near duplicate kept (ingest.near_duplicates: keep) is stored like any document; its record
    # names the document it resembles (training datasets leave such documents out).
    record.minhash = dedup.signature_of(doc.doc_id) or b""
    sections, chunks = chunk_document(doc, embedder.count_tokens, cfg.chunk_tokens, cfg.chunk_overlap)
    record.n_chunks = len(chunks)
    (report.updated if old is not None else report.added).append(doc.doc_id)
    return _Planned(record, sections, chunks, replaces=old is not None and old.n_chunks > 0)


def _write(
    writes: list[_Planned], store: LanceStore, embedder: Embedder, batch_chunks: int, progress: Progress | None
) -> int:
    total = sum(len(w.chunks) for w in writes)
    keep = [w.record for w in writes if isinstance(w, _Keep)]
    if keep:
        store.put_records(keep)
    writes = [w for w in writes if not isinstance(w, _Keep)]
    reusable = store.chunk_vectors([w.record.doc_id for w in writes if w.chunks and w.replaces])
    done = 0
    if progress:
        progress(0, total)
    batch: list[_Planned] = []
    for i, item in enumerate(writes):
        batch.append(item)
        size = sum(len(w.chunks) for w in batch)
        if size >= batch_chunks or i == len(writes) - 1:
            done += _write_batch(batch, store, embedder, reusable)
            batch = []
            if progress:
                progress(done, total)
    return done


def _write_batch(batch: list[_Planned], store: LanceStore, embedder: Embedder, reusable: dict) -> int:
    chunks = [c for w in batch for c in w.chunks]
    sections = [s for w in batch for s in w.sections]
    vectors = np.zeros((len(chunks), store.dim), dtype=np.float32)
    todo = [i for i, c in enumerate(chunks) if c.chunk_id not in reusable]
    for i, c in enumerate(chunks):
        if c.chunk_id in reusable:
            vectors[i] = reusable[c.chunk_id]
    if todo:
        vectors[todo] = embedder.embed_passages([chunks[i].text for i in todo])
    store.write_batch([w.record for w in batch], sections, chunks, vectors)
    return len(chunks)


def _may_be_failed(doc_id: str, data: bytes, failures: list[LoadFailure]) -> bool:
    """Whether a record missing from a file may be one of its failed parts (then it is kept)."""
    lines = data.split(b"\n")
    for f in failures:
        if f.line is None or f.line > len(lines):
            return True  # a failure not tied to a line could be any record
        if doc_id in lines[f.line - 1].decode("utf-8", "replace"):
            return True
    return False


def _under(source: str, root: str) -> bool:
    return source == root or root in ("", ".") or source.startswith(root.rstrip("/") + "/")
