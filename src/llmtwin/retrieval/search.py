"""First-stage retrieval: dense, BM25 and hybrid (score or reciprocal-rank fusion), with filters.

Every stage takes and returns `list[Hit]`; `search` records each stage's hits and time so that
`twin search --explain`, traces and the JSON output can show them.
"""

from __future__ import annotations

import fnmatch
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from llmtwin.errors import TwinError
from llmtwin.models.embedder import Embedder
from llmtwin.store.lancedb_store import LanceStore, Ranked, sql_in, sql_quote
from llmtwin.types import Hit

Mode = Literal["hybrid", "dense", "bm25"]


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


def fuse_arrays(
    lists: list[tuple[np.ndarray, np.ndarray]], weights: list[float], norm: str = "relative",
    limit: int | None = None, order: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Score fusion on arrays: `lists` holds each ranking's (keys, scores), keys being non-negative
    integers (a chunk's row in the in-memory table, say); a key repeated within a list counts once,
    at its first place. Each list's scores are normalised over its whole list — `relative`: min-max
    to [0, 1]; `zscore`: (s − mean) / std — and a key's fused score is the weighted sum, a list
    without the key giving it that list's lowest normalised score.

    Returns the best `limit` keys (all when None) by fused score, ties by `order[key]` (by the key
    itself when None), their fused scores, and for each list the key's place in it (−1: absent).
    """
    present = [np.asarray(keys) for keys, _ in lists if len(keys)]
    if not present:
        empty = np.zeros(0, dtype=np.int64)
        return empty, np.zeros(0), [empty for _ in lists]
    union = np.unique(np.concatenate(present))
    totals = np.zeros(len(union))
    places = []
    for (keys, scores), weight in zip(lists, weights, strict=True):
        place = np.full(len(union), -1, dtype=np.int64)
        places.append(place)
        if not len(keys):
            continue
        raw = np.asarray(scores, dtype=np.float64)
        if norm == "zscore":
            spread = raw.std()
            scaled = (raw - raw.mean()) / spread if spread > 1e-12 else np.zeros_like(raw)
        else:
            spread = raw.max() - raw.min()
            scaled = (raw - raw.min()) / spread if spread > 1e-12 else np.ones_like(raw)
        unique, first = np.unique(keys, return_index=True)  # sorted, like `union`
        at = np.searchsorted(union, unique)
        place[at] = first
        value = np.full(len(union), scaled.min())
        value[at] = scaled[first]
        totals += weight * value
    tie = union if order is None else order[union]
    best = np.lexsort((tie, -totals))[:limit]
    return union[best], totals[best], [place[best] for place in places]


def score_fusion(
    rankings: list[list[Hit]], weights: list[float], norm: str = "relative", limit: int | None = None
) -> list[Hit]:
    """Convex combination of normalised scores (the default hybrid fusion), on lists of hits:
    `fuse_arrays` with each chunk id as a key, ties by chunk id. A fused hit keeps every list's
    scores (the first list's chunk) and its fused score under the name of `norm`.

    Unlike RRF this keeps *how much* better a hit is: on disfl_qa, where BM25 is far stronger than
    dense, equal weights give nDCG@10 0.926 against RRF's 0.895 (docs/BENCHMARKS.md). Relative
    score fusion is what Weaviate calls it. `limit`: only the best `limit` are built as hits.
    """
    ids = sorted({h.chunk.chunk_id for ranking in rankings for h in ranking})
    key = {cid: i for i, cid in enumerate(ids)}  # keys in chunk-id order: ties go by chunk id
    lists = [(np.array([key[h.chunk.chunk_id] for h in ranking], dtype=np.int64),
              np.array([h.score for h in ranking], dtype=np.float64)) for ranking in rankings]
    _, totals, places = fuse_arrays(lists, weights, norm, limit)
    out = []
    for i, total in enumerate(totals.tolist()):
        found = [ranking[place[i]] for ranking, place in zip(rankings, places) if place[i] >= 0]
        scores = dict(found[0].scores)
        for hit in found[1:]:
            scores.update(hit.scores)
        scores[norm] = total
        out.append(Hit(found[0].chunk, total, scores))
    return out


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
    first_stages: bool = True,
) -> SearchResult:
    """`query_vector` replaces embedding `query` (HyDE, or a benchmark that embeds queries in batches).
    `sources`: source globs, any of which may match (a routed collection), ANDed with `filters`.
    `sentences`: dense scores a chunk by its best sentence too, where the store has sentence vectors.
    `first_stages`: keep the dense and BM25 lists in `stages` (for --explain; a server's search,
    which returns only the hits, skips building them)."""
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
    dense = bm25 = None
    if mode in ("dense", "hybrid"):
        vector = query_vector
        if vector is None:
            t = time.perf_counter()
            vector = embedder.embed_query(query)
            result.timings["embed_query"] = time.perf_counter() - t
        t = time.perf_counter()
        dense = store.dense_rows(vector, depth, result.where, sentences=sentences)
        if dense is None:  # the table is not in memory: LanceDB's index answers
            dense = _labelled(store.dense_search(vector, depth, result.where, sentences=sentences), "dense")
        result.timings["dense"] = time.perf_counter() - t
    if mode in ("bm25", "hybrid"):
        # Sequential on purpose: run beside the query embedding on 2 cores, BM25 slowed the
        # embedding more than it saved (hybrid p50 32 ms vs 24 ms at 13k chunks).
        t = time.perf_counter()
        bm25 = store.text_rows(query, depth, result.where)
        if bm25 is None:
            bm25 = _labelled(store.text_search(query, depth, result.where), "bm25")
        result.timings["bm25"] = time.perf_counter() - t
    if mode != "hybrid":
        only = dense if mode == "dense" else bm25
        result.hits = result.stages[mode] = _as_hits(only, mode)[:k]
        return result
    t = time.perf_counter()
    weights = [dense_weight, 1.0 - dense_weight]
    lists = None
    if fusion != "rrf" and isinstance(dense, Ranked) and isinstance(bm25, Ranked) and dense.cache is bm25.cache:
        result.hits = _fuse_rows(dense, bm25, weights, fusion, k)  # hits built for the k kept only
    else:
        lists = [_as_hits(dense, "dense"), _as_hits(bm25, "bm25")]
        result.hits = rrf(lists, rrf_k)[:k] if fusion == "rrf" else score_fusion(lists, weights, fusion, limit=k)
    result.timings["fuse"] = time.perf_counter() - t
    if first_stages:
        result.stages["dense"], result.stages["bm25"] = lists or [_as_hits(dense, "dense"), _as_hits(bm25, "bm25")]
    result.stages["fused"] = result.hits
    return result


def _labelled(hits: list[Hit], name: str) -> list[Hit]:
    for hit in hits:
        hit.scores[name] = hit.score
    return hits


def _as_hits(found: Ranked | list[Hit], name: str) -> list[Hit]:
    return found.hits(name) if isinstance(found, Ranked) else found


def _fuse_rows(dense: Ranked, bm25: Ranked, weights: list[float], norm: str, k: int) -> list[Hit]:
    """`score_fusion` of two lists of rows of one in-memory table: the same hits, scores and order,
    with only the `k` kept built as hits."""
    lists = [(dense.rows, dense.scores), (bm25.rows, bm25.scores)]
    rows, totals, places = fuse_arrays(lists, weights, norm, k, order=dense.cache.id_order)
    chunks = dense.cache.chunks
    out = []
    for row, total, d, b in zip(rows.tolist(), totals.tolist(), places[0].tolist(), places[1].tolist()):
        scores = {}
        if d >= 0:
            scores["dense"] = float(dense.scores[d])
        if b >= 0:
            scores["bm25"] = float(bm25.scores[b])
        scores[norm] = total
        out.append(Hit(chunks[row], total, scores))
    return out
