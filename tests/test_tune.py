"""`twin tune reranker` and `twin tune adapter` on a 10-document corpus: a few steps of real training
with the packaged MiniLM, saved as versions, loaded back by search, and changing the rankings."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llmtwin import Twin
from llmtwin.models.versions import latest, read_card
from llmtwin.training.adapter import AdapterTuning, tune_adapter
from llmtwin.training.pseudo_queries import load_chunks, sentence_queries

DOCS = {
    "bees": "Honey bees live in colonies ruled by a single queen. Worker bees gather nectar and pollen from flowers. "
            "They dance to tell the hive where food can be found.",
    "comets": "Comets are icy bodies that orbit the Sun on long elliptical paths. Near the Sun their ice turns to gas. "
              "The gas and dust form a glowing tail that points away from the Sun.",
    "bridges": "Suspension bridges hang their deck from steel cables draped over tall towers. "
               "The cables are anchored in massive concrete blocks at each end. Wind tunnels test their shape.",
    "coffee": "Coffee beans are the roasted seeds of a cherry-like fruit. Light roasts keep more acidity. "
              "Dark roasts taste bitter and smoky because of longer heating.",
    "glaciers": "Glaciers are rivers of ice that flow slowly downhill under their own weight. "
                "They carve U-shaped valleys. Melting glaciers raise the level of the sea.",
    "violins": "A violin has four strings tuned in perfect fifths. The bow is strung with horsehair and rosin. "
               "Stradivari made the most famous violins in Cremona.",
    "tides": "Tides rise and fall twice a day because of the pull of the Moon. Spring tides happen at full "
             "and new moon. Neap tides are the weakest tides of the month.",
    "printing": "Gutenberg built a printing press with movable metal type around 1440. "
                "Books became cheaper and spread quickly across Europe. Literacy rose as a result.",
    "volcano": "Volcanoes erupt when magma rises through the crust. Ash clouds can ground aircraft. "
               "Lava cools into basalt rock on the slopes.",
    "owls": "Owls hunt at night with silent feathers and keen hearing. Their eyes cannot move in their sockets. "
            "They turn their heads almost all the way round instead.",
}
QUERIES = ["why do bees dance", "what makes a comet tail glow", "how are bridge cables anchored",
           "why do dark roasts taste bitter", "what shapes do glaciers carve", "how are violin strings tuned"]


@pytest.fixture(scope="module")
def twin(tmp_path_factory, embedder):
    root = tmp_path_factory.mktemp("tune")
    corpus = root / "corpus"
    corpus.mkdir()
    for name, text in DOCS.items():
        (corpus / f"{name}.md").write_text(text + "\n", encoding="utf-8")
    twin = Twin(root)
    twin.ingest([corpus])
    assert twin.store().count_chunks() == 10
    return twin


def test_pseudo_queries_come_from_the_chunks(twin):
    import random

    chunks = load_chunks(twin.store())
    queries = sentence_queries(chunks, 20, random.Random(0))
    assert len(queries) == 20 and {q.kind for q in queries} == {"ict", "span", "cloze"}
    by_id = {c.chunk_id: c for c in chunks}
    for q in queries:
        text = by_id[q.chunk_id].text
        if q.kind == "ict":
            assert q.query in text and q.query not in q.positive  # the sentence is taken out
        elif q.kind == "span":
            assert q.query in " ".join(text.split()) and q.positive == text
        else:  # a question made from one of the chunk's sentences
            assert q.query.split()[0] in ("What", "Which", "Who", "When", "How") and q.query.endswith("?")
            assert q.positive == text and q.query not in text
            assert len(set(q.query.split()) & set(text.split())) >= 3


def test_tune_reranker_saves_a_version_used_by_search(twin, twin_cli):
    before = {q: [h.chunk.chunk_id for h in twin.search(q, k=5)] for q in QUERIES}
    proc = twin_cli("--project", twin.project.root, "tune", "reranker", "--queries", "12", "--negatives", "2",
                    "--steps", "2", "--json", check=True)
    card = json.loads(proc.stdout)
    path = latest(twin.project.state_dir, "reranker")
    assert path is not None and path.name == card["version"] == "v1"
    assert read_card(path)["training"]["steps"] == 2 and card["data"]["chunks"] == 10
    assert card["data"]["train_queries"] + card["data"]["held_out_queries"] == sum(card["data"]["queries"].values())
    assert card["seconds"]["train"] > 0 and card["training"]["pairs_seen"] == 2 * 4 * 3

    assert set(card["check"]) >= {"before", "after", "hybrid"} and isinstance(card["use"], bool)
    auto = twin.search_explain(QUERIES[0], k=5)  # rerank: auto takes it only if it beat hybrid on its check
    assert ("rerank" in auto.stages) == card["use"]
    after = {}
    for q in QUERIES:  # rerank: on takes the latest version whatever its check said
        result = twin.search_explain(q, k=5, retrieval={"rerank": "on"})
        assert result.pipeline == ["hybrid(fetch 20)", "rerank(reranker-v1, top 20)", "top 5"]
        assert all("rerank" in h.scores and h.score == h.scores["rerank"] for h in result.hits)
        after[q] = [h.chunk.chunk_id for h in result.hits]
    assert after != before  # the reranker changed rankings
    assert sorted(after[QUERIES[0]]) != [] and all(len(after[q]) == 5 for q in QUERIES)
    off = twin.search_explain(QUERIES[0], k=5, retrieval={"rerank": "off"})
    assert [h.chunk.chunk_id for h in off.hits] == before[QUERIES[0]] and "rerank" not in off.stages

    # rerank_weight < 1: the reranker's and the first stage's min-max scores, weighted
    fused = twin.search_explain(QUERIES[0], k=20, retrieval={"rerank": "on", "rerank_weight": 0.5})
    assert fused.pipeline[1] == "rerank(reranker-v1, top 20, fused 0.5)"
    head = fused.stages["rerank"]
    rr = [h.scores["rerank"] for h in head]
    fs = [h.scores["relative"] for h in head]

    def mm(v, x):
        return (x - min(v)) / (max(v) - min(v))

    for h in head:
        expected = 0.5 * mm(rr, h.scores["rerank"]) + 0.5 * mm(fs, h.scores["relative"])
        assert h.score == pytest.approx(expected) and h.scores["rerank_fused"] == pytest.approx(expected)
    assert [h.score for h in head] == sorted((h.score for h in head), reverse=True)


def test_tune_adapter_loads_back_and_moves_queries(twin):
    card = tune_adapter(twin, AdapterTuning(queries=40, epochs=3, min_gain=-1.0, keep_best=False, lr=0.05))
    assert card["use"] and card["version"] == "v1" and card["data"]["chunks"] == 10
    matrix = np.load(latest(twin.project.state_dir, "adapter") / "adapter.npy")
    assert matrix.shape == (384, 384) and not np.allclose(matrix, np.eye(384))
    q = QUERIES[1]
    plain = twin.search_explain(q, k=10, mode="dense", retrieval={"adapter": "off", "rerank": "off"})
    adapted = twin.search_explain(q, k=10, mode="dense", retrieval={"rerank": "off"})
    assert adapted.pipeline == ["dense+adapter-v1"] and "adapter" in adapted.timings
    assert [round(h.score, 5) for h in adapted.hits] != [round(h.score, 5) for h in plain.hits]
    # an adapter that did not beat the identity on its held-out check is saved but not used
    card = tune_adapter(twin, AdapterTuning(queries=40, epochs=1, min_gain=1.0))
    assert card["version"] == "v2" and not card["use"]
    assert twin.search_explain(q, k=3, mode="dense", retrieval={"rerank": "off"}).pipeline == ["dense"]


def test_tune_query_encoder_is_used_by_search_only_if_its_check_passed(twin, tmp_path):
    from llmtwin.errors import TwinError
    from llmtwin.training.query_encoder import QueryEncoderTuning, tune_query_encoder

    with pytest.raises(TwinError, match="no query encoder"):
        twin.search_explain(QUERIES[0], k=3, retrieval={"query_encoder": "on"})
    bad = tmp_path / "questions.jsonl"
    bad.write_text('{"question": "why do owls turn their heads"}\n{not json\n', encoding="utf-8")
    with pytest.raises(TwinError, match=r"questions\.jsonl:2: not valid JSON"):
        tune_query_encoder(twin, QueryEncoderTuning(texts=[bad], steps=1, batch=8))
    # a check no student can pass (it would have to beat the embedder by 1): saved, not used
    card = tune_query_encoder(twin, QueryEncoderTuning(steps=2, batch=8, held_out=10, max_drop=-1.0))
    assert card["version"] == "v1" and not card["use"] and card["layers"] == {"kept": [0, 4, 5], "of": 6}
    assert twin.query_embedder() is twin.embedder
    forced = twin.search_explain(QUERIES[0], k=3, retrieval={"rerank": "off", "query_encoder": "on"})
    assert forced.pipeline == ["hybrid (query-encoder-v1)"]

    good = tmp_path / "questions.txt"
    good.write_text("\n".join(QUERIES) + "\n", encoding="utf-8")
    card = tune_query_encoder(twin, QueryEncoderTuning(steps=25, batch=8, held_out=10, max_drop=1.0, texts=[good]))
    assert card["version"] == "v2" and card["use"] and card["data"]["train_texts"] == card["data"]["from_chunks"] + 6
    assert card["training"]["steps"] == 25 and card["training"]["loss_last_tenth"] < card["training"]["loss_first_tenth"]
    assert 0 < card["check"]["student_mrr10"] <= 1 and card["check"]["cosine_mean"] > 0.8
    student = twin.query_embedder()
    assert student is not twin.embedder and student.student == "query-encoder-v2"
    # a caller that embeds questions itself (the eval runner, the server's batcher) must not here,
    # unless this request turns the student (and any adapter) off
    assert not twin.plain_queries() and not twin.plain_queries(twin.retrieval_config({"adapter": "off"}))
    assert twin.plain_queries(twin.retrieval_config({"adapter": "off", "query_encoder": "off"}))
    assert student.name == twin.embedder.name and student.dim == twin.embedder.dim
    q = QUERIES[0]
    cos = float(student.embed_query(q) @ twin.embedder.embed_query(q))
    assert 0.8 < cos < 0.9999  # the same space, not the same model
    result = twin.search_explain(q, k=3, retrieval={"rerank": "off"})
    assert result.pipeline == ["hybrid (query-encoder-v2)"] and result.hits[0].chunk.source.endswith("bees.md")
    plain = twin.search_explain(q, k=3, retrieval={"rerank": "off", "query_encoder": "off"})
    assert plain.pipeline == ["hybrid"]
    assert [round(h.score, 5) for h in plain.hits] != [round(h.score, 5) for h in result.hits]
