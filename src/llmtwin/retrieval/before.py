"""The stages before retrieval, in this order: route → self-query → query transforms; then the
planned queries are searched one by one and their hit lists fused (weighted RRF).

    question ─► route (a collection's sources) ─► self-query (query + validated filters)
             ─► transforms (rewrite, decompose, multi_query, hyde, step_back) ─► [SubQuery...]
             ─► search each ─► fuse ─► the post-retrieval pipeline (pipeline.py)

What each stage decided lands in `SearchResult.transforms` (a list of dicts with a `name`), its
seconds in `SearchResult.timings`, and each sub-query's hits in `SearchResult.stages` as
`q1:rewrite`, `q2:multi_query`, … with `multi` for their fusion.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llmtwin.retrieval.transforms import SubQuery, fuse, plan_queries, run_transforms

if TYPE_CHECKING:
    from llmtwin.config import RetrievalConfig
    from llmtwin.models.embedder import Embedder
    from llmtwin.models.llm import LLM
    from llmtwin.retrieval.search import SearchResult
    from llmtwin.store.lancedb_store import LanceStore


@dataclass
class Plan:
    query: str  # the query for BM25 and the post-retrieval stages' reference (after self-query)
    filters: dict[str, str]  # the user's filters plus self-query's valid ones
    sources: list[str]  # the routed collection's source globs ([] = all)
    queries: list[SubQuery]
    records: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return bool(self.records)


def uses_before(cfg: RetrievalConfig) -> bool:
    return bool(cfg.transforms or cfg.self_query or (cfg.route != "off" and cfg.collections))


def plan(
    cfg: RetrievalConfig,
    question: str,
    filters: dict[str, str],
    *,
    store: LanceStore,
    embedder: Embedder,
    llm: Callable[[], LLM],
    query_vector: Callable[[], Any],
) -> Plan:
    """Run routing, self-query and the transforms for one question (each only if configured)."""
    out = Plan(question, dict(filters), [], [SubQuery(question)])
    if cfg.route != "off" and cfg.collections:
        from llmtwin.retrieval.route import embedding_route, llm_route

        if cfg.route == "embedding":
            route = embedding_route(query_vector(), cfg.collections, embedder, cfg.route_threshold)
        else:
            route = llm_route(question, cfg.collections, llm())
        out.sources = route.sources
        out.records.append({"name": "route", **route.to_dict()})
        out.timings["route"] = route.seconds
    if cfg.self_query:
        from llmtwin.retrieval.self_query import self_query, store_schema

        sq = self_query(question, llm(), store_schema(store), max_new_tokens=max(cfg.transform_tokens, 64))
        out.query = sq.query
        out.filters = {**sq.filters, **filters}  # the user's own filters win
        out.records.append({"name": "self_query", **sq.to_dict()})
        out.timings["self_query"] = sq.seconds
    if cfg.transforms:
        own = question == out.query

        def base_vector():
            return query_vector() if own else embedder.embed_query(out.query)

        done = run_transforms(list(dict.fromkeys(cfg.transforms)), out.query, llm(), embed=embedder.embed_query,
                              query_vector=base_vector, n=cfg.multi_query_n, max_new_tokens=cfg.transform_tokens,
                              hyde_mode=cfg.hyde_mode)
        for t in done:
            out.records.append(t.to_dict())
            out.timings[t.name] = t.seconds
        out.queries = plan_queries(out.query, done)
    else:
        out.queries = [SubQuery(out.query)]
    return out


def search_plan(
    the_plan: Plan,
    run_one: Callable[[SubQuery], SearchResult],
    rrf_k: int,
) -> SearchResult:
    """Search each planned query with `run_one`; one query's result is returned as is, several are fused."""
    results = []
    for q in the_plan.queries:
        results.append(run_one(q))
    if len(results) == 1:
        result = results[0]
    else:
        t = time.perf_counter()
        fused = fuse([r.hits for r in results], [q.weight for q in the_plan.queries], rrf_k)
        result = results[0]
        for i, (q, r) in enumerate(zip(the_plan.queries[1:], results[1:], strict=True), start=2):
            result.stages[f"q{i}:{q.kind}"] = r.hits
            for name, seconds in r.timings.items():
                result.timings[name] = result.timings.get(name, 0.0) + seconds
        result.stages["multi"] = fused
        result.hits = fused
        result.timings["multi"] = time.perf_counter() - t
    result.transforms = the_plan.records
    result.timings = {**the_plan.timings, **result.timings}
    return result
