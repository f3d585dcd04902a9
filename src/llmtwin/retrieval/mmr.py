"""Maximal marginal relevance (Carbonell & Goldstein, 1998): pick `k` of the candidates, one at a
time, maximising  λ · relevance(d) − (1 − λ) · max_{s ∈ selected} cos(d, s).

Relevance is the incoming stage's score, min-max scaled to [0, 1] over the candidates, so MMR keeps
what hybrid fusion or the reranker found (λ = 1 returns the incoming order unchanged) and only
trades it against redundancy. Redundancy uses the stored chunk vectors (a merged section: the mean
of its children's; anything else: embedded on the spot).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmtwin.types import Hit

if TYPE_CHECKING:
    import numpy as np

    from llmtwin.models.embedder import Embedder
    from llmtwin.store.lancedb_store import LanceStore


def hit_vectors(hits: list[Hit], store: LanceStore, embedder: Embedder) -> np.ndarray:
    """(n, dim) unit vectors for the hits, in order."""
    import numpy as np

    ids = [h.chunk.chunk_id for h in hits]
    ids += [c for h in hits for c in h.chunk.metadata.get("merged", [])]
    stored = store.get_vectors(ids)
    rows: list[np.ndarray | None] = []
    missing: list[int] = []
    for i, hit in enumerate(hits):
        v = stored.get(hit.chunk.chunk_id)
        if v is None and hit.chunk.metadata.get("merged"):
            kids = [stored[c] for c in hit.chunk.metadata["merged"] if c in stored]
            v = np.mean(kids, axis=0) if kids else None
        if v is None:
            missing.append(i)
        rows.append(v)
    if missing:
        for i, v in zip(missing, embedder.embed_passages([hits[i].chunk.text for i in missing])):
            rows[i] = v
    matrix = np.stack(rows).astype(np.float32)
    return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)


def mmr(hits: list[Hit], vectors: np.ndarray, k: int, lam: float = 0.7) -> list[Hit]:
    import numpy as np

    if len(hits) <= 1 or k <= 0:
        return list(hits[:k])
    scores = np.array([h.score for h in hits], dtype=np.float64)
    spread = scores.max() - scores.min()
    relevance = (scores - scores.min()) / spread if spread > 0 else np.ones_like(scores)
    sim = vectors @ vectors.T
    chosen: list[tuple[int, float]] = []  # (candidate, its marginal gain when picked)
    redundancy = np.zeros(len(hits))  # max similarity to anything chosen so far
    left = list(range(len(hits)))
    while left and len(chosen) < k:
        gains = [lam * relevance[i] - (1 - lam) * redundancy[i] for i in left]
        j = int(np.argmax(gains))  # ties: the earlier (better ranked) candidate
        chosen.append((left[j], float(gains[j])))
        redundancy = np.maximum(redundancy, sim[left.pop(j)])
    # the gains never increase (redundancy only grows), so the MMR score orders the output
    return [
        Hit(hits[i].chunk, gain, {**hits[i].scores, "mmr": gain}) for i, gain in chosen
    ]
