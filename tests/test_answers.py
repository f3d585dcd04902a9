"""Extractive answers (generation.mode: auto → extractive with the packaged model): the sentence of
the retrieved chunks that answers, cited; an abstention naming the closest sources when none does;
no LLM loaded. On a project of this repository's own docs (the `make run` demo's corpus), with the
real embedder and store; the same answer through ask, streaming, the CLI and the server."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest

from conftest import ingest_in
from llmtwin import Twin
from llmtwin.generation.extractive import Selector, prose_sentences
from llmtwin.trace import read_trace

DOCS = Path(__file__).resolve().parent.parent / "docs"
FILES = ["ingest.md", "architecture.md", "models.md", "search.md", "serving.md"]

# (question, words the answer must hold, the file it must cite)
DEMO = [
    ("How does llmtwin skip files that did not change?", ["hashed", "skipped"], "docs/ingest.md"),
    ("Which vector store does llmtwin use by default?", ["LanceDB"], "docs/architecture.md"),
    ("How are near duplicates found?", ["MinHash"], "docs/ingest.md"),
    ("What does twin doctor check?", ["doctor"], "docs/ingest.md"),
]
UNANSWERABLE = "What is the boiling point of mercury?"


@pytest.fixture(scope="module")
def twin(tmp_path_factory, embedder):
    root = tmp_path_factory.mktemp("answers")
    (root / "docs").mkdir()
    for name in FILES:
        shutil.copy(DOCS / name, root / "docs" / name)
    twin = Twin(root)
    ingest_in(twin, "docs")
    return twin


def test_prose_sentences_join_wrapped_lines_and_skip_markup():
    text = (
        "`clean.py`, `dedup.py`): the rest of a cut sentence.\n\n"
        "# A heading\n\n"
        "A paragraph wrapped\nover two lines. A second sentence here.\n\n"
        "- a list item that\n  wraps too\n"
        "```\ncode = 'never a sentence'\n```\n"
        "| a | table | row |\n"
    )
    assert prose_sentences(text) == [
        "A paragraph wrapped over two lines.", "A second sentence here.", "a list item that wraps too",
    ]


@pytest.mark.parametrize("question,words,source", DEMO)
def test_demo_questions_are_answered_from_the_sentence_that_says_it(twin, question, words, source):
    answer = twin.ask(question)
    assert answer.mode == "extractive" and not answer.abstained, answer.answer
    assert all(w.lower() in answer.answer.lower() for w in words), answer.answer
    [citation] = answer.citations
    assert citation.source == source
    sentence = answer.answer.rsplit(" [", 1)[0]
    assert sentence.rstrip(".") in citation.text.replace("\n", " ")  # taken from the cited chunk
    trace = read_trace(twin.project.traces_dir, answer.trace_id)
    assert trace["mode"] == "extractive" and trace["models"]["llm"] is None  # no LLM was loaded
    assert trace["answerability"] >= twin.config.generation.answer_threshold


def test_a_question_the_documents_do_not_answer_abstains(twin):
    answer = twin.ask(UNANSWERABLE)
    assert answer.abstained and answer.citations == []
    assert answer.answer.startswith(twin.config.generation.abstain_text)
    assert "Closest sources: docs/" in answer.answer
    assert answer.answerability < twin.config.generation.answer_threshold
    # the threshold decides: at 0 the best sentence is shown whatever it is
    twin.project.config.generation.answer_threshold = 0.0
    try:
        assert not twin.ask(UNANSWERABLE).abstained
    finally:
        twin.project.config.generation.answer_threshold = 0.5


def test_the_same_answer_streamed_from_the_cli_and_from_the_server(twin, twin_cli):
    from llmtwin.serve.app import create_app
    from test_serve import ServerThread

    question, _, _ = DEMO[0]
    seen: list[str] = []
    direct = twin.ask(question, on_text=seen.append)
    assert "".join(seen) == direct.answer
    cli = json.loads(twin_cli("--project", twin.project.root, "ask", question, "--json", check=True).stdout)
    assert cli["answer"] == direct.answer and cli["mode"] == "extractive"
    assert [c["chunk_id"] for c in cli["citations"]] == [c.chunk_id for c in direct.citations]
    with ServerThread(create_app(twin, keys=None)) as server:
        body = {"model": "twin-rag", "messages": [{"role": "user", "content": question}]}
        reply = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=120).json()
        assert reply["choices"][0]["message"]["content"] == direct.answer
        with httpx.stream("POST", server.url + "/v1/chat/completions", json={**body, "stream": True}, timeout=120) as r:
            parts = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
        streamed = "".join(p["choices"][0]["delta"].get("content") or "" for p in parts if p.get("choices"))
        assert streamed == direct.answer


def test_generative_mode_is_chosen_by_config(twin):
    assert twin.answer_mode() == "extractive"
    twin.project.config.generation.mode = "generative"
    try:
        assert twin.answer_mode() == "generative"
    finally:
        twin.project.config.generation.mode = "auto"
    other = Twin(twin.project.root)
    other.project.config.llm.provider = "openai"
    assert other.answer_mode() == "generative"  # a capable model writes its own answers


def test_tune_answers_trains_saves_loads_back_and_changes_scores(twin, twin_cli):
    question = DEMO[2][0]
    before = twin.ask(question)
    assert read_trace(twin.project.traces_dir, before.trace_id)["models"]["answer_selector"] == "default"
    proc = twin_cli("--project", twin.project.root, "tune", "answers", "--questions", "120", "--json", check=True)
    card = json.loads(proc.stdout)
    path = Path(card["path"])
    assert (path / "selector.json").is_file() and (path / "card.json").is_file()
    assert card["check"]["held_out"] > 0 and 0 <= card["check"]["trained"]["top1"] <= 1
    loaded = Selector.load(path / "selector.json")
    assert loaded.weights == json.loads((path / "card.json").read_text())["weights"] != Selector().weights
    fresh = Twin(twin.project.root)
    if not card["use"]:  # its held-out check lost to the defaults: not used
        assert fresh.answer_selector().source == "default"
        return
    assert fresh.answer_selector().source == f"answer-selector/{path.name}"
    after = fresh.ask(question)
    assert read_trace(fresh.project.traces_dir, after.trace_id)["models"]["answer_selector"] == f"answer-selector/{path.name}"
    assert after.answerability != before.answerability


def test_selector_fit_recovers_known_weights_and_pulls_towards_the_prior():
    """The trainer's logistic regression against weights known by construction: with a negligible
    penalty it recovers them; with a strong one it stays at the prior."""
    import numpy as np

    from llmtwin.training.answer_selector import fit

    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 3))
    true_w, true_b = np.array([1.5, -2.0, 0.5]), -0.3
    y = (rng.random(4000) < 1 / (1 + np.exp(-(x @ true_w + true_b)))).astype(float)
    w, b = fit(x, y, l2=1e-6)
    assert np.allclose(w, true_w, atol=0.15) and abs(b - true_b) < 0.15
    prior = np.array([0.2, 0.2, 0.2])
    w, _ = fit(x, y, l2=1e6, prior=prior)
    assert np.allclose(w, prior, atol=0.01)
    # separable data no longer diverges (a plain Newton step did, to weights of ±20)
    sep = np.array([[0.0], [1.0], [2.0], [3.0]])
    w, b = fit(sep, np.array([0.0, 0.0, 1.0, 1.0]), l2=1.0)
    assert np.isfinite(w).all() and abs(w[0]) < 10
