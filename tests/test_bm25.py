"""The in-memory BM25 (store/bm25.py) held against BM25 computed by hand, and its tokeniser."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llmtwin.store.bm25 import MemoryBM25, Tokenizer

DOCS = [
    "Quokkas graze on grasses at night.",
    "The glacier retreated; glaciers retreat when summers warm.",
    "Tea is grown on hills. Green tea and black tea come from one plant.",
    "Night trains cross the glacier valley at night.",
]


def test_tokenizer_folds_stems_and_drops_stop_words():
    tok = Tokenizer()
    assert tok("The Glaciers were RETREATING, naïvely!") == ["glacier", "retreat", "naiv"]
    assert tok("what is the um no sorry the capital") == ["um", "sorri", "capit"]  # "no" is a stop word
    assert tok("x" * 41 + " ok") == ["ok"]  # words over 40 characters are dropped, as the FTS index does
    assert tok("") == []


def test_scores_equal_bm25_by_hand():
    """Lucene's BM25 (k1 1.2, b 0.75, idf ln(1 + (N − df + ½)/(df + ½))), without the (k1 + 1) factor."""
    tok = Tokenizer()
    index = MemoryBM25(DOCS)
    docs = [tok(d) for d in DOCS]
    avgdl = sum(map(len, docs)) / len(docs)
    query = "glacier at night"
    expected = []
    for words in docs:
        score = 0.0
        for term in tok(query):
            tf = words.count(term)
            df = sum(term in d for d in docs)
            if tf:
                idf = math.log(1 + (len(docs) - df + 0.5) / (df + 0.5))
                score += idf * tf / (tf + 1.2 * (1 - 0.75 + 0.75 * len(words) / avgdl))
        expected.append(score)
    assert np.allclose(index.scores(query), expected, rtol=1e-5)
    top = index.top(query, 3)
    assert [row for row, _ in top] == [3, 1, 0]  # both words beat one; a short doc beats a long one
    assert index.top(query, 3, allowed=np.array([True, False, True, False])) == [top[2]]
    assert index.top("no such words", 5) == [] and index.top("", 5) == []


def test_empty_index():
    index = MemoryBM25([])
    assert index.top("anything", 3) == [] and index.scores("anything").shape == (0,)


@pytest.mark.parametrize("query", ['"quoted"', "a:b (c) [d]", "AND OR NOT", "*?"])
def test_any_characters_are_plain_words(query):
    MemoryBM25(DOCS).top(query, 3)  # no query syntax: never an error
