"""`twin tune adapter`: a linear map on query embeddings, learned from the project's own chunks.

Recipe: pseudo-queries from the chunks (training/pseudo_queries.py, sentence-as-query pairs), their
embeddings q and the stored vectors p of their chunks; W starts as the identity and minimises

    cross-entropy( normalise(W q) · Pᵀ / τ , the query's own chunk )  +  μ ‖W − I‖²

where P is every chunk vector of the store when there are at most `full_softmax_max` of them (else
the other chunks of the batch: in-batch negatives). Passages keep their vectors: only queries move.
A held-out tenth of the pseudo-queries checks it: one half picks the epoch, the other decides
whether the adapter is used at all — the card says `use: true` only if it beat the identity there
by `min_gain` (so `adapter: auto` never applies an adapter that did worse on the check). Saved as .twin/models/adapter/vN (adapter.npy + card.json).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llmtwin.errors import TwinError

if TYPE_CHECKING:
    from llmtwin.api import Twin

Progress = Callable[[str, int, int], None]


@dataclass
class AdapterTuning:
    queries: int = 4000
    mix: dict[str, float] | None = None  # pseudo-query kinds (default ict 0.3, span 0.3, cloze 0.4)
    epochs: int = 30
    batch: int = 256
    lr: float = 1e-3
    temperature: float = 0.05
    identity_weight: float = 1.0  # μ: pull towards the identity (no change)
    full_softmax_max: int = 20_000
    held_out: float = 0.1
    min_gain: float = 0.01  # held-out MRR@10 gain over the identity needed to use the adapter
    keep_best: bool = True  # save the epoch best on the held-out check (else the last one)
    seed: int = 0


def tune_adapter(twin: Twin, opts: AdapterTuning | None = None, progress: Progress | None = None) -> dict[str, Any]:
    import numpy as np
    import torch

    from llmtwin.models.versions import new_version, publish
    from llmtwin.training.pseudo_queries import (
        chunk_matrix,
        embed_queries,
        load_chunks,
        own_chunk_mrr10,
        sentence_queries,
    )

    opts = opts or AdapterTuning()
    started = time.perf_counter()
    rng = random.Random(opts.seed)
    store = twin._checked_store()
    chunks = load_chunks(store)
    if len(chunks) < 3:
        raise TwinError(f"{len(chunks)} chunks in the store: too few to train an adapter (ingest documents first)")
    queries = sentence_queries(chunks, opts.queries, rng, mix=opts.mix)
    if len(queries) < 10:
        raise TwinError("could not make enough training queries from the chunks")
    index = {c.chunk_id: i for i, c in enumerate(chunks)}
    P = chunk_matrix(store, chunks)
    Q = np.zeros((len(queries), P.shape[1]), np.float32)
    for s in range(0, len(queries), 256):
        Q[s : s + 256] = embed_queries(twin.embedder, [q.query for q in queries[s : s + 256]])
        if progress:
            progress("embedding", min(s + 256, len(queries)), len(queries))
    target = np.array([index[q.chunk_id] for q in queries])
    order = list(range(len(queries)))
    rng.shuffle(order)
    n_held = max(10, int(len(order) * opts.held_out))
    # one half of the held-out queries picks the epoch, the other decides whether to use the adapter
    # (deciding on the queries that picked it would flatter it)
    pick, decide, train = np.array(order[: n_held // 2]), np.array(order[n_held // 2 : n_held]), np.array(order[n_held:])

    torch.manual_seed(opts.seed)
    dim = P.shape[1]
    W = torch.nn.Parameter(torch.eye(dim))
    Pt, Qt, Tt = torch.from_numpy(P), torch.from_numpy(Q), torch.from_numpy(target)
    eye = torch.eye(dim)
    optimizer = torch.optim.Adam([W], lr=opts.lr)
    full = len(P) <= opts.full_softmax_max

    def mrr(matrix: torch.Tensor, rows: np.ndarray) -> float:
        with torch.no_grad():
            q = torch.nn.functional.normalize(Qt[rows] @ matrix.T, dim=1)
            return own_chunk_mrr10((q @ Pt.T).numpy(), target[rows])

    identity = mrr(eye, pick)
    best, best_W, best_epoch = identity, eye.clone(), 0
    history = []
    for epoch in range(1, opts.epochs + 1):
        perm = train[np.random.default_rng(opts.seed + epoch).permutation(len(train))]
        for s in range(0, len(perm), opts.batch):
            rows = perm[s : s + opts.batch]
            q = torch.nn.functional.normalize(Qt[rows] @ W.T, dim=1)
            if full:
                logits, labels = q @ Pt.T / opts.temperature, Tt[rows]
            else:  # in-batch negatives: the batch's own chunks
                uniq, labels = torch.unique(Tt[rows], return_inverse=True)
                logits = q @ Pt[uniq].T / opts.temperature
            loss = torch.nn.functional.cross_entropy(logits, labels) + opts.identity_weight * ((W - eye) ** 2).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        score = mrr(W.detach(), pick)
        history.append({"epoch": epoch, "loss": round(float(loss.detach()), 4), "held_out_mrr10": round(score, 4)})
        if score > best or not opts.keep_best:
            best, best_W, best_epoch = score, W.detach().clone(), epoch
        if progress:
            progress("training", epoch, opts.epochs)

    decided = {"identity": mrr(eye, decide), "adapter": mrr(best_W, decide)}
    use = decided["adapter"] - decided["identity"] >= opts.min_gain
    tmp = new_version(twin.project.state_dir, "adapter")
    np.save(tmp / "adapter.npy", best_W.numpy().astype(np.float32))
    kinds: dict[str, int] = {}
    for q in queries:
        kinds[q.kind] = kinds.get(q.kind, 0) + 1
    card = {
        "kind": "adapter",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "use": bool(use),
        "store_version": store.current_version(),
        "embedder": store.embedder_name,
        "data": {"chunks": len(chunks), "queries": kinds, "train_queries": len(train), "held_out_queries": n_held,
                 "negatives": "all chunks" if full else "in-batch", "source": "the project's own chunks (no labels)"},
        "check": {"held_out_mrr10_identity": round(decided["identity"], 4),
                  "held_out_mrr10_adapter": round(decided["adapter"], 4), "best_epoch": best_epoch,
                  "epoch_pick_mrr10": {"identity": round(identity, 4), "best": round(best, 4)},
                  "min_gain": opts.min_gain},
        "history": history,
        "seconds": round(time.perf_counter() - started, 1),
        "options": dict(vars(opts)),
    }
    path = publish(tmp, card)
    return {**card, "version": path.name, "path": str(path)}
