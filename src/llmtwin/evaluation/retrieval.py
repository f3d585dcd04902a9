"""Retrieval metrics with trec_eval conventions: linear gain, a ranking cut at k, relevance > 0 counts.

`ranked` is a list of document ids, best first, with no repeats (dedupe chunks to documents first);
`qrels` maps document ids to graded relevance.
"""

from __future__ import annotations

import math


def dedupe(ids: list[str]) -> list[str]:
    """Keep the first occurrence of each id (chunks of one document → the document's best rank)."""
    seen: set[str] = set()
    return [i for i in ids if not (i in seen or seen.add(i))]


def recall_at_k(ranked: list[str], qrels: dict[str, int], k: int) -> float:
    relevant = {d for d, g in qrels.items() if g > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranked[:k])) / len(relevant)


def precision_at_k(ranked: list[str], qrels: dict[str, int], k: int) -> float:
    return sum(1 for d in ranked[:k] if qrels.get(d, 0) > 0) / k


def mrr_at_k(ranked: list[str], qrels: dict[str, int], k: int) -> float:
    for rank, d in enumerate(ranked[:k], start=1):
        if qrels.get(d, 0) > 0:
            return 1.0 / rank
    return 0.0


def average_precision(ranked: list[str], qrels: dict[str, int], k: int | None = None) -> float:
    relevant = sum(1 for g in qrels.values() if g > 0)
    if not relevant:
        return 0.0
    hits, total = 0, 0.0
    for rank, d in enumerate(ranked[:k] if k else ranked, start=1):
        if qrels.get(d, 0) > 0:
            hits += 1
            total += hits / rank
    return total / relevant


def ndcg_at_k(ranked: list[str], qrels: dict[str, int], k: int) -> float:
    dcg = sum(qrels.get(d, 0) / math.log2(rank + 1) for rank, d in enumerate(ranked[:k], start=1))
    ideal = sorted((g for g in qrels.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(rank + 1) for rank, g in enumerate(ideal, start=1))
    return dcg / idcg if idcg > 0 else 0.0
