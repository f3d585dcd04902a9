"""Before retrieval (query transforms, routing, self-query) and LLM reranking, on a real store with the
packaged embedder and the packaged LLM (SmolLM2-135M through llama.cpp, greedy, few new tokens)."""

from __future__ import annotations

import json
import re

import pytest

from llmtwin import Twin
from llmtwin.config import CollectionConfig, save_config
from llmtwin.project import CONFIG_FILE
from llmtwin.retrieval.llm_rerank import grade, listwise, pointwise
from llmtwin.retrieval.route import embedding_route, llm_route
from llmtwin.retrieval.self_query import (
    parse_proposal,
    self_query,
    store_schema,
    validate_filters,
)
from llmtwin.retrieval.transforms import (
    SubQuery,
    decompose,
    fuse,
    hyde,
    junk_reason,
    multi_query,
    parse_lines,
    plan_queries,
    rewrite,
    step_back,
)
from llmtwin.trace import read_trace
from llmtwin.types import Chunk, Hit

GEOLOGY = {
    "volcanoes.md": ("geology", ("Volcanoes erupt when magma rises through cracks in the crust. The eruption of "
                                 "Mount Tambora in 1815 caused the year without a summer in Europe.")),
    "rivers.md": ("geology", "Rivers carry sediment from the mountains to the sea and build deltas at their mouths."),
}
BAKING = {
    "sourdough.md": ("baking", ("Sourdough bread rises because wild yeast and lactic bacteria in the starter "
                                "ferment the dough slowly overnight.")),
    "oven.md": ("baking", ("A Dutch oven traps steam around a loaf during the first minutes of baking, which "
                           "gives a crisp crust.")),
}
COLLECTIONS = {
    "geology": CollectionConfig(description="Earth science: volcanoes, eruptions, rivers, rocks and landforms.",
                                sources=["corpus/geology/*"]),
    "baking": CollectionConfig(description="Bread baking: sourdough, yeast, dough, ovens and crusts.",
                               sources=["corpus/baking/*"]),
}
QUESTION = "How does sourdough no I mean how does sourdough bread rise ?"


@pytest.fixture(scope="module")
def twin(tmp_path_factory, embedder):
    root = tmp_path_factory.mktemp("transforms")
    for folder, docs in (("geology", GEOLOGY), ("baking", BAKING)):
        (root / "corpus" / folder).mkdir(parents=True)
        for name, (topic, text) in docs.items():
            (root / "corpus" / folder / name).write_text(f"---\ntopic: {topic}\n---\n{text}\n", encoding="utf-8")
    twin = Twin(root)
    twin.project.config.llm.max_new_tokens = 8
    twin.project.config.retrieval.collections = COLLECTIONS
    twin.project.config.retrieval.transform_tokens = 16
    save_config(twin.project.config, root / CONFIG_FILE)  # the CLI tests read it
    report = twin.ingest([root / "corpus"])
    assert not report.failed and len(report.added) == 4
    return twin


def _check(t, name):
    """A transform either adds queries of its kind or falls back, saying why — never both, never neither."""
    assert t.name == name and t.seconds > 0 and isinstance(t.raw, str)
    if t.fallback is None:
        assert t.queries and all(q.kind == name and q.text.strip() for q in t.queries)
    else:
        assert not t.queries and t.fallback


def test_each_transform_on_the_packaged_llm(llm, embedder):
    _check(rewrite(QUESTION, llm, 16), "rewrite")
    _check(decompose(QUESTION, llm, 24), "decompose")
    _check(multi_query(QUESTION, llm, 2, 16), "multi_query")
    _check(step_back(QUESTION, llm, 16), "step_back")
    q = embedder.embed_query(QUESTION)
    h = hyde(QUESTION, llm, embedder.embed_query, query_vector=lambda: q, max_new_tokens=24)
    _check(h, "hyde")
    if h.queries:  # average: the question's text with a unit vector between the two embeddings
        v = h.queries[0].vector
        assert h.queries[0].text == QUESTION and abs(float((v * v).sum()) - 1) < 1e-4 and float(v @ q) > 0.5


