"""`twin tune query-encoder`: a shallower copy of the embedder, distilled to embed queries only.

Under load a search's CPU is mostly the query embedding (≈ 2.8 of 4.3 ms in process at 10k chunks
with all-MiniLM-L6-v2 on ONNX int8). A student that keeps 3 of the teacher's 6 layers embeds a
question in ~0.8 instead of ~2.1 ms here. Passages, sentences and everything stored keep the
teacher's vectors: only queries move, into the same space, so nothing is re-embedded.

Recipe: the student starts as the teacher with only `layers` kept (for MiniLM-L6 the first and
the last two: the best start measured, cosine 0.77 to the teacher against 0.69 for every other
layer), word embeddings frozen, dropout off. Each step embeds a batch of texts with both and
minimises (1 − cosine of the pooled vectors) + token_weight × the mean squared distance of the
last hidden states (token-level targets converge faster than the pooled vector alone). Texts:
pseudo-queries made from the project's chunks (training/pseudo_queries.py), and/or the lines of
`texts` files (e.g. a log of real questions), batched by length.

A check on pseudo-queries the student never saw decides whether it is used: the MRR@10 of each
query's own chunk among all chunk vectors, queries embedded by the teacher and by the student;
`use: true` only if the student loses at most `max_drop`. `retrieval.query_encoder: auto` (the
default) then embeds queries with the latest usable version. Saved as
.twin/models/query_encoder/vN (a sentence-transformers folder + card.json).
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmtwin.errors import TwinError

if TYPE_CHECKING:
    from llmtwin.api import Twin

Progress = Callable[[str, int, int], None]


@dataclass
class QueryEncoderTuning:
    layers: int = 3  # transformer layers the student keeps: the first and the last layers - 1
    queries: int = 20_000  # pseudo-queries made from the chunks (at most), held-out ones included
    from_chunks: bool = True  # train on the chunks' pseudo-queries (else only on `texts`; the check still uses them)
    texts: list[Path] = field(default_factory=list)  # more training texts: .txt (a line each) or .jsonl ("text"/"query"/"question")
    steps: int = 2000
    batch: int = 64
    lr: float = 3e-4
    token_weight: float = 1.0
    max_tokens: int = 128  # longer training texts are truncated
    held_out: int = 500  # pseudo-queries kept for the check
    max_drop: float = 0.01  # held-out MRR@10 the student may lose against the teacher and still be used
    max_minutes: float = 60.0  # stop training (and check and save) after this long
    seed: int = 0


def read_texts(path: Path) -> list[str]:
    """Non-empty lines of a .txt, or the text/query/question field of each .jsonl row (data/jsonl.py);
    any bad row is an error naming the file and the first bad line."""
    from llmtwin.data.jsonl import BadLine, read_jsonl

    path = Path(path)
    if path.suffix != ".jsonl":
        if not path.is_file():
            raise TwinError(f"{path}: no such file")
        try:
            return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError as e:
            raise TwinError(f"{path}: not UTF-8 ({e})") from e
    out: list[str] = []
    bad: list[BadLine] = []
    for number, row in read_jsonl(path, bad):
        text = next((row[k] for k in ("text", "query", "question") if k in row), None)
        if not isinstance(text, str):
            bad.append(BadLine(str(path), number, 'expected a string "text", "query" or "question"'))
        elif text.strip():
            out.append(text.strip())
    if bad:
        more = f" (and {len(bad) - 1} more bad lines)" if len(bad) > 1 else ""
        raise TwinError(f"{min(bad, key=lambda b: b.line)}{more}")
    return out


def kept_layers(total: int, keep: int) -> list[int]:
    """The first layer and the last `keep - 1` (all of them if `keep` ≥ `total`)."""
    if keep < 1:
        raise TwinError(f"layers={keep}: keep at least one layer")
    if keep >= total:
        return list(range(total))
    return [0] + list(range(total - keep + 1, total))


def _student(teacher, layers: int):
    """A deep copy of the sentence-transformers `teacher` with only `kept_layers` of its encoder."""
    import torch

    student = copy.deepcopy(teacher)
    auto = student[0].auto_model
    stack = getattr(getattr(auto, "encoder", None), "layer", None)
    if not isinstance(stack, torch.nn.ModuleList):
        raise TwinError(f"{type(auto).__name__}: only BERT-style encoders (encoder.layer) can be made shallower")
    keep = kept_layers(len(stack), layers)
    auto.encoder.layer = torch.nn.ModuleList([stack[i] for i in keep])
    auto.config.num_hidden_layers = len(keep)
    for p in auto.embeddings.parameters():
        p.requires_grad = False
    return student, keep, len(stack)


def tune_query_encoder(twin: Twin, opts: QueryEncoderTuning | None = None,
                       progress: Progress | None = None) -> dict[str, Any]:
    import numpy as np
    import torch

    from llmtwin.models.embedder import SentenceTransformerEmbedder
    from llmtwin.models.versions import new_version, publish
    from llmtwin.training.pseudo_queries import chunk_matrix, load_chunks, own_chunk_mrr10, sentence_queries

    opts = opts or QueryEncoderTuning()
    started = time.perf_counter()
    rng = random.Random(opts.seed)
    torch.manual_seed(opts.seed)
    base = twin.embedder
    if not isinstance(base, SentenceTransformerEmbedder):
        raise TwinError(f"{base.name}: a query encoder is distilled from a local sentence-transformers embedder only")
    store = twin._checked_store()
    chunks = load_chunks(store)
    queries = sentence_queries(chunks, opts.queries, rng)
    if len(queries) < 20:
        raise TwinError(f"{len(queries)} pseudo-queries from {len(chunks)} chunks: too few to check a query encoder "
                        "(ingest more documents first)")
    rng.shuffle(queries)
    n_held = min(opts.held_out, len(queries) // 2)
    held, rest = queries[:n_held], queries[n_held:]
    texts = [q.query for q in rest] if opts.from_chunks else []
    for path in opts.texts:
        texts += read_texts(path)
    texts = list(dict.fromkeys(t for t in texts if t.strip()))
    if len(texts) < opts.batch:
        raise TwinError(f"{len(texts)} training texts: fewer than one batch of {opts.batch}")

    teacher = base.model
    student, keep, total = _student(teacher, opts.layers)
    teacher.eval()
    student.eval()  # dropout off: the student copies a deterministic teacher
    t_auto, s_auto = teacher[0].auto_model, student[0].auto_model
    tokenizer = teacher.tokenizer
    prefix = base.query_prefix

    def tokens(batch: list[str]):
        return tokenizer([prefix + t for t in batch], padding=True, truncation=True, max_length=opts.max_tokens,
                         return_tensors="pt")

    def pooled(hidden, mask):
        return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=-1)

    params = [p for p in s_auto.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=opts.lr, weight_decay=0.01)
    warmup = max(1, opts.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, (opts.steps - s) / opts.steps))
    lengths = [len(t) for t in texts]
    losses: list[float] = []
    step, deadline = 0, time.monotonic() + opts.max_minutes * 60
    t_train = time.perf_counter()
    with torch.enable_grad():
        while step < opts.steps and time.monotonic() < deadline:
            # length buckets: 16 batches' worth of texts sorted by length, cut into batches, shuffled
            pool = sorted(rng.sample(range(len(texts)), min(len(texts), opts.batch * 16)), key=lambda i: lengths[i])
            batches = [pool[i : i + opts.batch] for i in range(0, len(pool), opts.batch)]
            rng.shuffle(batches)
            for rows in batches:
                if step >= opts.steps or time.monotonic() >= deadline:
                    break
                enc = tokens([texts[i] for i in rows])
                mask = enc["attention_mask"].unsqueeze(-1).float()
                with torch.no_grad():
                    target = t_auto(**enc).last_hidden_state
                hidden = s_auto(**enc).last_hidden_state
                loss = (1 - (pooled(hidden, mask) * pooled(target, mask)).sum(-1)).mean()
                if opts.token_weight:
                    loss = loss + opts.token_weight * (((hidden - target) ** 2).sum(-1) * mask[..., 0]).sum() / mask.sum() / 10
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                losses.append(float(loss.detach()))
                step += 1
                if progress:
                    progress("training", step, opts.steps)
    train_s = time.perf_counter() - t_train

    # the check: held-out pseudo-queries against every chunk vector, teacher vs student
    P = chunk_matrix(store, chunks)
    index = {c.chunk_id: i for i, c in enumerate(chunks)}
    own = np.array([index[q.chunk_id] for q in held])
    held_texts = [q.query for q in held]

    def embed(model) -> np.ndarray:
        out = []
        with torch.no_grad():
            for s in range(0, len(held_texts), 128):
                enc = tokens(held_texts[s : s + 128])
                mask = enc["attention_mask"].unsqueeze(-1).float()
                out.append(pooled(model[0].auto_model(**enc).last_hidden_state, mask).numpy())
        return np.concatenate(out)

    if progress:
        progress("checking", 0, 1)
    Qt, Qs = embed(teacher), embed(student)
    cos = (Qt * Qs).sum(1)
    check = {"held_out": len(held), "teacher_mrr10": round(own_chunk_mrr10(Qt @ P.T, own), 4),
             "student_mrr10": round(own_chunk_mrr10(Qs @ P.T, own), 4),
             "cosine_mean": round(float(cos.mean()), 4), "cosine_p5": round(float(np.quantile(cos, 0.05)), 4),
             "max_drop": opts.max_drop,
             "what": "each held-out pseudo-query's own chunk among all chunk vectors (dense); `use` only if the "
                     "student's MRR@10 is at most max_drop below the teacher's"}
    use = check["student_mrr10"] >= check["teacher_mrr10"] - opts.max_drop

    tmp = new_version(twin.project.state_dir, "query_encoder")
    student.save(str(tmp / "model"))
    tenth = max(1, len(losses) // 10)
    card = {
        "kind": "query_encoder",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "use": bool(use),
        "base": base.name,
        "embedder": store.embedder_name,
        "layers": {"kept": keep, "of": total},
        "store_version": store.current_version(),
        "data": {"chunks": len(chunks), "train_texts": len(texts),
                 "from_chunks": len(rest) if opts.from_chunks else 0,
                 "files": [str(p) for p in opts.texts]},
        "training": {"steps": step, "planned_steps": opts.steps, "stopped_at_time_limit": step < opts.steps,
                     "loss_first_tenth": round(float(np.mean(losses[:tenth])), 4) if losses else None,
                     "loss_last_tenth": round(float(np.mean(losses[-tenth:])), 4) if losses else None},
        "check": check,
        "seconds": {"train": round(train_s, 1), "total": round(time.perf_counter() - started, 1)},
        "options": {k: ([str(p) for p in v] if k == "texts" else v) for k, v in vars(opts).items()},
    }
    path = publish(tmp, card)
    return {**card, "version": path.name, "path": str(path)}
