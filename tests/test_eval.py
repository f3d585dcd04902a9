"""`twin eval retrieval` / `twin eval compare` on a tiny real project: real store, packaged embedder."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from llmtwin.evaluation.retrieval import evaluate_query
from llmtwin.evaluation.runner import (
    compare_runs,
    evaluate_retrieval,
    load_questions,
    load_run,
    resolve_run,
)

CORPUS = [
    ("quokka", "Quokkas are small marsupials that live on Rottnest Island near Perth. They graze at night."),
    ("tea", "The Japanese tea ceremony, chanoyu, is the ritual preparation of powdered green tea named matcha."),
    ("glacier", "The Aletsch glacier lost three kilometres of length since 1870 because of warming."),
    ("sourdough", "Feed the sourdough starter with equal weights of rye flour and water every twelve hours."),
    ("postgres", "Project Alpha migrates the billing service to PostgreSQL sixteen."),
    ("passkeys", "Project Beta replaces the mobile login screen with passkeys."),
]
QUESTIONS = [
    '{"id": "q1", "question": "Where do quokkas live?", "relevant": ["quokka"]}',
    '{"id": "q2", "question": "What is matcha?", "relevant": {"tea": 2, "sourdough": 0}}',
    '{"id": "q3", "question": "How much did the glacier shrink?", "passage_id": "glacier"}',
    '{"id": "q4", "question": "Which database does billing move to?", "relevant": ["postgres", "passkeys"]}',
    '{"id": "q5", "question": "What about volcanoes?", "relevant": {"tea": 0}}',
    '{"id": "q6", "question": "   ", "relevant": ["quokka"]}',
    '{"id": "q7", "question": "broken',
    '{"question": "no relevance"}',
    '{"id": "q1", "question": "duplicate id", "relevant": ["tea"]}',
    '{"question": "Who uses passkeys?", "relevant": "passkeys"}',
]


@pytest.fixture(scope="module")
def project(tmp_path_factory, embedder):
    from llmtwin import Twin

    root = tmp_path_factory.mktemp("evalproj")
    (root / "corpus.jsonl").write_text("\n".join(json.dumps({"id": i, "text": t}) for i, t in CORPUS) + "\n")
    (root / "questions.jsonl").write_text("\n".join(QUESTIONS) + "\n")
    twin = Twin(root / "proj")
    twin.ingest([root / "corpus.jsonl"])
    return root, twin


def test_load_questions_shapes_and_failures(project):
    root, _ = project
    queries, failures = load_questions(root / "questions.jsonl")
    assert [q.id for q in queries] == ["q1", "q2", "q3", "q4", "q5", "q6", "line10"]
    assert queries[1].qrels == {"tea": 2, "sourdough": 0} and queries[2].qrels == {"glacier": 1}
    assert queries[6].qrels == {"passkeys": 1}
    assert [f["line"] for f in failures] == [7, 8, 9]
    assert "duplicate id" in failures[2]["error"] and "relevant" in failures[1]["error"]


def test_evaluate_retrieval_scores_stores_and_reports(project):
    root, twin = project
    run = evaluate_retrieval(twin, root / "questions.jsonl", ks=(1, 3), resamples=200, run_id="hybrid")
    s = run.summary
    assert run.dir == twin.project.state_dir / "reports" / "hybrid"
    assert s["dataset"]["questions"] == 7 and s["dataset"]["failed_lines"] == 3
    assert s["evaluated"] == 6 and s["no_relevant"] == 1 and s["search_errors"] == 1  # q5 left out; q6 empty
    rows = {r["id"]: r for r in run.rows}
    assert rows["q6"]["retrieved"] == [] and rows["q6"]["metrics"]["recall@3"] == 0.0 and "empty" in rows["q6"]["error"]
    assert not rows["q5"]["included"]
    # every row's metrics are the trec_eval metrics of its stored ranking; the means are of the included rows
    for r in run.rows:
        assert r["metrics"] == pytest.approx(evaluate_query(r["relevant"], r["retrieved"], (1, 3)), abs=1e-6)
    included = [r for r in run.rows if r["included"]]
    for name, m in s["metrics"].items():
        assert m["value"] == pytest.approx(sum(r["metrics"][name] for r in included) / len(included), abs=1e-6)
        assert m["low"] <= m["value"] + 1e-9 and m["value"] <= m["high"] + 1e-9
    assert rows["q1"]["retrieved"][0] == "quokka" and rows["q1"]["first_relevant_rank"] == 1
    # the batched query vectors give the same ranking as searching one question at a time
    single = [h.chunk.doc_id for h in twin.search("Where do quokkas live?", k=9)]
    assert [h[1] for h in rows["q1"]["hits"]] == single[:5]
    # files: results.json, queries.jsonl, a self-contained report.html
    saved = load_run(run.dir)
    assert saved.summary["metrics"] == json.loads(json.dumps(s["metrics"])) and len(saved.rows) == 7
    assert saved.summary["timings"]["total_s"] > 0
    html = (run.dir / "report.html").read_text()
    assert html.count("<svg") >= 5 and "<script" not in html and "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    assert "search error: empty query" in html and "Worst" in html
    worst = {w["id"]: w for w in s["worst"]}
    assert "q6" in worst and all("text" in h for w in s["worst"] for h in w["hits"])
    assert set(s["timings"]["per_query_ms"]) >= {"embed_query (batched)", "dense", "bm25", "fuse", "search (total)"}


def test_compare_runs_pairs_questions(project):
    root, twin = project
    a = evaluate_retrieval(twin, root / "questions.jsonl", ks=(1, 3), resamples=0, run_id="cmp-hybrid", write=False)
    b = evaluate_retrieval(twin, root / "questions.jsonl", ks=(1, 3), mode="bm25", resamples=0, run_id="cmp-bm25", write=False)
    same = compare_runs(a, a, resamples=500)
    assert same["paired"] == 6 and all(t["delta"] == 0 and t["p_value"] == 1.0 for t in same["metrics"].values())
    diff = compare_runs(a, b, method="permutation", resamples=500)
    for name, t in diff["metrics"].items():
        assert t["delta"] == pytest.approx(b.metrics[name]["value"] - a.metrics[name]["value"], abs=1e-9)
        assert 0 < t["p_value"] <= 1
    b.rows = b.rows[:3]
    assert compare_runs(a, b, resamples=100)["only_a"] == 3


def test_cli_eval_retrieval_and_compare(project, twin_cli):
    root, twin = project
    proj = twin.project.root
    out = twin_cli("--project", proj, "eval", "retrieval", root / "questions.jsonl", "--run-id", "cli",
                   "--mode", "bm25", "--ks", "1,5", "--resamples", "100", check=True).stdout
    assert "6 questions evaluated (1 without relevant documents left out, 1 search errors, 3 unusable lines)" in out
    assert "ndcg" in out and (proj / ".twin/reports/cli/report.html").is_file()
    assert json.loads((proj / ".twin/reports/cli/results.json").read_text())["ks"] == [1, 5]
    shutil.copytree(proj / ".twin/reports/cli", root / "copy")
    out = twin_cli("--project", proj, "eval", "compare", "cli", root / "copy", "--resamples", "200", check=True).stdout
    assert "6 paired questions" in out and "ndcg@5" in out and "+0.0000" in out
    bad = twin_cli("--project", proj, "eval", "compare", "nope", "cli")
    assert bad.returncode == 2 and "no evaluation run 'nope'" in bad.stderr
    assert resolve_run("cl", proj / ".twin/reports").name == "cli"  # a unique prefix


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium: the report is not rendered")
def test_report_renders_in_headless_chromium(project, tmp_path):
    root, twin = project
    run = evaluate_retrieval(twin, root / "questions.jsonl", resamples=50, run_id="render")
    shot = tmp_path / "report.png"
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,1600",
         f"--screenshot={shot}", (run.dir / "report.html").as_uri()],
        capture_output=True, timeout=120, check=True,
    )
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 30_000  # a page with charts, not a blank one