def test_junk_output_falls_back_to_the_question(llm):
    one_token = rewrite(QUESTION, llm, max_new_tokens=1)  # one token cannot be a query
    assert one_token.fallback == "empty or too short" and not one_token.queries and one_token.raw
    assert junk_reason("Sure! Here is the query you asked for", QUESTION) == "a preamble or refusal, not a query"
    assert junk_reason("Rewrite this question as a search query", QUESTION) == "echoes the instruction"
    assert junk_reason("sourdough bread rise", QUESTION) is None
    assert parse_lines("Here are the questions:\n1. What is sourdough?\n2) Why does bread rise?\n- What is sourdough?",
                       5) == ["What is sourdough?", "Why does bread rise?"]


def test_weighted_rrf_fusion_and_query_plan():
    def hits(*ids):
        return [Hit(Chunk(i, i, i, i, 0, 1), 1.0) for i in ids]

    fused = fuse([hits("a", "b"), hits("b", "c")], [1.0, 0.5], k=60)
    score = {h.chunk.chunk_id: h.score for h in fused}
    assert [h.chunk.chunk_id for h in fused] == ["b", "a", "c"]
    assert score["b"] == pytest.approx(1 / 62 + 0.5 / 61) and score["c"] == pytest.approx(0.5 / 62)
    planned = plan_queries("q", [])
    assert [(p.text, p.kind) for p in planned] == [("q", "original")]


def test_score_fusion_by_hand():
    from llmtwin.retrieval.search import score_fusion

    def hits(**scores):
        return [Hit(Chunk(i, i, i, i, 0, 1), s) for i, s in scores.items()]

    dense = hits(a=0.9, b=0.5, c=0.1)  # min-max: a 1, b 0.5, c 0
    bm25 = hits(b=12.0, d=4.0)  # min-max: b 1, d 0
    fused = score_fusion([dense, bm25], [0.5, 0.5])
    score = {h.chunk.chunk_id: h.score for h in fused}
    assert score == pytest.approx({"a": 0.5, "b": 0.75, "c": 0.0, "d": 0.0})
    assert [h.chunk.chunk_id for h in fused] == ["b", "a", "c", "d"]  # ties by chunk id
    assert fused[0].scores["relative"] == pytest.approx(0.75)  # the fused score is kept by name
    z = {h.chunk.chunk_id: h.score for h in score_fusion([dense, bm25], [0.25, 0.75], "zscore")}
    zd = {"a": 1.2247449, "b": 0.0, "c": -1.2247449}  # (s − mean) / std of each list; missing → its minimum
    zb = {"b": 1.0, "d": -1.0}
    for cid in "abcd":
        assert z[cid] == pytest.approx(0.25 * zd.get(cid, -1.2247449) + 0.75 * zb.get(cid, -1.0), abs=1e-6)
    assert [h.score for h in score_fusion([hits(x=3.0), []], [0.5, 0.5])] == [0.5]  # one hit: normalised to 1
    top = score_fusion([dense, bm25], [0.5, 0.5], limit=2)  # only the best two are built
    assert [(h.chunk.chunk_id, h.score) for h in top] == [(h.chunk.chunk_id, h.score) for h in fused[:2]]
    assert top[0].scores == {"relative": pytest.approx(0.75)} and top[0].chunk is dense[1].chunk  # the first list's


def test_search_with_transforms_records_each_stage(twin):
    result = twin.search_explain(QUESTION, k=2, retrieval={"transforms": ["rewrite", "step_back"]})
    names = [r["name"] for r in result.transforms]
    assert names == ["rewrite", "step_back"] and {"rewrite", "step_back"} <= set(result.timings)
    used = [r for r in result.transforms if not r["fallback"]]
    if used:  # more than the question was searched: one hit list per query, then their fusion
        assert "multi" in result.stages and any(s.startswith("q2:") for s in result.stages)
        assert result.pipeline[0].startswith("hybrid×")
    assert result.hits[0].chunk.source == "corpus/baking/sourdough.md"
    answer = twin.ask(QUESTION, retrieval={"transforms": ["rewrite"]})
    trace = read_trace(twin.project.traces_dir, answer.trace_id)
    assert trace["transforms"][0]["name"] == "rewrite" and "raw" in trace["transforms"][0]


