"""Exact and near-duplicate detection (normalised-text hash, MinHash LSH from datasketch)."""

from __future__ import annotations

import random
import time

import pytest

from llmtwin.feature.dedup import Deduplicator
from llmtwin.feature.hashing import dedup_hash
from llmtwin.types import Document

VOCAB = [f"w{i}" for i in range(3000)]


def words(seed: int, n: int = 200) -> list[str]:
    rng = random.Random(seed)
    return [rng.choice(VOCAB) for _ in range(n)]


def doc(doc_id: str, text: str) -> Document:
    return Document(doc_id, f"src/{doc_id}", text, "txt")


def near_copy(ws: list[str]) -> str:
    changed = list(ws)
    changed[50] = "changed"
    changed[150] = "altered"
    return " ".join(changed)


def test_exact_duplicate_ignores_whitespace_and_case():
    d = Deduplicator()
    assert d.check(doc("a", "Hello   World.\n\nThis is  ONE document.")) is None
    dup = d.check(doc("b", "hello world. this is one document."))
    assert dup is not None
    assert (dup.doc_id, dup.source, dup.duplicate_of, dup.kind, dup.similarity) == (
        "b",
        "src/b",
        "a",
        "exact",
        1.0,
    )
    assert "b" not in d and "a" in d  # the first seen is kept


def test_near_duplicate_detected():
    ws = words(1)
    d = Deduplicator(threshold=0.8)
    assert d.check(doc("orig", " ".join(ws))) is None
    dup = d.check(doc("copy", near_copy(ws)))
    assert dup is not None and dup.kind == "near" and dup.duplicate_of == "orig"
    assert 0.8 <= dup.similarity < 1.0
    # true Jaccard of the 5-word shingles is 186/206 = 0.90; the estimate is close
    assert abs(dup.similarity - 186 / 206) < 0.1


def test_different_text_not_flagged():
    d = Deduplicator()
    assert d.check(doc("a", " ".join(words(1)))) is None
    assert d.check(doc("b", " ".join(words(2)))) is None
    # half the text shared: Jaccard far below 0.8
    mixed = words(1)[:100] + words(3)[:100]
    assert d.check(doc("c", " ".join(mixed))) is None
    assert len(d) == 3


def test_best_match_and_determinism():
    ws = words(4)
    d = Deduplicator()
    d.check(doc("first", " ".join(ws)))
    d.check(doc("other", " ".join(words(5))))
    dups = [d.check(doc(f"c{i}", near_copy(ws))) for i in range(3)]
    assert all(x is not None and x.duplicate_of == "first" for x in dups)
    assert len({x.similarity for x in dups}) == 1


def test_remove_then_recheck():
    ws = words(6)
    d = Deduplicator()
    d.check(doc("a", " ".join(ws)))
    assert d.check(doc("b", near_copy(ws))) is not None
    d.remove("a")
    d.remove("never-seen")  # ignored
    assert "a" not in d
    assert d.check(doc("b", near_copy(ws))) is None  # kept now
    assert d.check(doc("a", " ".join(ws))).duplicate_of == "b"


def test_signature_round_trip_via_add():
    ws = words(7)
    text = " ".join(ws)
    d1 = Deduplicator(num_perm=128)
    sig = d1.signature(text)
    assert isinstance(sig, bytes) and len(sig) == 128 * 8
    assert Deduplicator(num_perm=128).signature(text) == sig  # stable across instances
    assert d1.check(doc("a", text)) is None
    assert d1.signature_of("a") == sig

    d2 = Deduplicator()
    d2.add("a", dedup_hash(text), sig)
    dup = d2.check(doc("b", near_copy(ws)))
    assert dup is not None and (dup.kind, dup.duplicate_of) == ("near", "a")
    exact = d2.check(doc("c", text.upper()))
    assert exact is not None and (exact.kind, exact.duplicate_of) == ("exact", "a")


def test_wrong_size_signature_registers_exact_only():
    ws = words(8)
    text = " ".join(ws)
    sig64 = Deduplicator(num_perm=64).signature(text)
    d = Deduplicator(num_perm=128)
    d.add("a", dedup_hash(text), sig64)
    assert d.check(doc("b", near_copy(ws))) is None
    assert d.check(doc("c", text)).kind == "exact"


def test_updated_document_is_not_its_own_duplicate():
    ws = words(9)
    d = Deduplicator()
    assert d.check(doc("a", " ".join(ws))) is None
    assert d.check(doc("a", " ".join(ws))) is None
    assert d.check(doc("a", near_copy(ws))) is None
    assert len(d) == 1


def test_short_and_empty_texts():
    d = Deduplicator()
    assert d.signature("") == b"" and d.signature("  \n ") == b""
    assert d.check(doc("e1", "")) is None
    assert d.check(doc("e2", " ")).kind == "exact"
    assert d.check(doc("s1", "Hello, world!")) is None  # fewer words than a shingle
    dup = d.check(doc("s2", "hello world"))  # same words, other punctuation
    assert dup is not None and dup.kind == "near" and dup.similarity == 1.0
    assert d.check(doc("s3", "goodbye world")) is None


def test_bad_parameters():
    with pytest.raises(ValueError):
        Deduplicator(threshold=0.0)
    with pytest.raises(ValueError):
        Deduplicator(shingle_words=0)


def test_signature_speed():
    d = Deduplicator()
    texts = [" ".join(words(i, 150)) for i in range(1200)]
    t = time.perf_counter()
    sigs = [d.signature(x) for x in texts]
    assert time.perf_counter() - t < 4.0
    assert len(set(sigs)) == 1200
