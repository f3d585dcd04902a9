"""The post-retrieval pipeline: configured stages after `search()`, each `list[Hit]` → `list[Hit]`.

    search (fetch depth) → near_duplicates → merge → rerank → llm_rerank → mmr → top k → window → compress

Stages that are off are left out; with none on, the pipeline is `search(k)` unchanged. Each stage's
hits and seconds land in `SearchResult.stages` / `.timings` under its name (so in `--explain`, the
JSON output and traces), and `SearchResult.pipeline` lists what ran, e.g.
`["hybrid(fetch 20)", "rerank(reranker-v1, top 20)", "top 5"]`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llmtwin.types import Hit

if TYPE_CHECKING:
    import numpy as np

    from llmtwin.config import RetrievalConfig
    from llmtwin.models.embedder import Embedder
    from llmtwin.models.llm import LLM
    from llmtwin.models.reranker import CrossEncoderReranker
    from llmtwin.retrieval.search import SearchResult
    from llmtwin.store.lancedb_store import LanceStore


@dataclass
class Stage:
    name: str  # key in SearchResult.stages / .timings
    label: str  # how the stage prints, with its settings
    run: Callable[[list[Hit]], list[Hit]]


class Pipeline:
    def __init__(
        self,
        cfg: RetrievalConfig,
        *,
        k: int,
        query: str,
        store: LanceStore,
        embedder: Embedder,
        query_vector: Callable[[], np.ndarray],
        reranker: CrossEncoderReranker | None = None,
        llm: Callable[[], LLM] | None = None,
    ):
        self.k = k
        before: list[Stage] = []
        after: list[Stage] = []
        groups = store.near_duplicate_groups()
        if groups:  # kept near duplicates must not crowd the results (retrieval/near_duplicates.py)
            from llmtwin.retrieval.near_duplicates import collapse

            before.append(Stage("near_duplicates", "near_duplicates(one per group first)",
                                lambda hits: collapse(hits, groups)))
        if cfg.merge:
            from llmtwin.retrieval.merge import auto_merge

            before.append(Stage("merge", f"merge(≥{cfg.merge_threshold:g} of a section)",
                                lambda hits: auto_merge(hits, store, cfg.merge_threshold, cfg.merge_max_chars)))
        if reranker is not None:
            from llmtwin.retrieval.rerank import rerank

            fused = f", fused {cfg.rerank_weight:g}" if cfg.rerank_weight < 1 else ""
            before.append(Stage("rerank", f"rerank({reranker.name}, top {cfg.rerank_top_n}{fused})",
                                lambda hits: rerank(hits, query, reranker, cfg.rerank_top_n, cfg.rerank_weight)))
        self.llm_replies: list[str] = []
        if cfg.llm_rerank != "off" and llm is not None:
            from llmtwin.retrieval import llm_rerank

            rank = llm_rerank.pointwise if cfg.llm_rerank == "pointwise" else llm_rerank.listwise

            def run_llm_rerank(hits: list[Hit]) -> list[Hit]:
                out = rank(hits, query, llm(), cfg.llm_rerank_top_n)
                self.llm_replies = out.replies
                return out.hits

            before.append(Stage("llm_rerank", f"llm_rerank({cfg.llm_rerank}, top {cfg.llm_rerank_top_n})",
                                run_llm_rerank))
        if cfg.mmr:
            from llmtwin.retrieval.mmr import hit_vectors, mmr

            before.append(Stage("mmr", f"mmr(λ {cfg.mmr_lambda:g}, {k} of {cfg.fetch_k})",
                                lambda hits: mmr(hits[: cfg.fetch_k], hit_vectors(hits[: cfg.fetch_k], store, embedder),
                                                 k, cfg.mmr_lambda)))
        if cfg.window:
            from llmtwin.retrieval.window import sentence_window

            after.append(Stage("window", f"window(±{cfg.window} sentences)",
                               lambda hits: sentence_window(hits, query_vector(), store, embedder, cfg.window)))
        if cfg.compress_tokens:
            from llmtwin.retrieval.compress import compress

            after.append(Stage("compress", f"compress({cfg.compress_tokens} tokens)",
                               lambda hits: compress(hits, query_vector(), embedder, cfg.compress_tokens)))
        self.before, self.after = before, after
        depth = k
        if groups:
            depth = max(depth, 2 * k)  # room for distinct hits to move up
        if cfg.merge or cfg.mmr:
            depth = max(depth, cfg.fetch_k)
        if reranker is not None:
            depth = max(depth, cfg.rerank_top_n)
        if cfg.llm_rerank != "off" and llm is not None:
            depth = max(depth, cfg.llm_rerank_top_n)
        self.depth = depth  # how many hits search() must return

    @property
    def stages(self) -> list[Stage]:
        return self.before + self.after

    def run(self, result: SearchResult, first: str) -> SearchResult:
        """Run the stages on `result.hits` (the first stage's `depth` hits); fills stages/timings."""
        hits = result.hits
        result.pipeline = [f"{first}(fetch {self.depth})" if self.stages else first]
        for stage in self.before:
            t = time.perf_counter()
            hits = stage.run(hits)
            result.timings[stage.name] = time.perf_counter() - t
            result.stages[stage.name] = hits
            result.pipeline.append(stage.label)
        if self.stages:
            result.pipeline.append(f"top {self.k}")
        hits = hits[: self.k]
        for stage in self.after:
            t = time.perf_counter()
            hits = stage.run(hits)
            result.timings[stage.name] = time.perf_counter() - t
            result.stages[stage.name] = hits
            result.pipeline.append(stage.label)
        result.hits = hits
        if self.llm_replies:
            result.transforms.append({"name": "llm_rerank", "replies": self.llm_replies})
        return result


def first_stage_score(hit: Hit) -> float:
    """The hit's fused (or dense / BM25) score: thresholds keep their meaning after rerank or MMR."""
    for name in ("relative", "zscore", "rrf", "dense", "bm25"):
        if name in hit.scores:
            return hit.scores[name]
    return hit.score