def test_embedding_router_picks_the_collection_or_all(twin, embedder):
    for question, want in (("When did Mount Tambora erupt?", "geology"), ("Why does my bread crust go soft?", "baking")):
        route = embedding_route(embedder.embed_query(question), COLLECTIONS, embedder, 0.2)
        assert route.collection == want and route.sources == COLLECTIONS[want].sources
        assert route.scores[want] == max(route.scores.values())
    unsure = embedding_route(embedder.embed_query("tax forms"), COLLECTIONS, embedder, 0.9)
    assert unsure.collection is None and unsure.sources == [] and "threshold" in unsure.reason
    result = twin.search_explain("Tambora eruption", k=4, retrieval={"route": "embedding", "route_threshold": 0.2})
    assert result.transforms[0]["name"] == "route" and result.transforms[0]["collection"] == "geology"
    assert result.hits and all(h.chunk.source.startswith("corpus/geology/") for h in result.hits)
    assert "corpus/geology/%" in result.where


def test_llm_router_names_one_collection_or_searches_all(llm):
    route = llm_route("Why does sourdough bread rise?", COLLECTIONS, llm)
    assert route.method == "llm" and route.raw
    assert (route.collection in COLLECTIONS and route.sources) or (route.collection is None and "all" in route.reason)


def test_self_query_filters_are_validated_against_the_store(twin, llm):
    schema = store_schema(twin.store())
    assert {"source", "file_type", "doc_id", "topic"} <= set(schema.values)
    assert schema.values["topic"] == {"geology", "baking"}
    kept, dropped = validate_filters({"topic": "baking", "file_type": ".md", "author": "Ann", "year": "1999",
                                      "source": "corpus/geology"}, schema)
    reasons = {d.field: d.reason for d in dropped}
    # topic=baking and source=corpus/geology are valid alone, but no document has both
    assert kept == {} and reasons["author"].startswith("unknown field") and reasons["year"].startswith("unknown")
    assert reasons["topic"] == "the filters together match no document"
    kept, dropped = validate_filters({"topic": "baking", "type": "md", "topic2": "x"}, schema)
    assert kept == {"topic": "baking", "file_type": "md"} and [d.field for d in dropped] == ["topic2"]
    kept, dropped = validate_filters({"topic": "cooking"}, schema)
    assert not kept and "no document has this value" in dropped[0].reason
    # lenient parsing: JSON inside prose, single quotes, or key: value lines
    assert parse_proposal('Sure: {"query": "bread rise", "filters": {"topic": "baking"}} done') == (
        "bread rise", {"topic": "baking"}, "")
    assert parse_proposal("{'query': 'bread', 'topic': 'baking'}")[:2] == ("bread", {"topic": "baking"})
    assert parse_proposal("query: bread rise\ntopic: baking")[:2] == ("bread rise", {"topic": "baking"})
    # the real LLM: whatever it proposes, nothing raises and every proposal is kept or reported
    sq = self_query("Baking: why does sourdough rise?", llm, schema, max_new_tokens=32)
    assert sq.query and sq.raw and all(k in schema.values for k in sq.filters)
    result = twin.search_explain("Baking: why does sourdough rise?", k=2, retrieval={"self_query": True})
    record = result.transforms[0]
    assert record["name"] == "self_query" and result.hits and "self_query" in result.timings
    assert all(d["reason"] for d in record["dropped"])


def test_llm_rerank_reorders_by_the_llms_reply(twin, llm):
    hits = twin.search("volcano eruption Tambora", k=3, retrieval={"rerank": "off", "adapter": "off"})
    assert grade("Yes, it does.") == 1.0 and grade("no") == 0.0 and grade("2") == pytest.approx(2 / 3)
    assert grade("maybe") is None
    point = pointwise(hits, "Which eruption caused the year without a summer?", llm, top_n=2)
    assert len(point.replies) == 2 and sorted(h.chunk.chunk_id for h in point.hits) == sorted(
        h.chunk.chunk_id for h in hits)
    grades = [h.scores["llm"] for h in point.hits[:2]]
    assert grades == sorted(grades, reverse=True)  # sorted by the LLM's grade, ties in the old order
    reordered = [h.chunk.chunk_id for h in hits[::-1]]  # the best hit last: the LLM's pick moves it up
    wrong_order = [next(h for h in hits if h.chunk.chunk_id == c) for c in reordered]
    listed = listwise(wrong_order, "Which eruption caused the year without a summer?", llm, top_n=3)
    picks = [int(n) - 1 for n in re.findall(r"\d+", listed.replies[0]) if 0 < int(n) <= 3]
    if picks:
        assert listed.hits[0].chunk.chunk_id == wrong_order[picks[0]].chunk.chunk_id and listed.unparsed == 0
    else:
        assert [h.chunk.chunk_id for h in listed.hits] == reordered and listed.unparsed == 1
    result = twin.search_explain("Tambora eruption", k=2, retrieval={"llm_rerank": "listwise", "llm_rerank_top_n": 3})
    assert "llm_rerank" in result.stages and "llm_rerank(listwise, top 3)" in result.pipeline
    assert result.transforms[-1]["name"] == "llm_rerank"


