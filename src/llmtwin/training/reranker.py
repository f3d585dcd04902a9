"""`twin tune reranker`: fine-tune a cross-encoder on the project's own chunks, without labels.

Recipe:
1. pseudo-queries from the chunks (training/pseudo_queries.py: sentence-as-query pairs, optionally
   LLM-written questions), each with hard negatives from the project's hybrid search;
2. a sentence-transformers CrossEncoder initialised from the packaged all-MiniLM-L6-v2 weights (the
   BERT encoder; the one-logit classification head is new);
3. a listwise loss per query: softmax cross-entropy over [positive, negatives...] (the "localised
   contrastive estimation" of Gao et al. 2021), AdamW, linear warm-up and decay, a time limit;
4. a held-out tenth of the pseudo-queries (never trained on) checks the model against hybrid order
   (the positive among its hard negatives: MRR); the card's `use` says whether it won;
5. saved as .twin/models/reranker/vN with card.json (data counts, steps, seconds, losses, check).

`retrieval.rerank: auto` uses the latest version whose check beat hybrid order (card `use: true`);
`rerank: on` uses the latest version regardless.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llmtwin.errors import TwinError

if TYPE_CHECKING:
    from llmtwin.api import Twin
    from llmtwin.training.pseudo_queries import PseudoQuery

log = logging.getLogger(__name__)
Progress = Callable[[str, int, int], None]


@dataclass
class RerankerTuning:
    queries: int = 2000  # sentence-as-query pairs (at most; a corpus may offer fewer)
    llm_questions: int = 0  # questions written by the configured LLM (slow on CPU)
    negatives: int = 3  # hard negatives per query
    mix: dict[str, float] | None = None  # pseudo-query kinds (default ict 0.3, span 0.3, cloze 0.4)
    epochs: int = 1
    batch_queries: int = 4  # queries per step (each with 1 + negatives passages)
    lr: float = 1e-4  # the encoder
    head_lr: float = 2e-3  # the new classification head (random at the start)
    warmup: float = 0.1
    max_length: int = 192  # query + passage tokens while training (the reranker reads 256 at query time)
    window: int = 0  # > 0: train on windows of 2·window + 1 sentences instead of whole chunks (faster)
    freeze_embeddings: bool = True  # the word-embedding table (half the weights) stays as it is: faster
    max_minutes: float = 18.0  # training stops (and saves) after this long
    max_steps: int | None = None
    held_out: float = 0.1  # share of queries kept for the check (at most 200)
    seed: int = 0
    base: str | None = None  # a cross-encoder / BERT dir to start from (default: the packaged MiniLM)


def tune_reranker(twin: Twin, opts: RerankerTuning | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Train, save a new version and return its card."""
    from llmtwin.models.packaged import minilm_dir, quiet_transformers, set_offline
    from llmtwin.models.versions import new_version, publish
    from llmtwin.training.pseudo_queries import add_hard_negatives, llm_questions, load_chunks, sentence_queries

    opts = opts or RerankerTuning()
    started = time.perf_counter()
    rng = random.Random(opts.seed)
    store = twin._checked_store()
    chunks = load_chunks(store)
    if len(chunks) < opts.negatives + 2:
        raise TwinError(f"{len(chunks)} chunks in the store: too few to train a reranker (ingest documents first)")
    report = (lambda stage: (lambda done, total: progress(stage, done, total))) if progress else (lambda stage: None)

    t = time.perf_counter()
    queries = sentence_queries(chunks, opts.queries, rng, mix=opts.mix)
    if opts.llm_questions:
        queries += llm_questions(chunks, twin.llm, opts.llm_questions, rng, report("questions"))
    queries = add_hard_negatives(queries, store, twin.embedder, opts.negatives, rng, progress=report("negatives"))
    if len(queries) < 2:
        raise TwinError("could not make training queries from the chunks (too few sentences or documents)")
    rng.shuffle(queries)
    n_held = min(200, max(1, int(len(queries) * opts.held_out)))
    held, train = queries[:n_held], queries[n_held:]
    data_s = time.perf_counter() - t

    set_offline()
    import torch
    from sentence_transformers import CrossEncoder

    torch.manual_seed(opts.seed)
    base = opts.base or str(minilm_dir())
    with quiet_transformers():
        model = CrossEncoder(base, num_labels=1, device="cpu", local_files_only=True, max_length=opts.max_length,
                             activation_fn=torch.nn.Identity())
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    net = model.model
    if opts.freeze_embeddings:
        for p in net.base_model.embeddings.parameters():
            p.requires_grad_(False)
    params = [p for p in net.parameters() if p.requires_grad]

    steps_per_epoch = (len(train) + opts.batch_queries - 1) // opts.batch_queries
    total = steps_per_epoch * opts.epochs
    if opts.max_steps:
        total = min(total, opts.max_steps)
    head = [p for name, p in net.named_parameters() if p.requires_grad and name.startswith("classifier")]
    body = [p for name, p in net.named_parameters() if p.requires_grad and not name.startswith("classifier")]
    optimizer = torch.optim.AdamW(
        [{"params": body, "lr": opts.lr}, {"params": head, "lr": opts.head_lr}], weight_decay=0.01
    )
    warm = max(1, int(total * opts.warmup))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm)))
    )
    group = 1 + opts.negatives
    losses: list[float] = []
    before = _check(held, lambda q, texts: _scores(net, tokenizer, q, texts, opts.max_length), torch)
    t = time.perf_counter()
    step, stopped = 0, False
    net.train()
    for epoch in range(opts.epochs):
        order = list(range(len(train)))
        random.Random(opts.seed + epoch).shuffle(order)
        for s in range(0, len(order), opts.batch_queries):
            batch = [train[i] for i in order[s : s + opts.batch_queries]]
            firsts = [q.query for q in batch for _ in range(group)]
            seconds = [p for q in batch for p in _texts(q, opts.window)]
            enc = tokenizer(firsts, seconds, truncation="longest_first", max_length=opts.max_length,
                            padding=True, return_tensors="pt")
            logits = net(**enc).logits.view(len(batch), group)
            loss = torch.nn.functional.cross_entropy(logits, torch.zeros(len(batch), dtype=torch.long))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            losses.append(float(loss.detach()))
            step += 1
            if progress:
                progress("training", step, total)
            if step >= total:
                break
            if time.perf_counter() - t > opts.max_minutes * 60:
                stopped = True
                break
        if step >= total or stopped:
            break
    train_s = time.perf_counter() - t
    net.eval()
    check_length = max(opts.max_length, 256)  # as the reranker reads at query time
    after = _check(held, lambda q, texts: _scores(net, tokenizer, q, texts, check_length), torch)
    hybrid = _hybrid_check(held)
    use = after["mrr"] > hybrid["mrr"]

    tmp = new_version(twin.project.state_dir, "reranker")
    with quiet_transformers():
        model.save_pretrained(str(tmp))
    kinds: dict[str, int] = {}
    for q in queries:
        kinds[q.kind] = kinds.get(q.kind, 0) + 1
    first = losses[: max(1, len(losses) // 10)]
    last = losses[-max(1, len(losses) // 10) :]
    card = {
        "kind": "reranker",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "base": "packaged all-MiniLM-L6-v2 (new classification head)" if not opts.base else opts.base,
        "store_version": store.current_version(),
        "embedder": store.embedder_name,
        "data": {
            "chunks": len(chunks),
            "queries": kinds,
            "train_queries": len(train),
            "held_out_queries": len(held),
            "negatives_per_query": opts.negatives,
            "source": "the project's own chunks (no labels)",
        },
        "training": {
            "steps": step,
            "planned_steps": total,
            "stopped_at_time_limit": stopped,
            "batch_queries": opts.batch_queries,
            "pairs_seen": step * opts.batch_queries * group,
            "lr": opts.lr,
            "head_lr": opts.head_lr,
            "max_length": opts.max_length,
            "loss_first_tenth": round(sum(first) / len(first), 4) if losses else None,
            "loss_last_tenth": round(sum(last) / len(last), 4) if losses else None,
            "seed": opts.seed,
        },
        "use": bool(use),
        "check": {"held_out": len(held), "before": before, "after": after, "hybrid": hybrid,
                  "what": "the positive among itself and its hard negatives, on held-out pseudo-queries; "
                          "`use` (rerank: auto) only if the reranker's MRR beats hybrid order's"},
        "seconds": {"data": round(data_s, 1), "train": round(train_s, 1),
                    "total": round(time.perf_counter() - started, 1)},
        "options": {k: v for k, v in vars(opts).items()},
    }
    path = publish(tmp, card)
    return {**card, "version": path.name, "path": str(path)}


def _texts(q: PseudoQuery, window: int) -> list[str]:
    if window <= 0:
        return [q.positive, *q.negatives]
    from llmtwin.training.pseudo_queries import sentence_window_pairs

    pos, negs = sentence_window_pairs(q, window)
    return [pos, *negs]


def _scores(net, tokenizer, query: str, texts: list[str], max_length: int):
    import torch

    with torch.inference_mode():
        enc = tokenizer([query] * len(texts), texts, truncation="longest_first", max_length=max_length,
                        padding=True, return_tensors="pt")
        return net(**enc).logits.view(-1).tolist()


def _hybrid_check(held: list[PseudoQuery]) -> dict[str, float]:
    """The same check for hybrid order (a source chunk outside hybrid's top 20 ranks last)."""
    top1, rr = 0.0, 0.0
    for q in held:
        own = q.hybrid_rank or 10**6
        rank = 1 + sum(1 for r in q.negative_ranks if r < own)
        top1 += rank == 1
        rr += 1.0 / rank
    n = max(1, len(held))
    return {"top1": round(top1 / n, 4), "mrr": round(rr / n, 4)}


def _check(held: list[PseudoQuery], score, torch) -> dict[str, float]:
    """Top-1 accuracy and MRR of the positive among [positive + hard negatives] on held-out queries."""
    top1, rr = 0.0, 0.0
    for q in held:
        s = score(q.query, [q.positive, *q.negatives])
        rank = 1 + sum(1 for x in s[1:] if x >= s[0])
        top1 += rank == 1
        rr += 1.0 / rank
    n = max(1, len(held))
    return {"top1": round(top1 / n, 4), "mrr": round(rr / n, 4)}
