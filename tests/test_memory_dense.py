"""The in-memory dense search's pieces on synthetic vectors (no models): the int8 first pass finds
what the exact product finds, and top-k takes tied scores in table order."""

import numpy as np
import pyarrow as pa
import pytest

from llmtwin.store.lancedb_store import _MemoryCache


def _table(vectors: np.ndarray) -> pa.Table:
    n, dim = vectors.shape
    return pa.table({
        "chunk_id": [f"c{i}" for i in range(n)],
        "doc_id": [f"d{i // 10}" for i in range(n)],
        "source": ["s.txt"] * n,
        "file_type": ["txt"] * n,
        "text": [f"chunk {i}" for i in range(n)],
        "start": pa.array([0] * n, pa.int64()),
        "end": pa.array([1] * n, pa.int64()),
        "heading_path": [[] for _ in range(n)],
        "parent_id": [None] * n,
        "idx": pa.array(list(range(n)), pa.int64()),
        "metadata": ["{}"] * n,
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim),
    })


@pytest.fixture(scope="module")
def corpus():
    """3,000 vectors around 60 topics (as embeddings cluster), and 40 queries near random rows."""
    rng = np.random.default_rng(7)
    topics = rng.normal(size=(60, 384))
    vectors = topics[rng.integers(0, 60, 3000)] + 0.9 * rng.normal(size=(3000, 384))
    queries = vectors[rng.integers(0, 3000, 40)] + 0.7 * rng.normal(size=(40, 384))
    return _table(vectors.astype(np.float32)), queries.astype(np.float32)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_int8_first_pass_finds_what_the_exact_product_finds(corpus, dtype):
    table, queries = corpus
    int8 = _MemoryCache((1, 1), table, dtype, scan="int8")
    exact = _MemoryCache((1, 1), table, dtype, scan="exact")
    assert int8.scan is not None and exact.scan is None
    approx = int8.scan(queries[0] / np.linalg.norm(queries[0]))
    assert approx.shape == (3000,) and 0 < np.abs(approx - exact._scores(queries[0] / np.linalg.norm(queries[0]))).max() < 0.02
    allowed = np.arange(3000) % 3 == 0
    for q in queries:
        for limit, mask in ((10, None), (100, None), (10, allowed)):
            got, want = int8.dense(q, limit, mask).hits(), exact.dense(q, limit, mask).hits()
            assert [h.chunk.chunk_id for h in got] == [h.chunk.chunk_id for h in want]
            # re-scored from the same vectors: float16 (torch) gives the same bits on a subset of
            # rows, float32 (BLAS) may differ in the last one
            assert np.allclose([h.score for h in got], [h.score for h in want], rtol=0, atol=0 if dtype == "float16" else 1e-6)


def test_top_takes_ties_in_table_order():
    rng = np.random.default_rng(0)
    for trial in range(300):
        n = int(rng.integers(1, 400))
        scores = np.round(rng.random(n), 2).astype(np.float32)  # many ties
        allowed = rng.random(n) < 0.7 if trial % 2 else None
        limit = int(rng.integers(0, n + 3))
        rows = np.arange(n) if allowed is None else np.flatnonzero(allowed)
        want = rows[np.lexsort((rows, -scores[rows]))][:limit]
        assert sorted(_MemoryCache._top(scores, limit, allowed).tolist()) == sorted(want.tolist())


def test_auto_dtype_is_float32_only_beside_the_int8_pass_and_within_its_budget(corpus, monkeypatch):
    import llmtwin.store.lancedb_store as lancedb_store

    table, queries = corpus
    auto = _MemoryCache((1, 1), table, "auto", scan="int8")
    assert auto.dtype == "float32" and isinstance(auto.matrix, np.ndarray)
    assert _MemoryCache((1, 1), table, "auto", scan="exact").dtype == "float16"  # the full product: float16
    monkeypatch.setattr(lancedb_store, "AUTO_FLOAT32_BYTES", 3000 * 384 * 4 - 1)  # one byte short
    assert _MemoryCache((1, 1), table, "auto", scan="int8").dtype == "float16"
    half = _MemoryCache((1, 1), table, "float16", scan="int8")
    for q in queries[:10]:  # the same best scores either way, to float16 resolution (near ties may swap)
        assert np.allclose(auto.dense(q, 10).scores, half.dense(q, 10).scores, rtol=0, atol=1e-3)
