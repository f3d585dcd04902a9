"""`twin eval rag`: the whole RAG pipeline (`Twin.ask`) on a question set, end to end.

Dataset: JSONL, one question per line: {"id", "question", "answer", "relevant" | "passage_id"}.
- "answer" a string: an answerable question (EM, token F1 and "contains" are computed);
- "answer": null: an unanswerable question (the right behaviour is to abstain);
- no "answer" key: only the triad and retrieval are computed (e.g. a user's own questions);
- "relevant" / "passage_id" (doc ids; optional): the gold documents, for hit@k and MRR of the context.
`twin eval generate` writes this shape from the project's own chunks.

Per question: the answer, its retrieved context, the RAG triad (evaluation/triad.py), latency per
stage (the trace's timings plus the judge's time). The run is stored under `.twin/reports/<run_id>/`
(results.json, queries.jsonl, report.html). The judge's measured agreement on labelled pairs (the
newest `twin eval judge` result for the same judge) is put next to its scores, or stated missing.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmtwin.errors import TwinError
from llmtwin.evaluation.qa import exact_match, normalize_answer, token_f1

_MARKERS = re.compile(r"\s*\[\d+(?:\s*,\s*\d+)*\]")
CONVENTIONS = (
    "EM/F1/contains on answerable questions (an abstention scores 0; citation markers removed; SQuAD "
    "normalisation); abstention rate on unanswerable questions (abstaining is right); groundedness is "
    "undefined (left out of its mean, counted as no_claims) for an answer without claims and for an "
    "abstention; answer relevance of an abstention is undefined, of an empty answer 0; context "
    "relevance with nothing retrieved is 0"
)


@dataclass
class RagQuestion:
    id: str
    question: str
    answer: str | None
    answerable: bool | None  # None: unknown (no "answer" key)
    relevant: list[str]


def load_rag_questions(path: Path) -> tuple[list[RagQuestion], list[dict[str, Any]]]:
    if not path.is_file():
        raise TwinError(f"{path}: no such file")
    out: list[RagQuestion] = []
    failures: list[dict[str, Any]] = []
    seen: set[str] = set()
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError("expected a JSON object")
                question = row.get("question", row.get("query"))
                if not isinstance(question, str) or not question.strip():
                    raise ValueError("no 'question' (a non-empty string)")
                answer = row.get("answer")
                if "answer" in row and answer is not None and not isinstance(answer, str):
                    raise ValueError("'answer' must be a string or null")
                rel = row.get("relevant", row.get("passage_id", row.get("doc_id", [])))
                rel = [rel] if isinstance(rel, str) else list(rel) if isinstance(rel, (list, dict)) else []
            except ValueError as e:
                failures.append({"line": line_no, "error": str(e)})
                continue
            qid = str(row.get("id", f"line{line_no}"))
            if qid in seen:
                failures.append({"line": line_no, "error": f"duplicate id {qid!r}"})
                continue
            seen.add(qid)
            answerable = None if "answer" not in row else answer is not None
            out.append(RagQuestion(qid, question, answer, answerable, [str(d) for d in rel]))
    return out, failures


def _ms_stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]
    return {"mean": round(statistics.fmean(values) * 1000, 2), "p50": round(pick(0.5) * 1000, 2),
            "p95": round(pick(0.95) * 1000, 2), "n": len(values)}


def evaluate_rag(
    twin,
    dataset: str | Path,
    *,
    limit: int | None = None,
    triad: str | None = None,
    run_id: str | None = None,
    write: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Ask every question, score it, store the run; returns the summary (with "dir" when written)."""
    from llmtwin.evaluation.judge import build_judge, latest_agreement
    from llmtwin.evaluation.runner import reports_dir
    from llmtwin.evaluation.stats import bootstrap_means
    from llmtwin.evaluation.triad import TriadScorer

    cfg = twin.config.evaluation
    path = Path(dataset)
    questions, failures = load_rag_questions(path)
    if limit:
        questions = questions[:limit]
    if not questions:
        raise TwinError(f"{path}: no usable question" + (f" ({failures[0]['error']} on line {failures[0]['line']})" if failures else ""))
    method = triad or cfg.triad_method
    if method not in ("llm", "fallback"):
        raise TwinError(f"--triad {method!r}: expected llm or fallback")
    started = time.perf_counter()
    judge = build_judge(twin.config) if method == "llm" else None
    scorer = TriadScorer(judge, twin.embedder.embed_passages, claim_support=cfg.claim_support,
                         max_claims=cfg.max_claims, abstain_text=twin.config.generation.abstain_text)
    k = twin.config.retrieval.k
    rows: list[dict[str, Any]] = []
    stage_times: dict[str, list[float]] = {}
    for i, q in enumerate(questions):
        row: dict[str, Any] = {"id": q.id, "question": q.question, "gold": q.answer, "answerable": q.answerable,
                               "relevant": q.relevant}
        try:
            answer = twin.ask(q.question)
        except TwinError as e:  # a bad question or a generation failure: recorded, the batch goes on
            row["error"] = str(e)
            rows.append(row)
            continue
        text = answer.answer
        contexts = [h.chunk.text for h in answer.hits]
        t = time.perf_counter()
        scores = scorer.score(q.question, text, contexts)
        judge_s = time.perf_counter() - t
        timings = dict(answer.timings)
        timings["judge"] = round(judge_s, 4)
        for name in ("search", "llm_load", "generate", "judge", "total"):
            if name in timings:
                stage_times.setdefault(name, []).append(float(timings[name]))
        doc_ids = [h.chunk.doc_id for h in answer.hits]
        rank = next((r for r, d in enumerate(doc_ids, start=1) if d in set(q.relevant)), None)
        plain = _MARKERS.sub("", text).strip()
        row.update({
            "answer": text, "abstained": bool(answer.abstained or scores.abstained), "trace_id": answer.trace_id,
            "context": [{"rank": r, "chunk_id": h.chunk.chunk_id, "doc_id": h.chunk.doc_id, "source": h.chunk.source,
                         "relevant": h.chunk.doc_id in set(q.relevant), "text": h.chunk.text[:600]}
                        for r, h in enumerate(answer.hits, start=1)],
            "triad": scores.to_dict(), "timings": timings,
        })
        m: dict[str, float] = {}
        if q.relevant:
            m["context_hit"] = float(rank is not None)
            m["context_mrr"] = 1.0 / rank if rank else 0.0
        if q.answerable:
            scored = "" if row["abstained"] else plain
            m["em"] = exact_match(scored, q.answer or "")
            m["f1"] = token_f1(scored, q.answer or "")
            m["contains"] = float(bool(scored) and normalize_answer(q.answer or "") in normalize_answer(scored))
            m["false_abstention"] = float(row["abstained"])
        elif q.answerable is False:
            m["abstention"] = float(row["abstained"])
        for name in ("context_relevance", "groundedness", "answer_relevance"):
            v = getattr(scores, name)
            if not math.isnan(v):
                m[name] = v
        row["metrics"] = {n: round(v, 4) for n, v in m.items()}
        rows.append(row)
        if progress:
            progress(i + 1, len(questions))

    names = sorted({n for r in rows for n in r.get("metrics", {})})
    metrics = {}
    for name in names:
        values = [r["metrics"][name] for r in rows if name in r.get("metrics", {})]
        iv = bootstrap_means({name: values}, resamples=cfg.resamples, confidence=cfg.confidence, seed=twin.config.seed)[name]
        metrics[name] = {**iv.to_dict(), "n": len(values)}
    scored_rows = [r for r in rows if "triad" in r]
    judge_info = judge.describe() if judge else {"method": "fallback (no LLM judge)"}
    agreement = latest_agreement(reports_dir(twin), judge_info) if judge else None
    run_id = run_id or time.strftime("%Y%m%d-%H%M%S-rag-") + uuid.uuid4().hex[:6]
    summary: dict[str, Any] = {
        "run_id": run_id,
        "kind": "rag",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "dataset": {"path": str(path.resolve()), "questions": len(questions), "failed_lines": len(failures),
                    "answerable": sum(q.answerable is True for q in questions),
                    "unanswerable": sum(q.answerable is False for q in questions)},
        "project": str(twin.project.root),
        "store_version": twin.store().current_version(),
        "models": {"llm": twin.llm.name, "embedder": twin.embedder.name},
        "config_hash": twin.config_hash(),
        "retrieval": {"mode": twin.config.retrieval.mode, "k": k},
        "triad_method": method,
        "triad_methods": scored_rows[0]["triad"]["methods"] if scored_rows else {},
        "judge": judge_info,
        "judge_agreement": agreement,
        "judge_agreement_note": None if agreement or not judge else
        "not measured: run `twin eval judge --pairs FILE.jsonl` to measure this judge on labelled pairs",
        "no_claims": sum(1 for r in scored_rows if r["triad"]["no_claims"]),
        "abstained": sum(1 for r in scored_rows if r["abstained"]),
        "judge_failures": sum(r["triad"]["judge_failures"] for r in scored_rows),
        "errors": sum(1 for r in rows if "error" in r),
        "conventions": CONVENTIONS,
        "metrics": metrics,
        "timings": {"per_question_ms": {n: _ms_stats(v) for n, v in stage_times.items() if v},
                    "total_s": round(time.perf_counter() - started, 2)},
        "failures": failures[:100],
    }
    summary["distributions"] = {
        n: [r["metrics"][n] for r in scored_rows if n in r["metrics"]]
        for n in ("context_relevance", "groundedness", "answer_relevance", "f1")
    }
    summary["worst"] = _worst(scored_rows, cfg.worst)
    if write:
        from llmtwin.evaluation.report import render_rag_report

        out = reports_dir(twin) / run_id
        out.mkdir(parents=True, exist_ok=True)
        with (out / "queries.jsonl").open("w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        (out / "results.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
        (out / "report.html").write_text(render_rag_report(summary), encoding="utf-8")
        summary["dir"] = str(out)
    return summary


def _quality(row: dict[str, Any]) -> float:
    """Mean of the row's available answer-quality scores (lower is worse)."""
    m = row["metrics"]
    parts = [m[n] for n in ("f1", "abstention", "groundedness", "answer_relevance", "context_relevance") if n in m]
    return sum(parts) / len(parts) if parts else 0.0


def _worst(rows: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    chosen = sorted(rows, key=lambda r: (_quality(r), r["id"]))[:n]
    return [{k: r[k] for k in ("id", "question", "gold", "answerable", "answer", "abstained", "metrics", "triad", "context")}
            | {"quality": round(_quality(r), 4)} for r in chosen]
