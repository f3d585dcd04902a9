"""Sentence vectors (ingest.sentence_vectors): each chunk's sentences embedded on their own, dense
search scoring a chunk by the best of its own vector and its sentences'. Real files, the packaged
embedder, a real LanceDB store: the rows written, the scores against vectors computed here, the
ranking change, incremental re-ingest, a store filled in after the fact, an interrupted fill."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import ingest_in
from llmtwin import Twin
from llmtwin.feature.sentence_vectors import chunk_sentences, embed_missing_sentences
from llmtwin.store.lancedb_store import LanceStore
from llmtwin.types import Chunk

HARBOUR = (
    "The old harbour town grew rich on the herring trade during the fifteenth century. "
    "Merchants built tall warehouses along the quay to store salted fish and timber. "
    "A fire in 1702 destroyed most of the wooden buildings near the water. "
    "The lighthouse on the northern breakwater was designed by an engineer from Leiden. "
    "Today the warehouses hold a maritime museum, cafes and a small brewery."
)
ORCHARD = (
    "Apple orchards cover the hills east of the town. "
    "Growers prune the trees in late winter before the buds open. "
    "Most of the harvest is pressed into cider at a cooperative mill."
)
SHORT = "Tea."  # one sentence under the minimum length: the chunk's own vector stands for it


def make_project(root, sentence_vectors: bool) -> Twin:
    corpus = root / "corpus"
    corpus.mkdir(parents=True)
    (corpus / "harbour.md").write_text(HARBOUR + "\n", encoding="utf-8")
    (corpus / "orchard.md").write_text(ORCHARD + "\n", encoding="utf-8")
    (corpus / "short.md").write_text(SHORT + "\n", encoding="utf-8")
    twin = Twin(root)
    twin.config.ingest.sentence_vectors = sentence_vectors
    return twin


def sentence_rows(twin: Twin) -> dict[str, np.ndarray]:
    """chunk id → its sentence vectors in order."""
    rows = sorted(twin.store().sentences.to_arrow().to_pylist(), key=lambda r: (r["chunk_id"], r["idx"]))
    out: dict[str, list] = {}
    for r in rows:
        out.setdefault(r["chunk_id"], []).append(r["vector"])
    return {k: np.array(v, dtype=np.float32) for k, v in out.items()}


def doc_of(twin: Twin) -> dict[str, str]:
    """chunk id → document id."""
    return {r["chunk_id"]: r["doc_id"] for r in twin.store().chunks.to_arrow().select(["chunk_id", "doc_id"]).to_pylist()}


def unit(v):
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def twin(tmp_path_factory, embedder):
    twin = make_project(tmp_path_factory.mktemp("sentences"), sentence_vectors=True)
    report = ingest_in(twin, "corpus")
    assert not report.failed
    return twin, report


def test_every_chunk_gets_its_sentence_vectors(twin, embedder):
    twin, report = twin
    assert twin.store().chunks_without_sentences() == []
    rows = sentence_rows(twin)
    stored = twin.store().chunks.to_arrow().to_pylist()
    assert set(rows) == {r["chunk_id"] for r in stored}
    docs = doc_of(twin)
    assert report.sentences == 5 + 3 == sum(len(v) for k, v in rows.items() if docs[k] != "corpus/short.md")
    for r in stored:
        sentences = chunk_sentences(twin.store().get_chunks([r["chunk_id"]])[0])
        if len(sentences) >= 2:  # each row is that sentence's own embedding, in order
            expected = np.asarray(embedder.embed_sentences(sentences), dtype=np.float32)
            assert np.allclose(rows[r["chunk_id"]], expected, atol=1e-4)
            # the short-text path (ONNX, int8 by default) agrees with the passage encoder
            cos = np.sum(unit(rows[r["chunk_id"]]) * unit(embedder.embed_passages(sentences)), axis=1)
            assert cos.min() > 0.98
        else:  # "Tea.": one row, the chunk's own vector
            assert sentences == [] and np.allclose(rows[r["chunk_id"]], [r["vector"]], atol=1e-6)


def test_dense_score_is_the_best_of_chunk_and_sentences(twin, embedder):
    twin, _ = twin
    store = twin.store()
    query = "Who designed the lighthouse on the breakwater?"
    q = unit(embedder.embed_query(query))
    chunk_vec = {r["chunk_id"]: unit(r["vector"]) for r in store.chunks.to_arrow().to_pylist()}
    rows = sentence_rows(twin)
    with_s = {h.chunk.chunk_id: h.score for h in store.dense_search(q, 10, sentences=True)}
    without = {h.chunk.chunk_id: h.score for h in store.dense_search(q, 10, sentences=False)}
    assert set(with_s) == set(without) == set(chunk_vec)
    for cid, v in chunk_vec.items():  # float16 matrices: scores at ~1e-3
        assert without[cid] == pytest.approx(float(v @ q), abs=2e-3)
        best = max(float(v @ q), float((unit(rows[cid]) @ q).max()))
        assert with_s[cid] == pytest.approx(best, abs=2e-3)
    harbour = next(c for c, d in doc_of(twin).items() if d == "corpus/harbour.md")
    # the one sentence about the lighthouse matches far better than the five-sentence chunk
    assert with_s[harbour] > without[harbour] + 0.1
    # LanceDB's own search (stores over store.memory_max_chunks) re-scores the same way, in float32
    lance = LanceStore(twin.project.store_dir, memory_max_chunks=0)
    on_disk = {h.chunk.chunk_id: h.score for h in lance.dense_search(q, 10)}
    assert lance._memory() is None and on_disk == pytest.approx(with_s, abs=2e-3)
    assert [h.chunk.chunk_id for h in lance.dense_search(q, 1)] == [harbour]
    # counted once for this table version, not on every search (each count is a LanceDB round trip)
    assert lance._not_in_memory == lance._version() and lance._sentence_count == (lance._version(), 9)
    # more sentence vectors than store.memory_max_sentences: the chunks in memory, the pool's
    # sentence vectors read from the store
    lean = LanceStore(twin.project.store_dir, memory_max_sentences=0)
    in_part = {h.chunk.chunk_id: h.score for h in lean.dense_search(q, 10)}
    assert lean._memory().sentences is None and lean._memory().sentence_rows == 9
    assert in_part == pytest.approx(with_s, abs=2e-3)
    best = store.dense_search(q, 1)  # re-scored before the cut to `limit`
    assert [h.chunk.chunk_id for h in best] == [harbour] and best[0].score == pytest.approx(with_s[harbour])
    # and the config switch reaches search: the same numbers through Twin.search_explain
    on = twin.search_explain(query, k=3, mode="dense").hits
    off = twin.search_explain(query, k=3, mode="dense", retrieval={"sentences": False}).hits
    assert on[0].chunk.chunk_id == off[0].chunk.chunk_id == harbour
    assert on[0].score == pytest.approx(with_s[harbour]) and off[0].score == pytest.approx(without[harbour])


def test_reingest_replaces_stale_rows_and_delete_removes_them(tmp_path, embedder):
    twin = make_project(tmp_path / "p", sentence_vectors=True)
    seen: list[tuple[int, int]] = []
    ingest_in(twin, "corpus", progress=lambda done, total: seen.append((done, total)))
    # the chunks (3), then their sentences (3 more): done never goes back, and ends at the total
    assert seen[-1] == (6, 6) and all(a[0] <= b[0] and a[1] <= b[1] for a, b in zip(seen, seen[1:]))
    again = ingest_in(twin, "corpus")
    assert again.sentences == 0 and again.chunks == 0
    old = sentence_rows(twin)

    (tmp_path / "p" / "corpus" / "orchard.md").write_text(
        ORCHARD + " Pear trees grow beside the apples on the lower slopes.\n", encoding="utf-8")
    mod = ingest_in(twin, "corpus")
    assert mod.updated == ["corpus/orchard.md"] and mod.sentences == 4
    new = sentence_rows(twin)
    docs = doc_of(twin)
    assert set(new) == set(docs)  # the old orchard chunk's rows went with it
    orchard = [c for c, d in docs.items() if d == "corpus/orchard.md"]
    assert len(orchard) == 1 and orchard[0] not in old and len(new[orchard[0]]) == 4
    assert {c: v.tolist() for c, v in new.items() if c != orchard[0]} == {
        c: v.tolist() for c, v in old.items() if c in new and c != orchard[0]}

    harbour = {c for c, d in docs.items() if d == "corpus/harbour.md"}
    (tmp_path / "p" / "corpus" / "harbour.md").unlink()
    ingest_in(twin, "corpus")
    assert harbour and not harbour & set(sentence_rows(twin))
    assert twin.store().sentences.count_rows() == 4 + 1
    q = embedder.embed_query("Who designed the lighthouse?")
    assert all(h.chunk.doc_id != "corpus/harbour.md" for h in twin.store().dense_search(q, 10))


def test_turned_on_later_fills_in_and_an_interrupted_fill_resumes(tmp_path, embedder):
    twin = make_project(tmp_path / "p", sentence_vectors=False)
    first = ingest_in(twin, "corpus")
    assert first.sentences == 0 and sentence_rows(twin) == {}

    class Interrupted(Exception):
        pass

    class FailsOnSecondBatch:  # the real embedder, cut off after its first batch of sentences
        def __init__(self, inner):
            self.inner, self.calls = inner, 0

        def embed_sentences(self, texts):
            self.calls += 1
            if self.calls == 2:
                raise Interrupted
            return self.inner.embed_sentences(texts)

    store = twin.store()
    with pytest.raises(Interrupted):  # one chunk per batch: harbour's or orchard's is committed first
        embed_missing_sentences(store, FailsOnSecondBatch(embedder), batch_chunks=1)
    assert 1 <= len(sentence_rows(twin)) < 3

    twin.config.ingest.sentence_vectors = True
    resumed = ingest_in(twin, "corpus")
    rows = sentence_rows(twin)
    assert len(rows) == 3 and store.chunks_without_sentences() == []
    assert 0 < resumed.sentences < 8  # only what the interrupted run had not done
    assert sum(len(v) for v in rows.values()) == 5 + 3 + 1


def test_headings_lead_their_sentences_instead_of_being_one():
    text = "## Diet\n\nThey graze at night on grasses and sedges. They can go without water for weeks. Yes."
    chunk = Chunk("c", "guide.md", "guide.md", text, 0, len(text), heading_path=["Quokka Field Guide", "Diet"])
    assert chunk_sentences(chunk) == [
        "Quokka Field Guide > Diet: They graze at night on grasses and sedges.",
        "Quokka Field Guide > Diet: They can go without water for weeks.",
    ]
    plain = Chunk("d", "notes.txt", "notes.txt", "One two three four. Five six seven eight.", 0, 41)
    assert chunk_sentences(plain) == ["One two three four.", "Five six seven eight."]
