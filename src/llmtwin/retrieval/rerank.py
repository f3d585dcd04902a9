"""Cross-encoder reranking: the top `top_n` hits re-ordered by the reranker's score for (query, text).

The score becomes the hit's score (`scores["rerank"]`); hits beyond `top_n` follow unchanged.
With `weight` < 1 the order is a score fusion (retrieval/search.py, min-max) of the reranker's
scores (share `weight`) and the first stage's (the rest): a reranker weaker than the first stage
on its own can still add what it knows (`scores["rerank_fused"]`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmtwin.types import Hit

if TYPE_CHECKING:
    from llmtwin.models.reranker import CrossEncoderReranker


def rerank(hits: list[Hit], query: str, reranker: CrossEncoderReranker, top_n: int = 20,
           weight: float = 1.0) -> list[Hit]:
    head, tail = hits[:top_n], hits[top_n:]
    scores = reranker.score(query, [h.chunk.text for h in head])
    order = sorted(range(len(head)), key=lambda i: (-float(scores[i]), i))
    out = [Hit(head[i].chunk, float(scores[i]), {**head[i].scores, "rerank": float(scores[i])}) for i in order]
    if weight < 1.0 and out:
        from llmtwin.retrieval.pipeline import first_stage_score
        from llmtwin.retrieval.search import score_fusion

        first = [Hit(h.chunk, first_stage_score(h), h.scores) for h in head]
        own = {h.chunk.chunk_id: h.scores for h in out}  # score_fusion writes its own "relative"
        out = [Hit(h.chunk, h.score, {**own[h.chunk.chunk_id], "rerank_fused": h.score})
               for h in score_fusion([first, out], [1.0 - weight, weight])]
    return out + list(tail)
