"""Cross-encoder reranking: the top `top_n` hits re-ordered by the reranker's score for (query, text).

The score becomes the hit's score (`scores["rerank"]`); hits beyond `top_n` follow unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmtwin.types import Hit

if TYPE_CHECKING:
    from llmtwin.models.reranker import CrossEncoderReranker


def rerank(hits: list[Hit], query: str, reranker: CrossEncoderReranker, top_n: int = 20) -> list[Hit]:
    head, tail = hits[:top_n], hits[top_n:]
    scores = reranker.score(query, [h.chunk.text for h in head])
    order = sorted(range(len(head)), key=lambda i: (-float(scores[i]), i))
    out = [Hit(head[i].chunk, float(scores[i]), {**head[i].scores, "rerank": float(scores[i])}) for i in order]
    return out + list(tail)
