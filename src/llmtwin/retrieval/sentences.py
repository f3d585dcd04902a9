"""Sentences of retrieved text and their embeddings, for the sentence-level stages (window, compress).

Sentences are split with the chunker's own rules (abbreviations, enumerators, closing quotes: no
NLTK download), as character spans so that every sentence can be traced back to its chunk. Sentence
vectors are cached per process by text, so a sentence met again costs nothing, and embedded by
`Embedder.embed_sentences` (the ONNX query encoder where queries run there: a cold compression of
5 hits took 59 instead of 256 ms on disfl_qa).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

from llmtwin.feature.chunk import _sentences

if TYPE_CHECKING:
    import numpy as np

    from llmtwin.models.embedder import Embedder

Span = tuple[int, int]
_CACHE_SIZE = 50_000


def sentence_spans(text: str, start: int = 0, end: int | None = None) -> list[Span]:
    """Sentence spans of text[start:end] (offsets into `text`), stripped of surrounding space.

    Line breaks end a sentence too: headings, list items and table rows are sentences of their own.
    """
    end = len(text) if end is None else end
    out: list[Span] = []
    pos = start
    while pos < end:
        nl = text.find("\n", pos, end)
        line_end = end if nl < 0 else nl
        out.extend(_sentences(text, pos, line_end))
        pos = line_end + 1
    return out


class SentenceVectors:
    """embed(sentences) with an LRU cache keyed by the sentence text (per embedder)."""

    def __init__(self, embedder: Embedder, size: int = _CACHE_SIZE):
        self.embedder = embedder
        self.size = size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, sentences: list[str]) -> np.ndarray:
        import numpy as np

        with self._lock:
            missing = list(dict.fromkeys(s for s in sentences if s not in self._cache))
        if missing:
            vectors = self.embedder.embed_sentences(missing)
            with self._lock:
                for s, v in zip(missing, vectors):
                    self._cache[s] = v
                while len(self._cache) > self.size:
                    self._cache.popitem(last=False)
        with self._lock:
            out = []
            for s in sentences:
                v = self._cache.get(s)
                if v is None:  # evicted by a concurrent caller meanwhile
                    v = self.embedder.embed_sentences([s])[0]
                else:
                    self._cache.move_to_end(s)
                out.append(v)
        return np.stack(out).astype(np.float32) if out else np.zeros((0, self.embedder.dim), np.float32)


_vectors: dict[int, SentenceVectors] = {}


def sentence_vectors(embedder: Embedder) -> SentenceVectors:
    """The process-wide cache for this embedder."""
    key = id(embedder)
    if key not in _vectors:
        _vectors[key] = SentenceVectors(embedder)
    return _vectors[key]