def test_cli_search_explain_shows_transforms(twin, twin_cli):
    proc = twin_cli("--project", twin.project.root, "search", "Tambora eruption", "-k", "2", "--explain", "--json",
                    "--transform", "rewrite", "--route", "embedding", check=True)
    out = json.loads(proc.stdout)
    assert [r["name"] for r in out["transforms"]] == ["route", "rewrite"]
    assert "rewrite" in out["timings"] and out["hits"]
    text = twin_cli("--project", twin.project.root, "search", "Tambora eruption", "-k", "1", "--explain",
                    "--transform", "rewrite", check=True).stdout
    assert "── rewrite (" in text and "── pipeline:" in text
    bad = twin_cli("--project", twin.project.root, "search", "x", "--transform", "telepathy")
    assert bad.returncode == 2 and "transforms" in bad.stderr
    text = twin_cli("--project", twin.project.root, "search", "Where is uh Tambora, no sorry, where is Mount Tambora?",
                    "-k", "1", "--explain", "--repair", check=True).stdout
    assert "── repair: searched 'Where is Mount Tambora?'; removed 'uh', 'Where is Tambora, no sorry,'" in text


def test_subquery_defaults():
    q = SubQuery("text")
    assert q.kind == "original" and q.weight == 1.0 and q.vector is None


# -- rule-based disfluency repair (retrieval/disfluency.py) -------------------------------------

@pytest.mark.parametrize("question, repaired", [
    ("When did the Normans, no wait, the Vikings reach Iceland?", "When did the Vikings reach Iceland?"),
    ("What is the um no sorry the capital of France?", "What is the capital of France?"),  # anchored on "the"
    ("Who wrote Hamlet, I mean, who wrote Macbeth?", "Who wrote Macbeth?"),  # a restart
    ("When was Marie Curie, sorry, Albert Einstein born?", "When was Albert Einstein born?"),  # name for name
    ("What is the largest, or rather the smallest planet?", "What is the smallest planet?"),
    ("How many uh people live in Lagos?", "How many people live in Lagos?"),  # a filled pause only
    ("Actually, what is the boiling point of water?", "What is the boiling point of water?"),
    (QUESTION, "How does sourdough bread rise?"),
    # fluent questions pass through unchanged
    ("Is there no cure for the common cold?", None),  # "no" unmarked: part of the question
    ("Why was he sorry?", None),  # nothing follows the editing term: nothing was corrected
    ("What did they choose rather than coal?", None),
    ("What is the capital of France?", None),
])
def test_repair_drops_reparandum_and_interregnum(question, repaired):
    from llmtwin.retrieval.disfluency import repair

    fix = repair(question)
    assert fix.text == (repaired or question) and fix.changed == (repaired is not None)


def test_search_with_repair_searches_the_repaired_question(twin):
    result = twin.search_explain("How does the volcano, no sorry, the sourdough bread rise?", k=2,
                                 retrieval={"repair": True})
    record = result.transforms[0]
    assert record["name"] == "repair" and record["query"] == "How does the sourdough bread rise?"
    assert record["removed"] == ["the volcano, no sorry,"]
    same = twin.search_explain("How does the sourdough bread rise?", k=2)
    assert [h.chunk.chunk_id for h in result.hits] == [h.chunk.chunk_id for h in same.hits]
    assert [round(h.score, 6) for h in result.hits] == [round(h.score, 6) for h in same.hits]
    assert result.hits[0].chunk.source == "corpus/baking/sourdough.md"
    plain = twin.search_explain("How does the sourdough bread rise?", k=2, retrieval={"repair": True})
    assert plain.transforms == []  # nothing to repair: nothing recorded
