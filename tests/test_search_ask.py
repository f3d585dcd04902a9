"""Search and ask end to end on one ingested mixed corpus: the packaged embedder and LLM, a real
LanceDB store, the Python API and the real `twin` command."""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path

import pytest

from llmtwin import Twin
from llmtwin.config import LLMConfig
from llmtwin.errors import TwinError
from llmtwin.trace import read_trace

HIT_KEYS = {"rank", "chunk_id", "doc_id", "source", "score", "text"}
CITATION_KEYS = {"n", "chunk_id", "doc_id", "source", "text"}
MARKER = re.compile(r"\[(\d+)\]")


@pytest.fixture(scope="module")
def twin(tmp_path_factory, embedder, make_mixed_corpus):
    root = tmp_path_factory.mktemp("searchask")
    twin = Twin(root)
    twin.project.config.llm.max_new_tokens = 32
    twin.project.config.generation.mode = "generative"  # these tests hold the LLM path (extractive: test_answers.py)
    twin.project.config.ingest.near_duplicates = "drop"
    twin.ingest([make_mixed_corpus(root / "corpus")])
    return twin


def store_chunks(twin: Twin) -> dict[str, dict]:
    return {r["chunk_id"]: r for r in twin.store().chunks.to_arrow().to_pylist()}


# ---------------------------------------------------------------- search


@pytest.mark.parametrize("mode", ["hybrid", "dense", "bm25"])
def test_modes_find_the_right_chunk(twin, mode):
    result = twin.search_explain("What do quokkas graze on at night?", mode=mode, k=3)
    assert 1 <= len(result.hits) <= 3
    top = result.hits[0]
    assert top.chunk.doc_id == "corpus/guide.md" and top.chunk.heading_path[-1] == "Diet"
    scores = [h.score for h in result.hits]
    assert scores == sorted(scores, reverse=True)
    stages = {"hybrid": {"dense", "bm25", "fused"}, "dense": {"dense"}, "bm25": {"bm25"}}[mode]
    assert set(result.stages) == stages
    if mode == "hybrid":
        assert {"dense", "bm25", "relative"} <= set(top.scores) and top.score == top.scores["relative"]
    else:
        assert top.scores[mode] == top.score
    assert all(h.chunk.chunk_id in store_chunks(twin) for h in result.hits)


def test_dense_in_memory_float16_matches_float32_and_lancedb(twin, embedder):
    """The in-memory copy's float16 vectors (the default) rank as float32 and as LanceDB's own
    exact search do, with scores within float16's resolution (sentence vectors included: LanceDB's
    path re-scores its pool with them too)."""
    import numpy as np

    from llmtwin.store.lancedb_store import LanceStore

    vector = embedder.embed_query("What do quokkas graze on at night?")
    stores = {d: LanceStore(twin.project.store_dir, memory_dtype=d) for d in ("float16", "float32")}
    stores["lancedb"] = LanceStore(twin.project.store_dir, memory_max_chunks=0)
    hits = {name: s.dense_search(vector, 8, None) for name, s in stores.items()}
    assert stores["float16"]._memory().matrix.dtype.itemsize == 2 and stores["lancedb"]._memory() is None
    ids = {name: [h.chunk.chunk_id for h in found] for name, found in hits.items()}
    assert ids["float16"][:3] == ids["float32"][:3] == ids["lancedb"][:3]
    assert np.allclose([h.score for h in hits["float16"]], [h.score for h in hits["float32"]], atol=2e-3)
    where = "source LIKE 'corpus/%.md'"
    assert [h.chunk.chunk_id for h in stores["float16"].dense_search(vector, 3, where)] == \
           [h.chunk.chunk_id for h in stores["float32"].dense_search(vector, 3, where)]


