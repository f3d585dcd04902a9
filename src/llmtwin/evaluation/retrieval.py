"""Retrieval metrics with trec_eval conventions: linear gain, a ranking cut at k, relevance > 0 counts.

`ranked` is a list of document ids, best first, with no repeats (dedupe chunks to documents first);
`qrels` maps document ids to graded relevance. A run given as {doc_id: score} is ranked the way
trec_eval ranks it (`rank_run`): score descending, ties broken by document id descending.

Conventions (as trec_eval 9.x, checked against pytrec-eval-terrier in tests/test_metrics.py):
- relevant means grade ≥ 1; nDCG gain is the grade itself (linear), negative grades gain 0;
- the ideal ranking for nDCG holds every judged relevant document, cut at k;
- precision@k divides by k even when fewer than k documents were retrieved;
- recall and AP divide by the number of relevant documents in the qrels, retrieved or not;
- a query with no relevant document scores 0 on every measure (trec_eval); `evaluate_query`
  says so with `has_relevant=False` so that callers can leave it out of the means (we do).
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
    dcg = sum(max(qrels.get(d, 0), 0) / math.log2(rank + 1) for rank, d in enumerate(ranked[:k], start=1))
    ideal = sorted((g for g in qrels.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(rank + 1) for rank, g in enumerate(ideal, start=1))
    return dcg / idcg if idcg > 0 else 0.0


def rank_run(run: dict[str, float]) -> list[str]:
    """trec_eval's order: score descending, then document id descending (strcmp on the ids)."""
    return [doc for doc, _ in sorted(run.items(), key=lambda item: (item[1], item[0]), reverse=True)]


def reciprocal_rank(ranked: list[str], qrels: dict[str, int]) -> float:
    return mrr_at_k(ranked, qrels, len(ranked))


def evaluate_query(
    qrels: dict[str, int], run: dict[str, float] | list[str], ks: tuple[int, ...] = (1, 3, 5, 10)
) -> dict[str, float]:
    """Every measure for one query: recall@k, precision@k, mrr@k, ndcg@k for each k, and map,
    mrr, ndcg over the whole run (trec_eval's map, recip_rank, ndcg).

    `run` is {doc_id: score} (ranked by `rank_run`) or a list of doc ids already ranked.
    """
    ranked = rank_run(run) if isinstance(run, dict) else dedupe(list(run))
    out: dict[str, float] = {}
    for k in ks:
        out[f"recall@{k}"] = recall_at_k(ranked, qrels, k)
        out[f"precision@{k}"] = precision_at_k(ranked, qrels, k)
        out[f"mrr@{k}"] = mrr_at_k(ranked, qrels, k)
        out[f"ndcg@{k}"] = ndcg_at_k(ranked, qrels, k)
    out["map"] = average_precision(ranked, qrels)
    out["mrr"] = reciprocal_rank(ranked, qrels)
    out["ndcg"] = ndcg_at_k(ranked, qrels, max(len(ranked), len(qrels), 1))  # ideal: every relevant doc
    return out


def has_relevant(qrels: dict[str, int]) -> bool:
    return any(g > 0 for g in qrels.values())


def first_relevant_rank(ranked: list[str], qrels: dict[str, int]) -> int | None:
    """1-based rank of the first relevant document, None when none was retrieved."""
    for rank, d in enumerate(ranked, start=1):
        if qrels.get(d, 0) > 0:
            return rank
    return None
