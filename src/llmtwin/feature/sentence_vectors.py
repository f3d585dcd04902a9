"""Sentence vectors (`ingest.sentence_vectors`): each chunk's sentences embedded on their own, so
that dense search can score a chunk by the best of its own vector and its sentences'.

A question usually asks about one sentence of a passage; averaged into a 250-token chunk vector
that sentence is diluted by the rest. On disfl_qa, dense nDCG@10 went 0.813 → 0.853 with the max
over sentences, and hybrid 0.926 → 0.935 (docs/BENCHMARKS.md). The price: a third more ingest
time (the sentences run one at a time on the ONNX query encoder, Embedder.embed_sentences), and a
sentence matrix beside the chunk matrix in memory at search time.

Filled in after the chunks are written, for every chunk that has no sentence rows yet: an
interrupted run, or a store ingested before the option was on, is completed by the next ingest.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from llmtwin.models.embedder import Embedder
from llmtwin.retrieval.sentences import sentence_spans
from llmtwin.store.lancedb_store import LanceStore
from llmtwin.types import Chunk

MIN_WORDS = 4  # shorter sentences (headings, "Yes.", list labels) are left to the chunk vector


def chunk_sentences(chunk: Chunk) -> list[str]:
    """The sentences of a chunk that get a vector of their own, each after its heading path.

    Heading lines are left out, and the headings lead each sentence instead ("Quokka Field Guide >
    Diet: They graze at night…"): on its own a sentence loses what the chunk is about, and a
    bare heading matched questions on its topic better than the chunk that answers them."""
    headings = {h.strip().lower() for h in chunk.heading_path}
    context = " > ".join(h.strip() for h in chunk.heading_path if h.strip())
    out = []
    for a, b in sentence_spans(chunk.text):
        text = chunk.text[a:b]
        if text.startswith("#") or text.strip("#=-~*` \t").lower() in headings:
            continue
        if len(text.split()) >= MIN_WORDS:
            out.append(f"{context}: {text}" if context else text)
    return out


def embed_missing_sentences(
    store: LanceStore, embedder: Embedder, batch_chunks: int, progress: Callable[[int, int], None] | None = None
) -> int:
    """Embed the sentences of every chunk without sentence rows; returns how many were embedded.

    A chunk with fewer than two such sentences gets one row holding its own vector (nothing to
    embed; it marks the chunk done). Each batch of chunks is committed on its own."""
    missing = store.chunks_without_sentences()
    embedded = 0
    for start in range(0, len(missing), batch_chunks):
        chunks = store.get_chunks(missing[start : start + batch_chunks])
        owners: list[Chunk] = []
        texts: list[str] = []
        whole: list[Chunk] = []
        for chunk in chunks:
            sentences = chunk_sentences(chunk)
            if len(sentences) < 2:
                whole.append(chunk)
            else:
                owners += [chunk] * len(sentences)
                texts += sentences
        parts = [np.asarray(embedder.embed_sentences(texts), dtype=np.float32)] if texts else []
        own = store.get_vectors([c.chunk_id for c in whole])
        whole = [c for c in whole if c.chunk_id in own]  # a chunk deleted meanwhile has no vector
        if whole:
            parts.append(np.stack([own[c.chunk_id] for c in whole]).astype(np.float32))
        if parts:
            store.add_sentences(owners + whole, np.concatenate(parts))
        embedded += len(texts)
        if progress:
            progress(min(start + batch_chunks, len(missing)), len(missing))
    return embedded