def test_filters(twin):
    q = "notes about food, tea, glaciers and projects"
    hits = twin.search(q, k=20, filters=["source=corpus/*.md"])
    assert hits and all(fnmatch.fnmatch(h.chunk.source, "corpus/*.md") for h in hits)
    assert {h.chunk.doc_id for h in hits} == {"corpus/guide.md", "corpus/essay.md"}
    assert {h.chunk.doc_id for h in twin.search(q, k=20, filters=["source=corpus/re*"])} == {
        "corpus/report.pdf", "rec-alpha", "rec-beta", "rec-gamma"
    }
    assert len(twin.search(q, k=20, filters=["source=corpus"])) == len(store_chunks(twin))  # a folder
    [pdf] = twin.search(q, k=20, filters=["file_type=pdf"])
    assert pdf.chunk.doc_id == "corpus/report.pdf" and pdf.chunk.file_type == "pdf"
    for mode in ("hybrid", "dense", "bm25"):
        hits = twin.search("project storage", mode=mode, k=20, filters=["team=red"])
        assert {h.chunk.doc_id for h in hits} <= {"rec-alpha", "rec-gamma"} and hits, mode
    both = twin.search(q, k=20, filters={"team": "red", "year": "2024"})
    assert [h.chunk.doc_id for h in both] == ["rec-gamma"]
    assert twin.search(q, filters=["team=green"]) == []
    assert twin.search(q, filters=["source=elsewhere/*"]) == []


@pytest.mark.parametrize("bad", [["team"], ["=red"], ["source"]])
def test_malformed_filter_is_a_twin_error(twin, bad):
    with pytest.raises(TwinError, match="expected KEY=VALUE"):
        twin.search("quokka", filters=bad)
    with pytest.raises(TwinError, match="expected KEY=VALUE"):
        twin.ask("quokka?", filters=bad)


def test_bad_mode_and_empty_query(twin):
    with pytest.raises(TwinError, match="hybrid, dense or bm25"):
        twin.search("quokka", mode="sparse")
    with pytest.raises(TwinError, match="empty query"):
        twin.search("   ")


@pytest.mark.parametrize("query", ['quokka "diet', "text:quokka", "quokka AND (diet", "what's a quokka's diet?"])
def test_query_syntax_characters_are_plain_words(twin, query):
    hits = twin.search(query, mode="bm25")
    assert hits and hits[0].chunk.doc_id == "corpus/guide.md"


def test_cli_search_json(twin, twin_cli):
    proc = twin_cli("--project", twin.project.root, "search", "rye flour starter", "-k", "3", "--json",
                    "--filter", "file_type=txt", check=True)
    hits = json.loads(proc.stdout)
    assert [h["rank"] for h in hits] == [1]
    assert set(hits[0]) == HIT_KEYS
    assert hits[0]["doc_id"] == hits[0]["source"] == "corpus/notes.txt"
    assert hits[0]["text"] == store_chunks(twin)[hits[0]["chunk_id"]]["text"]
    assert isinstance(hits[0]["score"], float)


def test_cli_search_explain(twin, twin_cli):
    proc = twin_cli("--project", twin.project.root, "search", "matcha tea", "--explain", "-k", "2", check=True)
    out = proc.stdout
    for stage in ("dense", "bm25", "fused"):
        assert re.search(rf"^── {stage} \(\d+ hits, [\d.]+ ms\)$", out, re.M), out
    assert re.search(r"^── timings: .*embed_query [\d.]+ ms", out, re.M)
    assert re.search(r"^1\. \[[\d.]+\] corpus/page\.html", out, re.M)


