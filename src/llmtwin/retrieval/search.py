"""First-stage retrieval: dense, BM25 and hybrid (score or reciprocal-rank fusion), with filters.

Every stage takes and returns `list[Hit]`; `search` records each stage's hits and time so that
`twin search --explain`, traces and the JSON output can show them.
"""

from __future__ import annotations

import fnmatch
import time
from dataclasses import dataclass, field
from typing import Literal

from llmtwin.errors import TwinError
from llmtwin.models.embedder import Embedder
from llmtwin.store.lancedb_store import LanceStore, sql_in, sql_quote
from llmtwin.types import Hit

Mode = Literal["hybrid", "dense", "bm25"]
_CHUNK_COLUMNS = {"source", "file_type", "doc_id"}


@dataclass
class SearchResult:
    hits: list[Hit]
    stages: dict[str, list[Hit]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    where: str | None = None
    pipeline: list[str] = field(default_factory=list)  # the stages that ran, described (retrieval/pipeline.py)
    transforms: list[dict] = field(default_factory=list)  # route / self-query / transforms' output (before.py)


def parse_filters(items: list[str] | dict[str, str] | None) -> dict[str, str]:
    """`["source=docs/*.md", "lang=en"]` → dict; a malformed item is a TwinError naming it."""
    if not items:
        return {}
    if isinstance(items, dict):
        return {str(k): str(v) for k, v in items.items()}
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise TwinError(f"--filter {item!r}: expected KEY=VALUE (e.g. source=docs/*.md, file_type=md)")
        out[key.strip()] = value.strip()
    return out


def filters_to_where(filters: dict[str, str], store: LanceStore) -> str | None:
    """SQL over the chunks table. `source` is a glob; other keys match document metadata."""
    clauses = []
    meta_filters = {}
    for key, value in filters.items():
        if key == "source":
            clauses.append(_glob_to_like("source", value))
        elif key in ("file_type", "type"):
            clauses.append(f"file_type = {sql_quote(value.lstrip('.'))}")
        elif key == "doc_id":
            clauses.append(f"doc_id = {sql_quote(value)}")
        else:
            meta_filters[key] = value
    if meta_filters:
        ids = [
            r.doc_id
            for r in store.documents()
            if r.status == "stored" and all(_meta_match(r.metadata.get(k), v) for k, v in meta_filters.items())
        ]
        clauses.append(sql_in("doc_id", ids) if ids else "FALSE")
    return " AND ".join(f"({c})" for c in clauses) if clauses else None


def _meta_match(actual: object, wanted: str) -> bool:
    if isinstance(actual, list):
        return any(_meta_match(a, wanted) for a in actual)
    if actual is None:
        return False
    if isinstance(actual, bool):
        return str(actual).lower() == wanted.lower()
    return fnmatch.fnmatchcase(str(actual), wanted)


def _glob_to_like(column: str, pattern: str) -> str:
    if not any(ch in pattern for ch in "*?"):
        # a plain path matches the file itself or anything under it (a folder)
        base = pattern.rstrip("/")
        return f"({column} = {sql_quote(base)} OR {column} LIKE {sql_quote(_like_escape(base) + '/%')} ESCAPE '\\')"
    like = "".join("%" if ch == "*" else "_" if ch == "?" else _like_escape(ch) for ch in pattern)
    return f"{column} LIKE {sql_quote(like)} ESCAPE '\\'"


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def rrf(rankings: list[list[Hit]], k: int = 60) -> list[Hit]:
    """Reciprocal-rank fusion: score = Σ 1/(k + rank), ranks from 1. Keeps each stage's score."""
    fused: dict[str, Hit] = {}
    for ranking in rankings:
        for rank, hit in enumerate(ranking, start=1):
            entry = fused.get(hit.chunk.chunk_id)
            if entry is None:
                entry = fused[hit.chunk.chunk_id] = Hit(hit.chunk, 0.0, dict(hit.scores))
            else:
                entry.scores.update(hit.scores)
            entry.score += 1.0 / (k + rank)
    out = sorted(fused.values(), key=lambda h: (-h.score, h.chunk.chunk_id))
    for hit in out:
        hit.scores["rrf"] = hit.score
    return out


def score_fusion(
    rankings: list[list[Hit]], weights: list[float], norm: str = "relative", limit: int | None = None
) -> list[Hit]:
    """Convex combination of normalised scores (the default hybrid fusion).

    Each list's scores are normalised over its own candidates — `relative`: min-max to [0, 1] (what
    Weaviate calls relative-score fusion); `zscore`: (s − mean) / std — and a chunk's fused score is
    the weighted sum; a list that did not return the chunk gives it that list's lowest normalised
    score. Unlike RRF this keeps *how much* better a hit is: on disfl_qa, where BM25 is far
    stronger than dense, equal weights give nDCG@10 0.926 against RRF's 0.895 (docs/BENCHMARKS.md).

    `limit`: only the best `limit` come back, and only they are built as hits (a hybrid search
    fuses ~200 candidates to return 5 or 20: building all of them was a tenth of its CPU time).
    """
    import numpy as np

    totals: dict[str, float] = {}
    found: dict[str, list[Hit]] = {}  # chunk id → its hit in each list that has it
    floors = 0.0
    for ranking, weight in zip(rankings, weights, strict=True):
        if not ranking:
            continue
        raw = np.array([h.score for h in ranking], dtype=np.float64)
        if norm == "zscore":
            spread = raw.std()
            scaled = (raw - raw.mean()) / spread if spread > 1e-12 else np.zeros_like(raw)
        else:
            spread = raw.max() - raw.min()
            scaled = (raw - raw.min()) / spread if spread > 1e-12 else np.ones_like(raw)
        floor = float(scaled.min())
        seen = set()
        for hit, value in zip(ranking, scaled.tolist()):
            cid = hit.chunk.chunk_id
            if cid in seen:
                continue
            seen.add(cid)
            if cid in totals:
                found[cid].append(hit)
                totals[cid] += weight * value
            else:
                found[cid] = [hit]
                totals[cid] = floors + weight * value  # the lists before this one did not have it
        if floor != 0.0:
            for cid in totals:
                if cid not in seen:
                    totals[cid] += weight * floor
        floors += weight * floor
    order = sorted(totals, key=lambda cid: (-totals[cid], cid))
    out = []
    for cid in order if limit is None else order[:limit]:
        first, *others = found[cid]
        scores = dict(first.scores)
        for hit in others:
            scores.update(hit.scores)
        scores[norm] = totals[cid]
        out.append(Hit(first.chunk, totals[cid], scores))
    return out


def _text_stage(store: LanceStore, query: str, depth: int, where: str | None) -> tuple[list[Hit], float]:
    t = time.perf_counter()
    hits = store.text_search(query, depth, where)
    for hit in hits:
        hit.scores["bm25"] = hit.score
    return hits, time.perf_counter() - t


def search(
    store: LanceStore,
    embedder: Embedder,
    query: str,
    *,
    k: int = 5,
    mode: Mode = "hybrid",
    candidates: int = 100,
    rrf_k: int = 60,
    fusion: str = "relative",
    dense_weight: float = 0.5,
    filters: dict[str, str] | None = None,
    query_vector=None,
    sources: list[str] | None = None,
    sentences: bool = True,
) -> SearchResult:
    """`query_vector` replaces embedding `query` (HyDE, or a benchmark that embeds queries in batches).
    `sources`: source globs, any of which may match (a routed collection), ANDed with `filters`.
    `sentences`: dense scores a chunk by its best sentence too, where the store has sentence vectors."""
    if not query.strip():
        raise TwinError("empty query")
    result = SearchResult(hits=[])
    t = time.perf_counter()
    result.where = filters_to_where(filters or {}, store)
    if sources:
        either = " OR ".join(f"({_glob_to_like('source', g)})" for g in sources)
        result.where = f"({either})" if result.where is None else f"{result.where} AND ({either})"
    if filters or sources:
        result.timings["filter"] = time.perf_counter() - t
    depth = max(candidates, k) if mode == "hybrid" else k
    if mode in ("dense", "hybrid"):
        vector = query_vector
        if vector is None:
            t = time.perf_counter()
            vector = embedder.embed_query(query)
            result.timings["embed_query"] = time.perf_counter() - t
        t = time.perf_counter()
        dense = store.dense_search(vector, depth, result.where, sentences=sentences)
        for hit in dense:
            hit.scores["dense"] = hit.score
        result.stages["dense"] = dense
        result.timings["dense"] = time.perf_counter() - t
    if mode in ("bm25", "hybrid"):
        # Sequential on purpose: run beside the query embedding on 2 cores, BM25 slowed the
        # embedding more than it saved (hybrid p50 32 ms vs 24 ms at 13k chunks).
        bm25, seconds = _text_stage(store, query, depth, result.where)
        result.stages["bm25"] = bm25
        result.timings["bm25"] = seconds
    if mode == "hybrid":
        t = time.perf_counter()
        lists = [result.stages["dense"], result.stages["bm25"]]
        if fusion == "rrf":
            result.hits = rrf(lists, rrf_k)[:k]
        else:
            result.hits = score_fusion(lists, [dense_weight, 1.0 - dense_weight], fusion, limit=k)
        result.stages["fused"] = result.hits
        result.timings["fuse"] = time.perf_counter() - t
    else:
        result.hits = result.stages[mode][:k]
    return result
