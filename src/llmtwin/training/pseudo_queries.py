"""Training pairs for the retrieval models, made from the project's own chunks (no labels).

- `ict`: a sentence taken out of its chunk is the query; the chunk without that sentence is the
  positive (the inverse cloze task, Lee et al. 2019): the model must match on meaning and topic,
  not on the copied words.
- `span`: a contiguous piece (half to nine tenths of the words) of one of the chunk's sentences is
  the query; the positive is the whole chunk: like a question, it repeats some of the passage's words.
- `cloze`: a question made from one of the chunk's sentences: an answer-like span cut out, a
  wh-word put in front (unsupervised QA, Lewis et al. 2019); the positive is the whole chunk.
- `llm`: optional — the configured LLM writes a question about the chunk.

Hard negatives come from the index itself: the hybrid search hits for the query that belong to
another document (other chunks of the same document may be relevant too, so they are never
negatives).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from llmtwin.retrieval.sentences import sentence_spans
from llmtwin.types import Chunk

if TYPE_CHECKING:
    from llmtwin.models.embedder import Embedder
    from llmtwin.models.llm import LLM
    from llmtwin.store.lancedb_store import LanceStore

_WORDS = re.compile(r"\S+")


@dataclass
class PseudoQuery:
    query: str
    chunk_id: str
    doc_id: str
    positive: str  # the text the query must rank first
    kind: str  # ict, span, cloze or llm
    negatives: list[str] = field(default_factory=list)  # texts of hard negatives, hardest first
    negative_ids: list[str] = field(default_factory=list)
    negative_ranks: list[int] = field(default_factory=list)  # their hybrid ranks (1-based)
    hybrid_rank: int | None = None  # where hybrid search put the source chunk (1-based; None: not in the top)
    source: str = ""  # the chunk's full text
    span: tuple[int, int] | None = None  # the sentence the query came from, in `source`


def load_chunks(store: LanceStore) -> list[Chunk]:
    """Every chunk of the store, in table order."""
    from llmtwin.store.lancedb_store import _HIT_COLUMNS, _row_to_chunk

    table = store.chunks.to_arrow().select(_HIT_COLUMNS)
    return [_row_to_chunk(row) for row in table.to_pylist()]


def sentence_queries(
    chunks: list[Chunk],
    n: int,
    rng: random.Random,
    *,
    mix: dict[str, float] | None = None,
    min_words: int = 6,
    max_words: int = 40,
) -> list[PseudoQuery]:
    """Up to `n` sentence-as-query pairs, spread over the chunks (round-robin in a shuffled order).

    `mix` weighs the kinds (default ict 0.3, span 0.3, cloze 0.4); ict needs a chunk of two sentences
    or more (else the sentence becomes a span query).
    """
    mix = mix or {"ict": 0.3, "span": 0.3, "cloze": 0.4}
    kinds, weights = list(mix), list(mix.values())
    usable: list[tuple[Chunk, list[tuple[int, int]], int]] = []
    for chunk in chunks:
        all_spans = sentence_spans(chunk.text)
        spans = [(a, b) for a, b in all_spans if min_words <= len(_WORDS.findall(chunk.text[a:b])) <= max_words]
        if spans:
            usable.append((chunk, spans, len(all_spans)))
    rng.shuffle(usable)
    out: list[PseudoQuery] = []
    used: set[tuple[str, int]] = set()
    while usable and len(out) < n:
        progressed = False
        for chunk, spans, n_sentences in usable:
            if len(out) >= n:
                break
            free = [s for s in spans if (chunk.chunk_id, s[0]) not in used]
            if not free:
                continue
            a, b = rng.choice(free)
            used.add((chunk.chunk_id, a))
            progressed = True
            sentence = chunk.text[a:b]
            kind = rng.choices(kinds, weights)[0]
            if kind == "ict" and n_sentences > 1:
                rest = (chunk.text[:a] + " " + chunk.text[b:]).strip()
                out.append(PseudoQuery(sentence, chunk.chunk_id, chunk.doc_id, rest, "ict", source=chunk.text, span=(a, b)))
            elif kind == "cloze":
                out.append(PseudoQuery(cloze_question(sentence, rng), chunk.chunk_id, chunk.doc_id, chunk.text, "cloze",
                                       source=chunk.text, span=(a, b)))
            else:
                words = sentence.split()
                size = max(min_words - 1, round(len(words) * rng.uniform(0.5, 0.9)))
                start = rng.randrange(0, len(words) - size + 1)
                out.append(PseudoQuery(" ".join(words[start : start + size]), chunk.chunk_id, chunk.doc_id,
                                       chunk.text, "span", source=chunk.text, span=(a, b)))
        if not progressed:
            break
    return out


_YEAR = re.compile(r"^(1\d{3}|20\d{2})\W*$")


def cloze_question(sentence: str, rng: random.Random, drop: float = 0.15) -> str:
    """A question made from a sentence (unsupervised QA, Lewis et al. 2019): an answer-like span — a
    number or a capitalised phrase where there is one — is cut out, a wh-word put in front, and a few
    other words dropped so that the question does not copy the passage."""
    words = sentence.rstrip(" .!?").split()
    named = [i for i, w in enumerate(words) if i > 0 and (w[:1].isupper() or w[:1].isdigit())]
    if named:
        i = rng.choice(named)
        j = i + 1
        while j < len(words) and j - i < 4 and (words[j][:1].isupper() or words[j][:1].isdigit()):
            j += 1
    else:
        i = rng.randrange(len(words))
        j = min(len(words), i + rng.randint(1, 3))
    answer = words[i]
    wh = "When" if _YEAR.match(answer) else "How many" if answer[:1].isdigit() else rng.choice(["What", "Which", "Who"])
    rest = [w for k, w in enumerate(words) if not i <= k < j and (rng.random() >= drop)]
    if rest and rest[0][:1].isupper() and rest[0].lower() in {"the", "a", "an", "it", "this", "in", "on"}:
        rest[0] = rest[0].lower()
    return f"{wh} {' '.join(rest)} ?"


_QUESTION_PROMPT = (
    "Write one short question that the following passage answers. Reply with the question only.\n\n"
    "Passage: {text}"
)


def llm_questions(
    chunks: list[Chunk], llm: LLM, n: int, rng: random.Random, progress: Callable[[int, int], None] | None = None
) -> list[PseudoQuery]:
    """Up to `n` LLM-written questions, one per sampled chunk (greedy; unusable replies are skipped)."""
    out: list[PseudoQuery] = []
    sample = rng.sample(chunks, min(n, len(chunks)))
    for i, chunk in enumerate(sample):
        text = " ".join(chunk.text.split()[:200])
        reply = llm.complete(
            [{"role": "user", "content": _QUESTION_PROMPT.format(text=text)}], max_new_tokens=40, temperature=0
        )
        question = reply.strip().split("\n")[0].strip().strip('"')
        if 3 <= len(question.split()) <= 40 and question.lower() not in chunk.text.lower():
            out.append(PseudoQuery(question, chunk.chunk_id, chunk.doc_id, chunk.text, "llm"))
        if progress:
            progress(i + 1, len(sample))
    return out


def add_hard_negatives(
    queries: list[PseudoQuery],
    store: LanceStore,
    embedder: Embedder,
    n_negatives: int,
    rng: random.Random,
    *,
    depth: int = 20,
    pool: int = 10,
    progress: Callable[[int, int], None] | None = None,
) -> list[PseudoQuery]:
    """Fill each query's negatives with `n_negatives` drawn from the top `pool` hybrid hits of other
    documents; queries that find too few are dropped. Records where hybrid ranked the source chunk."""
    from llmtwin.retrieval.search import search

    batch = 64
    kept = []
    for start in range(0, len(queries), batch):
        part = queries[start : start + batch]
        vectors = embed_queries(embedder, [q.query for q in part])
        for q, vector in zip(part, vectors):
            hits = search(store, embedder, q.query, k=depth, mode="hybrid", candidates=max(depth, 50),
                          query_vector=vector).hits
            ids = [h.chunk.chunk_id for h in hits]
            q.hybrid_rank = ids.index(q.chunk_id) + 1 if q.chunk_id in ids else None
            others = [h for h in hits if h.chunk.doc_id != q.doc_id][:pool]
            if len(others) < n_negatives:
                continue
            chosen = sorted(rng.sample(range(len(others)), n_negatives))
            q.negatives = [others[i].chunk.text for i in chosen]
            q.negative_ids = [others[i].chunk.chunk_id for i in chosen]
            q.negative_ranks = [ids.index(others[i].chunk.chunk_id) + 1 for i in chosen]
            kept.append(q)
        if progress:
            progress(min(start + batch, len(queries)), len(queries))
    return kept


def chunk_matrix(store: LanceStore, chunks: list[Chunk]):
    """The stored vectors of `chunks`, in their order, as float32 rows of norm 1 (one read by id up
    to 50,000 chunks, else by document)."""
    import numpy as np

    ids = [c.chunk_id for c in chunks]
    stored = store.get_vectors(ids) if len(ids) <= 50_000 else store.chunk_vectors(sorted({c.doc_id for c in chunks}))
    matrix = np.stack([stored[c] for c in ids]).astype(np.float32)
    matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
    return matrix


def own_chunk_mrr10(scores, own) -> float:
    """MRR@10 of each query's own chunk: `scores` is queries × chunks (numpy), `own` each query's
    chunk column; a chunk scoring the same as the own one does not push it down."""
    import numpy as np

    rank = 1 + (scores > scores[np.arange(len(own)), own][:, None]).sum(1)
    return float(np.where(rank <= 10, 1.0 / rank, 0.0).mean())


def embed_queries(embedder: Embedder, texts: list[str]):
    """Query vectors as embed_query makes them, in batches (one by one if passages get a prefix)."""
    import numpy as np

    if getattr(embedder, "passage_prefix", ""):
        return np.stack([embedder.embed_query(t) for t in texts])
    prefix = getattr(embedder, "query_prefix", "")
    return embedder.embed_passages([prefix + t for t in texts])


def sentence_window_pairs(q: PseudoQuery, size: int) -> tuple[str, list[str]]:
    """The query's positive and negatives cut to windows of 2·size + 1 sentences: around the source
    sentence (without it for `ict`), and, in each negative, the window sharing the most words with
    the query (the region a reader would check). Shorter inputs train faster."""
    pos = q.positive
    if q.span is not None and q.source:
        spans = sentence_spans(q.source)
        i = next((k for k, s in enumerate(spans) if s[0] == q.span[0]), None)
        if i is not None:
            keep = [k for k in range(max(0, i - size), min(len(spans), i + size + 1)) if not (q.kind == "ict" and k == i)]
            if keep:
                pos = " ".join(q.source[spans[k][0] : spans[k][1]] for k in keep)
    words = {w.lower() for w in _WORDS.findall(q.query)}
    negs = []
    for text in q.negatives:
        spans = sentence_spans(text)
        if len(spans) <= 2 * size + 1:
            negs.append(text)
            continue
        overlap = [len(words & {w.lower() for w in _WORDS.findall(text[a:b])}) for a, b in spans]
        best = max(range(len(spans)), key=lambda k: sum(overlap[max(0, k - size) : k + size + 1]))
        lo, hi = max(0, best - size), min(len(spans), best + size + 1)
        negs.append(" ".join(text[spans[k][0] : spans[k][1]] for k in range(lo, hi)))
    return pos, negs
