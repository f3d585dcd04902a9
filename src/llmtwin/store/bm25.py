"""BM25 over the in-memory copy of the chunk table (bm25s), tokenised like the LanceDB FTS index.

LanceDB's full-text search costs ~7 ms per query at 14k chunks here, most of it per-query
overhead; the same scores from a sparse matrix in memory take well under a millisecond, which
is what lets `/v1/search` serve 20 concurrent clients. The tokeniser follows the index's settings
(`FTS(stem=True, remove_stop_words=True, ascii_folding=True)`): words of letters and digits,
lower-cased and ASCII-folded, words over 40 characters and English stop words dropped, Snowball
English stems. BM25 is Lucene's: k1 1.2, b 0.75, idf = ln(1 + (N − df + 0.5) / (df + 0.5)); the
scores are the index's divided by k1 + 1 (the same order). On 200 disfl_qa questions at 14k chunks
the top hit is the index's for 95 % and the top 10 overlap 92 %; retrieval quality is measured in
docs/BENCHMARKS.md.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

import numpy as np

_WORD = re.compile(r"[^\W_]+")
# Snowball's English stop words: the list tantivy's stop-word filter (so LanceDB's FTS) removes.
# (Lucene's 33-word list instead agreed with the index on the top hit for 82 % of 200 disfl_qa
# questions; this one for 95 %.)
STOP_WORDS = frozenset("""
i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she her hers
herself it its itself they them their theirs themselves what which who whom this that these those am is
are was were be been being have has had having do does did doing would should could ought i'm you're
he's she's it's we're they're i've you've we've they've i'd you'd he'd she'd we'd they'd i'll you'll
he'll she'll we'll they'll isn't aren't wasn't weren't hasn't haven't hadn't doesn't don't didn't won't
wouldn't shan't shouldn't can't cannot couldn't mustn't let's that's who's what's here's there's when's
where's why's how's a an the and but if or because as until while of at by for with about against
between into through during before after above below to from up down in out on off over under again
further then once here there when where why how all any both each few more most other some such no nor
not only own same so than too very
""".split())
MAX_TOKEN_CHARS = 40


class Tokenizer:
    """text → list of stems. Stems are cached per word (a corpus repeats its words)."""

    def __init__(self):
        import Stemmer  # PyStemmer: the Snowball stemmers in C

        self._stemmer = Stemmer.Stemmer("english")
        self._cache: dict[str, str] = {}

    def __call__(self, text: str) -> list[str]:
        folded = unicodedata.normalize("NFKD", text)
        if not folded.isascii():
            folded = "".join(ch for ch in folded if not unicodedata.combining(ch))
        words = [w for w in _WORD.findall(folded.lower()) if len(w) <= MAX_TOKEN_CHARS and w not in STOP_WORDS]
        cache = self._cache
        new = [w for w in set(words) if w not in cache]
        if new:
            cache.update(zip(new, self._stemmer.stemWords(new), strict=True))
        return [cache[w] for w in words]


class MemoryBM25:
    """Scores for every row of a chunk table at once; `top` takes the best `limit` of them."""

    def __init__(self, texts: Iterable[str], *, k1: float = 1.2, b: float = 0.75):
        import bm25s

        self.tokenize = Tokenizer()
        corpus = [self.tokenize(t) for t in texts]
        self.size = len(corpus)
        self._index = bm25s.BM25(k1=k1, b=b, method="lucene")
        if self.size:
            self._index.index(corpus, show_progress=False)

    def scores(self, query: str) -> np.ndarray:
        """float32 BM25 score of each row (0 where no query word occurs)."""
        ids = self._index.get_tokens_ids(self.tokenize(query)) if self.size else []
        if not ids:
            return np.zeros(self.size, dtype=np.float32)
        return self._index.get_scores_from_ids(ids)

    def top(self, query: str, limit: int, allowed: np.ndarray | None = None) -> list[tuple[int, float]]:
        """(row, score) of the best `limit` rows with a score above 0, best first, ties by row.
        `allowed`: a boolean mask of the rows a filter lets through."""
        rows, scores = self.top_rows(query, limit, allowed)
        return list(zip(rows.tolist(), scores.tolist()))

    def top_rows(self, query: str, limit: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """`top` as two arrays: the rows and their float32 scores."""
        scores = self.scores(query)
        if allowed is not None:
            scores = np.where(allowed, scores, 0.0)
        hits = np.flatnonzero(scores > 0)
        if len(hits) > limit:
            hits = hits[np.argpartition(-scores[hits], limit - 1)[:limit]]
        hits = hits[np.lexsort((hits, -scores[hits]))]
        return hits, scores[hits]
