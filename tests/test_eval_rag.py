"""`twin eval generate` and `twin eval rag` end to end on a tiny project (real models, real store)."""

from __future__ import annotations

import json

import pytest

from llmtwin.api import Twin
from llmtwin.config import LLMConfig
from llmtwin.evaluation.judge import Judge, judge_agreement, save_agreement
from llmtwin.evaluation.rag_eval import evaluate_rag
from llmtwin.evaluation.testset import generate_testset
from llmtwin.project import init_project

DOCS = {
    "quokka.md": "# Quokkas\n\nQuokkas are small marsupials that live on Rottnest Island near Perth in Western Australia. "
    "They eat grasses, leaves and stems, and they can survive for long periods without drinking water.\n",
    "matcha.md": "# Matcha\n\nMatcha is a finely ground powder of green tea leaves grown in the shade, made in Japan. "
    "It is whisked with hot water in a bowl and is used in the Japanese tea ceremony.\n",
}


def _project(tmp_path):
    project = init_project(tmp_path / "proj")
    for name, text in DOCS.items():
        (tmp_path / name).write_text(text)
    twin = Twin(project)
    cfg = twin.config.model_copy(deep=True)
    cfg.llm = LLMConfig(max_new_tokens=32)
    cfg.retrieval.k = 2
    cfg.evaluation.resamples = 200
    twin = Twin(project, config=cfg)
    twin.ingest([tmp_path / name for name in DOCS])
    return twin


@pytest.mark.model
def test_generate_and_eval_rag(tmp_path):
    twin = _project(tmp_path)
    out = tmp_path / "generated.jsonl"
    _items, report = generate_testset(twin, 1, out=out, max_tries=1)
    assert report.tried >= 1 and report.kept + sum(report.rejected.values()) == report.tried
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == report.kept
    for row in lines:  # what the filters promise: a question, a gold chunk of the store
        assert row["question"].endswith("?") and row["chunk_ids"] and row["relevant"][0] in {"quokka.md", "matcha.md"}

    # the judge's measured agreement, cached where the rag report finds it
    judge = Judge(twin.llm)
    pair = {"id": "p", "prompt": "What do quokkas eat?", "chosen": "Grasses and leaves.", "rejected": "Hamburgers."}
    save_agreement(judge_agreement(judge, [pair]), twin.project.state_dir / "reports")

    data = tmp_path / "qa.jsonl"
    data.write_text(
        json.dumps({"id": "a1", "question": "Where do quokkas live?", "answer": "Rottnest Island", "relevant": ["quokka.md"]}) + "\n"
        + json.dumps({"id": "u1", "question": "Who won the 1990 football world cup?", "answer": None}) + "\n"
        + "not json\n"
    )
    s = evaluate_rag(twin, data, triad="llm", run_id="t-rag")
    assert s["dataset"] == {**s["dataset"], "questions": 2, "answerable": 1, "unanswerable": 1, "failed_lines": 1}
    assert s["triad_methods"] == {"context_relevance": "llm", "groundedness": "llm", "answer_relevance": "llm"}
    assert s["judge_agreement"]["pairs"] == 1 and "position_consistency" in s["judge_agreement"]
    m = s["metrics"]
    assert m["context_hit"]["n"] == 1 and m["f1"]["n"] == 1 and m["abstention"]["n"] == 1
    assert 0.0 <= m["context_relevance"]["value"] <= 1.0 and m["context_relevance"]["n"] == 2
    assert set(s["timings"]["per_question_ms"]) >= {"search", "generate", "judge", "total"}
    run = twin.project.state_dir / "reports" / "t-rag"
    html = (run / "report.html").read_text()
    assert "Judge trust" in html and "position consistency" in html and "<svg" in html and "Worst" in html
    rows = [json.loads(line) for line in (run / "queries.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a1", "u1"] and all(r["context"] for r in rows)


def test_cli_eval_judge_bad_file(tmp_path, twin_cli):
    init_project(tmp_path)
    bad = tmp_path / "pairs.jsonl"
    bad.write_text('{"prompt": "hi", "chosen": "hello"}\n')
    proc = twin_cli("eval", "judge", "--pairs", str(bad), cwd=tmp_path)
    assert proc.returncode == 2
    assert "no usable pair" in proc.stderr and "rejected" in proc.stderr and "line 1" in proc.stderr
