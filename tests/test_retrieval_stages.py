"""Post-retrieval stages on a real store with the packaged embedder: auto-merge, MMR, sentence
window, compression, the pipeline (config, per-request overrides, --explain, JSON, traces)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from llmtwin import Twin
from llmtwin.errors import TwinError
from llmtwin.retrieval.mmr import hit_vectors
from llmtwin.retrieval.sentences import sentence_spans
from llmtwin.trace import read_trace

VOLCANO = [  # one section, several short chunks (chunk_tokens=48)
    "Volcanoes form where molten rock called magma rises through cracks in the crust of the Earth.",
    "Most of the active volcanoes on the planet sit along the Pacific Ring of Fire.",
    "Lava that reaches the surface can flow for kilometres before it cools into basalt.",
    "The eruption of Mount Tambora in 1815 caused the year without a summer in Europe.",
    "Volcanic ash clouds can stop aircraft engines, so airports close when an eruption begins.",
    "Geologists measure small earthquakes and gas emissions to forecast the next eruption.",
    "Fertile volcanic soils attract farmers to the slopes despite the danger of living there.",
    "Some volcanoes stay dormant for thousands of years before they erupt again without warning.",
]
# Three close paraphrases on one topic (MMR should not return all three) and distinct others.
BREAD = [
    "Sourdough bread rises because wild yeast and lactic bacteria in the starter ferment the dough slowly overnight.",
    "A sourdough loaf gets its rise from the wild yeasts and lactobacilli of the starter, fermenting the dough over many hours.",
    "The starter of sourdough holds wild yeast and lactic acid bacteria that ferment and leaven the dough during a long proof.",
]
OTHERS = {
    "baguette.md": "A baguette is leavened with commercial baker's yeast and baked quickly in a very hot steam oven.",
    "rye.md": "Rye flour bread is dense and often soured, since rye dough cannot hold gas the way wheat gluten does.",
    "oven.md": "A Dutch oven traps steam around a loaf during the first minutes of baking, which gives a crisp crust.",
    "tea.md": "Green tea is steamed or pan-fired soon after picking to stop the leaves from oxidising.",
}


@pytest.fixture(scope="module")
def twin(tmp_path_factory, embedder):
    root = tmp_path_factory.mktemp("stages")
    corpus = root / "corpus"
    corpus.mkdir()
    (corpus / "volcano.md").write_text(
        "# Earth\n\n## Volcanoes\n\n" + " ".join(VOLCANO) + "\n\n## Rivers\n\n"
        "Rivers carry sediment from the mountains to the sea and build deltas at their mouths.\n",
        encoding="utf-8",
    )
    for i, text in enumerate(BREAD):
        (corpus / f"sourdough{i}.md").write_text(text + "\n", encoding="utf-8")
    for name, text in OTHERS.items():
        (corpus / name).write_text(text + "\n", encoding="utf-8")
    twin = Twin(root)
    twin.project.config.ingest.chunk_tokens = 48
    twin.project.config.ingest.chunk_overlap = 0
    twin.project.config.llm.max_new_tokens = 8
    report = twin.ingest([corpus])
    assert not report.failed and not report.duplicates
    return twin


def volcano_section(twin):
    chunks = [c for c in twin.store().chunks.to_arrow().to_pylist() if c["doc_id"] == "corpus/volcano.md"]
    parent = next(c["parent_id"] for c in chunks if c["heading_path"][-1] == "Volcanoes")
    children = [c for c in chunks if c["parent_id"] == parent]
    return twin.store().get_sections([parent])[parent], children


def test_no_stage_on_is_plain_search(twin):
    result = twin.search_explain("how does sourdough rise", k=3)
    assert set(result.stages) == {"dense", "bm25", "fused"}
    assert result.pipeline == ["hybrid"] and len(result.stages["fused"]) == 3


def test_hybrid_fuses_rows_as_score_fusion_fuses_hits(twin):
    """In memory, hybrid search fuses arrays of table rows and builds hits for the k it keeps only:
    the same hits, scores and order as score_fusion over the two lists of hits."""
    from llmtwin.retrieval.search import _fuse_rows, score_fusion

    query = "how does sourdough rise"
    store = twin.store()
    dense = store.dense_rows(twin.embedder.embed_query(query), 20)
    bm25 = store.text_rows(query, 20)
    assert dense is not None and bm25 is not None and dense.cache is bm25.cache
    assert 0 < len(bm25.rows) < len(dense.rows)  # some chunks are in one list only
    for norm in ("relative", "zscore"):
        for k in (3, 40):
            rows = _fuse_rows(dense, bm25, [0.3, 0.7], norm, k)
            hits = score_fusion([dense.hits("dense"), bm25.hits("bm25")], [0.3, 0.7], norm, limit=k)
            assert [(h.chunk.chunk_id, h.score, h.scores) for h in rows] == [
                (h.chunk.chunk_id, h.score, h.scores) for h in hits]
            assert len(rows) == min(k, len(set(dense.rows.tolist()) | set(bm25.rows.tolist())))
    lean = twin.search_explain(query, k=3, first_stages=False)  # the server's: no dense / BM25 lists kept
    full = twin.search_explain(query, k=3)
    assert set(lean.stages) == {"fused"}
    assert [(h.chunk.chunk_id, h.scores) for h in lean.hits] == [(h.chunk.chunk_id, h.scores) for h in full.hits]


def test_auto_merge_replaces_children_with_their_section(twin):
    section, children = volcano_section(twin)
    assert len(children) >= 3  # the section really is split
    q = "volcanoes eruption lava magma ash"
    plain = twin.search_explain(q, k=20)
    assert {c["chunk_id"] for c in children} <= {h.chunk.chunk_id for h in plain.hits}
    result = twin.search_explain(q, k=5, retrieval={"merge": True, "fetch_k": 20})
    assert "merge" in result.stages and "merge" in result.timings
    ids = [h.chunk.chunk_id for h in result.hits]
    assert section.section_id in ids
    assert not {c["chunk_id"] for c in children} & set(ids)  # no child left beside its parent
    parent = result.hits[ids.index(section.section_id)]
    assert parent.chunk.text == section.text and parent.chunk.start == section.start
    assert sorted(parent.chunk.metadata["merged"]) == sorted(c["chunk_id"] for c in children)
    best_child = next(h for h in plain.hits if h.chunk.parent_id == section.section_id)
    assert parent.score == best_child.score  # the parent takes its best child's place
    # a threshold the retrieved children do not reach merges nothing
    few = twin.search_explain(q, k=2, retrieval={"merge": True, "fetch_k": 2, "merge_threshold": 1.0})
    assert section.section_id not in [h.chunk.chunk_id for h in few.hits]


def test_mmr_is_more_diverse_than_top_k(twin, embedder):
    q = "why does sourdough bread rise"
    plain = twin.search_explain(q, k=3, mode="dense")
    assert {h.chunk.doc_id for h in plain.hits} == {f"corpus/sourdough{i}.md" for i in range(3)}
    result = twin.search_explain(q, k=3, mode="dense", retrieval={"mmr": True, "mmr_lambda": 0.5, "fetch_k": 10})
    assert result.hits[0].chunk.chunk_id == plain.hits[0].chunk.chunk_id  # the best one stays first
    assert len({h.chunk.doc_id for h in result.hits} & {h.chunk.doc_id for h in plain.hits}) < 3

    def mean_pairwise(hits):
        v = hit_vectors(hits, twin.store(), embedder)
        s = v @ v.T
        return (s.sum() - np.trace(s)) / (len(hits) * (len(hits) - 1))

    assert mean_pairwise(result.hits) < mean_pairwise(plain.hits) - 0.05
    scores = [h.score for h in result.hits]
    assert scores == sorted(scores, reverse=True) and all("mmr" in h.scores for h in result.hits)
    same = twin.search_explain(q, k=3, mode="dense", retrieval={"mmr": True, "mmr_lambda": 1.0})
    assert [h.chunk.chunk_id for h in same.hits] == [h.chunk.chunk_id for h in plain.hits]  # λ=1: top-k


def test_sentence_window_around_the_best_sentence(twin):
    section, children = volcano_section(twin)
    target = VOLCANO[3]  # Tambora
    q = "Which eruption caused the year without a summer?"
    result = twin.search_explain(q, k=1, retrieval={"window": 1})
    [hit] = result.hits
    original = result.stages["fused"][0].chunk
    assert hit.chunk.chunk_id == original.chunk_id and hit.chunk.parent_id == section.section_id
    spans = sentence_spans(section.text)
    sentences = [section.text[a:b] for a, b in spans]
    i = sentences.index(target)
    assert hit.chunk.text == section.text[spans[i - 1][0] : spans[i + 1][1]]  # one sentence each side
    assert hit.chunk.start == section.start + spans[i - 1][0] and hit.chunk.end == section.start + spans[i + 1][1]
    assert hit.chunk.metadata["window_sentence"] == [section.start + spans[i][0], section.start + spans[i][1]]
    assert "window" in result.timings and result.stages["window"] == result.hits
    wide = twin.search_explain(q, k=1, retrieval={"window": 3}).hits[0].chunk
    assert wide.text == section.text[spans[i - 3][0] : spans[i + 3][1]]
    # the window can reach past the matched chunk into its neighbours (never past the section)
    assert not (original.start <= wide.start and wide.end <= original.end)
    assert section.start <= wide.start and wide.end <= section.end


def test_compression_stays_within_budget_and_keeps_chunk_ids(twin, embedder):
    q = "What do geologists measure to forecast an eruption?"
    full = twin.search_explain(q, k=4)
    for budget in (60, 25, 5):
        result = twin.search_explain(q, k=4, retrieval={"compress_tokens": budget})
        assert result.hits and "compress" in result.stages
        assert sum(embedder.count_tokens([h.chunk.text for h in result.hits])) <= budget
        by_id = {h.chunk.chunk_id: h.chunk for h in full.hits}
        for hit in result.hits:
            source = by_id[hit.chunk.chunk_id]  # citations still point at the chunk
            for a, b in hit.chunk.metadata["compressed_spans"]:
                assert source.start <= a < b <= source.end
            pieces = [p for p in hit.chunk.text.split(" … ")]
            assert all(p.split()[0] in source.text for p in pieces)
    best = twin.search_explain(q, k=4, retrieval={"compress_tokens": 25}).hits
    assert any(VOLCANO[5][:40] in h.chunk.text for h in best)


def test_stages_compose_in_order_and_validate(twin):
    result = twin.search_explain(
        "volcano eruption", k=2, retrieval={"merge": True, "mmr": True, "window": 1, "compress_tokens": 80}
    )
    assert list(result.stages) == ["dense", "bm25", "fused", "merge", "mmr", "window", "compress"]
    assert result.pipeline[0] == "hybrid(fetch 20)" and result.pipeline[-1] == "compress(80 tokens)"
    assert "top 2" in result.pipeline and len(result.hits) <= 2
    assert all(name in result.timings for name in ("merge", "mmr", "window", "compress", "embed_query"))
    with pytest.raises(TwinError, match="unknown retrieval option"):
        twin.search("volcano", retrieval={"mmmr": True})
    with pytest.raises(TwinError, match="mmr_lambda"):
        twin.search("volcano", retrieval={"mmr_lambda": 2})
    with pytest.raises(TwinError, match="twin tune reranker"):
        twin.search("volcano", retrieval={"rerank": "on"})
    window_only = twin.search_explain("volcano eruption", k=2, mode="bm25", retrieval={"window": 1})
    assert "embed_query" in window_only.timings and window_only.hits  # embedded only for the window


def test_cli_explain_and_json_show_stages(twin, twin_cli):
    proc = twin_cli("--project", twin.project.root, "search", "volcano eruption forecast", "-k", "2", "--explain",
                    "--json", "--mmr", "--window", "1", "--compress", "60", check=True)
    out = json.loads(proc.stdout)
    assert out["pipeline"][0] == "hybrid(fetch 20)" and out["pipeline"][-1] == "compress(60 tokens)"
    assert {"mmr", "window", "compress"} <= set(out["stages"]) and {"mmr", "window", "compress"} <= set(out["timings"])
    assert out["stages"]["mmr"][0]["scores"]["mmr"] > 0


def test_ask_trace_records_the_pipeline(twin):
    answer = twin.ask("Which eruption caused the year without a summer?", retrieval={"window": 1, "mmr": True})
    trace = read_trace(twin.project.traces_dir, answer.trace_id)
    assert trace["pipeline"][-1] == "window(±1 sentences)"
    assert {"mmr", "window"} <= set(trace["stages"]) and "search.window" in trace["timings"]
    assert re.search(r"Tambora", " ".join(h.chunk.text for h in answer.hits))
