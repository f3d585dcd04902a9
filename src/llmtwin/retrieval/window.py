"""Sentence-window retrieval: each hit becomes its best-matching sentence plus `size` sentences each side.

Done at query time, with no sentence index: a chunk knows its parent section (`parent_id`) and its
character offsets into the document, and the section stores its own text and offsets. So the
section's text is split into sentences, the sentences overlapping the chunk are embedded (cached) and
compared with the query, and the window is cut around the best one from the section's text — it
may reach past the chunk into its neighbours, never past the section. Hits keep their chunk id (a
citation still points at the chunk that matched); overlapping windows of one section are joined.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from llmtwin.retrieval.sentences import sentence_spans, sentence_vectors
from llmtwin.types import Hit

if TYPE_CHECKING:
    import numpy as np

    from llmtwin.models.embedder import Embedder
    from llmtwin.store.lancedb_store import LanceStore


def sentence_window(
    hits: list[Hit], query_vector: np.ndarray, store: LanceStore, embedder: Embedder, size: int
) -> list[Hit]:
    import numpy as np

    sections = store.get_sections([h.chunk.parent_id for h in hits if h.chunk.parent_id])
    plans = []  # (hit, text, base offset, sentence spans, indices of the chunk's sentences)
    wanted: list[str] = []
    for hit in hits:
        c = hit.chunk
        sec = sections.get(c.parent_id)
        if sec is not None and sec.text[c.start - sec.start : c.end - sec.start] == c.text:
            text, base = sec.text, sec.start
        else:  # no parent stored (or the text differs): the window stays inside the chunk
            text, base = c.text, c.start
        spans = sentence_spans(text)
        lo, hi = c.start - base, c.end - base
        inside = [i for i, (a, b) in enumerate(spans) if a < hi and b > lo]
        plans.append((hit, text, base, spans, inside))
        wanted.extend(text[spans[i][0] : spans[i][1]] for i in inside)
    vectors = sentence_vectors(embedder)(wanted) if wanted else np.zeros((0, 1), np.float32)
    sims = vectors @ np.asarray(query_vector, dtype=np.float32) if wanted else np.zeros(0)

    out: list[Hit] = []
    windows: dict[str, list[tuple[int, int, Hit]]] = {}  # section → windows already returned
    pos = 0
    for hit, text, base, spans, inside in plans:
        if not inside:
            out.append(hit)
            continue
        local = sims[pos : pos + len(inside)]
        pos += len(inside)
        best = inside[int(np.argmax(local))]
        first, last = max(0, best - size), min(len(spans) - 1, best + size)
        a, b = spans[first][0], spans[last][1]
        key = hit.chunk.parent_id or hit.chunk.chunk_id
        joined = False
        for i, (wa, wb, kept) in enumerate(windows.get(key, [])):
            if a <= wb and b >= wa:  # overlaps a better hit's window: widen that one instead
                na, nb = min(a, wa), max(b, wb)
                kept.chunk = replace(
                    kept.chunk, text=text[na:nb], start=base + na, end=base + nb,
                    metadata={**kept.chunk.metadata, "window_joined": [
                        *kept.chunk.metadata.get("window_joined", []), hit.chunk.chunk_id]},
                )
                windows[key][i] = (na, nb, kept)
                joined = True
                break
        if joined:
            continue
        chunk = replace(
            hit.chunk,
            text=text[a:b],
            start=base + a,
            end=base + b,
            metadata={
                **hit.chunk.metadata,
                "window_sentence": [base + spans[best][0], base + spans[best][1]],
                "window_of": [hit.chunk.start, hit.chunk.end],
            },
        )
        new = Hit(chunk, hit.score, {**hit.scores, "window_sim": float(np.max(local))})
        windows.setdefault(key, []).append((a, b, new))
        out.append(new)
    return out
