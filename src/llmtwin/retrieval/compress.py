"""Context compression: keep the sentences that matter for the question, within a token budget.

Every sentence of every hit is scored by cosine similarity to the query (the embedder, sentence
vectors cached); sentences are taken best first while they fit `budget` embedder tokens in all, and
each hit keeps its chosen sentences in their original order (" … " marks a gap). A hit keeps its
chunk id, so citations still point at the chunk a sentence came from; a hit left with no sentence
is dropped. If not even the best sentence fits, it is cut to the budget.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from llmtwin.retrieval.sentences import sentence_spans, sentence_vectors
from llmtwin.types import Hit

if TYPE_CHECKING:
    import numpy as np

    from llmtwin.models.embedder import Embedder


def compress(hits: list[Hit], query_vector: np.ndarray, embedder: Embedder, budget: int) -> list[Hit]:
    import numpy as np

    items = []  # (hit index, span, sentence)
    for h, hit in enumerate(hits):
        text = hit.chunk.text
        items.extend((h, span, text[span[0] : span[1]]) for span in sentence_spans(text))
    if not items:
        return []
    sentences = [s for _, _, s in items]
    sims = sentence_vectors(embedder)(sentences) @ np.asarray(query_vector, dtype=np.float32)
    tokens = embedder.count_tokens(sentences)
    keep: set[int] = set()
    used = 0
    opened: set[int] = set()  # hits with a sentence kept: one more costs a separator token too
    for i in np.argsort(-sims, kind="stable"):
        h = items[i][0]
        cost = tokens[i] + (1 if h in opened else 0)
        if used + cost <= budget:
            keep.add(int(i))
            opened.add(h)
            used += cost
    cut: dict[int, str] = {}
    if not keep:  # the best sentence alone is over the budget: its first words that fit
        i = int(np.argmax(sims))
        words = sentences[i].split()
        lo, hi = 0, len(words)
        while lo < hi:  # the most leading words that fit
            mid = (lo + hi + 1) // 2
            if embedder.count_tokens([" ".join(words[:mid])])[0] <= budget:
                lo = mid
            else:
                hi = mid - 1
        if lo:
            keep.add(i)
            cut[i] = " ".join(words[:lo])

    out: list[Hit] = []
    for h, hit in enumerate(hits):
        mine = [i for i, (hh, _, _) in enumerate(items) if hh == h and i in keep]
        if not mine:
            continue
        parts: list[str] = []
        prev_end = None
        for i in mine:
            _, (a, b), sentence = items[i]
            if prev_end is not None:
                gap = hit.chunk.text[prev_end:a]
                parts.append(" " if not gap.strip() else " … ")
            parts.append(cut.get(i, sentence))
            prev_end = b
        spans = [[hit.chunk.start + items[i][1][0], hit.chunk.start + items[i][1][1]] for i in mine]
        chunk = replace(
            hit.chunk,
            text="".join(parts),
            metadata={**hit.chunk.metadata, "compressed_spans": spans, "compressed_from": len(hit.chunk.text)},
        )
        best = float(max(sims[i] for i in mine))
        out.append(Hit(chunk, hit.score, {**hit.scores, "compress_sim": best}))
    return out