def test_cli_malformed_filter_exits_2(twin, twin_cli):
    proc = twin_cli("--project", twin.project.root, "search", "quokka", "--filter", "team")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: --filter 'team': expected KEY=VALUE (e.g. source=docs/*.md, file_type=md)"
    ]
    assert proc.stdout == ""


# ---------------------------------------------------------------- ask


def check_answer(twin: Twin, answer: dict) -> None:
    """Citations name stored chunks; every [n] in the answer is a citation and vice versa."""
    chunks = store_chunks(twin)
    for c in answer["citations"]:
        assert set(c) == CITATION_KEYS
        row = chunks[c["chunk_id"]]
        assert (c["doc_id"], c["source"], c["text"]) == (row["doc_id"], row["source"], row["text"])
    markers = {int(n) for n in MARKER.findall(answer["answer"])}
    assert markers == {c["n"] for c in answer["citations"]}


def test_ask_cites_stored_chunks_and_traces(twin):
    seen = []
    answer = twin.ask("What do quokkas eat?", on_text=seen.append)
    assert answer.answer.strip() and not answer.abstained
    assert answer.citations
    assert "".join(seen).strip() == answer.answer  # streamed text is the answer
    check_answer(twin, answer.to_dict())
    assert any(c.doc_id == "corpus/guide.md" for c in answer.citations)
    context_ids = [h.chunk.chunk_id for h in answer.hits]
    assert all(c.chunk_id == context_ids[c.n - 1] for c in answer.citations)

    traces = list(twin.project.traces_dir.glob("*.jsonl"))
    assert traces
    trace = read_trace(twin.project.traces_dir, answer.trace_id)
    assert trace["query"] == "What do quokkas eat?" and trace["kind"] == "ask"
    assert set(trace["stages"]) == {"dense", "bm25", "fused"}
    assert trace["stages"]["fused"][0]["chunk_id"] == context_ids[0]
    assert [m["role"] for m in trace["prompt"]] == ["system", "user"]
    assert "What do quokkas eat?" in trace["prompt"][-1]["content"]
    assert trace["output"] == answer.answer
    assert trace["citations"] == [c.chunk_id for c in answer.citations]
    assert trace["store_version"] == 1 and trace["context"] == context_ids
    assert trace["timings"]["total"] > 0


def test_lead_quote_streams_a_cited_source_sentence_before_the_llm(twin):
    """lead_quote (on by default for the packaged model): the first streamed text is a real source
    sentence with its marker, sent before the LLM's first token; off: no quote leads unless it is
    the extractive fallback."""
    import time

    from llmtwin.generation.answer import source_sentences

    events = []
    orig_stream = twin.llm.stream

    def stream(*args, **kwargs):  # notes when the LLM starts (a spy on the real model, not a mock)
        events.append(("llm", time.perf_counter()))
        yield from orig_stream(*args, **kwargs)

    twin.llm.stream = stream
    try:
        seen = []
        answer = twin.ask("What do quokkas graze on at night?", on_text=lambda t: (seen.append(t), events.append(("text", t))))
    finally:
        del twin.llm.stream
    assert events[0][0] == "text" and events[1][0] == "llm"  # the quote came before the model ran
    first = seen[0]
    m = re.match(r"^(.*?) \[(\d+)\]([.!?]?) $", first)
    assert m, first
    sentence, n = m.group(1) + m.group(3), int(m.group(2))
    assert sentence.rstrip(".!?") in " ".join(source_sentences(answer.hits[n - 1].chunk.text))
    assert answer.answer.startswith(first.strip()) and not answer.abstained
    assert read_trace(twin.project.traces_dir, answer.trace_id)["lead_quote"] is True

    twin.project.config.generation.lead_quote = "off"
    try:
        off = twin.ask("What do quokkas graze on at night?")
    finally:
        twin.project.config.generation.lead_quote = "auto"
    assert read_trace(twin.project.traces_dir, off.trace_id)["lead_quote"] is False


def test_ask_with_filter_matching_nothing_abstains_without_llm(twin, tmp_path):
    """No hit → the abstain text, no citation, and no LLM: one that cannot load is never touched."""
    other = Twin(twin.project.root)
    other.project.config.llm = LLMConfig(provider="hf", path=str(tmp_path / "no-such-model"))
    for filters in (["team=green"], ["source=elsewhere/*"]):
        answer = other.ask("What do quokkas eat?", filters=filters)
        assert answer.abstained and answer.citations == [] and answer.hits == []
        assert answer.answer == other.config.generation.abstain_text
        trace = read_trace(other.project.traces_dir, answer.trace_id)
        assert trace["abstained"] is True and trace["filters"] == filters and trace["context"] == []
    with pytest.raises(TwinError, match="no-such-model"):  # the LLM would have failed to load
        other.ask("What do quokkas eat?")


def test_cli_ask_json(twin, twin_cli):
    proc = twin_cli("--project", twin.project.root, "--set", "llm.max_new_tokens=32", "--set", "generation.mode=generative", "ask",
                    "When is a sourdough starter ready to bake with?", "--json", check=True)
    answer = json.loads(proc.stdout)
    assert {"answer", "citations", "trace_id", "timings"} <= set(answer)
    assert answer["answer"].strip() and answer["citations"]
    check_answer(twin, answer)
    assert any(c["doc_id"] == "corpus/notes.txt" for c in answer["citations"])
    assert {"search", "generate", "total"} <= set(answer["timings"])
    trace = read_trace(Path(twin.project.traces_dir), answer["trace_id"])
    assert trace is not None and trace["output"] == answer["answer"]
