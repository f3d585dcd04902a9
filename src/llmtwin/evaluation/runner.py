"""Evaluation runs: the project's search on a question set, scored with trec_eval conventions and
bootstrap CIs, stored under `.twin/reports/<run_id>/` (results.json, queries.jsonl, report.html);
and the paired comparison of two stored runs.

Dataset: JSONL, one question per line: {"id", "question", "relevant": [doc ids] | {doc_id: grade}}
(also "passage_id" / "doc_id": an id or a list, the disfl_qa shape; "query" for "question").
A bad line is reported with its reason and the rest goes on.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmtwin.errors import TwinError
from llmtwin.evaluation.retrieval import (
    evaluate_query,
    first_relevant_rank,
    has_relevant,
    rank_run,
)
from llmtwin.evaluation.stats import bootstrap_means, paired_tests

RESULTS_FILE = "results.json"
QUERIES_FILE = "queries.jsonl"
REPORT_FILE = "report.html"
CONTEXT_HITS = 5  # chunk hits kept per query (the worst examples show their text)


@dataclass
class Query:
    id: str
    question: str
    qrels: dict[str, int]


@dataclass
class EvalRun:
    run_id: str
    dir: Path | None
    summary: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def metrics(self) -> dict[str, dict[str, float]]:
        return self.summary["metrics"]


def load_questions(path: Path) -> tuple[list[Query], list[dict[str, Any]]]:
    """Questions with their relevance judgements, and the lines that could not be used (with why)."""
    if not path.is_file():
        raise TwinError(f"{path}: no such file")
    queries: list[Query] = []
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
                query = _parse_row(row, line_no)
            except ValueError as e:  # json.JSONDecodeError is a ValueError
                failures.append({"line": line_no, "error": str(e)})
                continue
            if query.id in seen:
                failures.append({"line": line_no, "error": f"duplicate id {query.id!r}"})
                continue
            seen.add(query.id)
            queries.append(query)
    return queries, failures


def _parse_row(row: dict[str, Any], line_no: int) -> Query:
    question = row.get("question", row.get("query"))
    if not isinstance(question, str):
        raise ValueError("no 'question' (a string)")
    rel = row.get("relevant")
    if rel is None:
        rel = row.get("passage_id", row.get("doc_id"))
    if rel is None:
        raise ValueError("no 'relevant' (doc ids or {doc_id: grade}) nor 'passage_id'")
    if isinstance(rel, str):
        qrels = {rel: 1}
    elif isinstance(rel, list):
        qrels = {str(d): 1 for d in rel}
    elif isinstance(rel, dict):
        try:
            qrels = {str(d): int(g) for d, g in rel.items()}
        except (TypeError, ValueError):
            raise ValueError("'relevant' grades must be integers") from None
    else:
        raise ValueError("'relevant' must be a list of doc ids or {doc_id: grade}")
    qid = row.get("id", row.get("query_id"))
    return Query(str(qid) if qid is not None else f"line{line_no}", question, qrels)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else 0.0


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def reports_dir(twin) -> Path:
    return twin.project.state_dir / "reports"


def evaluate_retrieval(
    twin,
    dataset: str | Path,
    *,
    ks: tuple[int, ...] | None = None,
    mode: str | None = None,
    depth: int | None = None,
    limit: int | None = None,
    resamples: int | None = None,
    confidence: float | None = None,
    worst: int | None = None,
    run_id: str | None = None,
    write: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> EvalRun:
    """Search every question (query vectors embedded in one batch), rank documents (a document
    scores its best chunk; trec_eval order), score, and store the run. Returns the run."""
    cfg = twin.config.evaluation
    ks = tuple(sorted(set(ks or cfg.ks)))
    mode = mode or twin.config.retrieval.mode
    depth = depth or cfg.depth_factor * max(ks)  # chunks fetched: several chunks may share a document
    resamples = cfg.resamples if resamples is None else resamples
    confidence = confidence or cfg.confidence
    worst = cfg.worst if worst is None else worst
    path = Path(dataset)
    started = time.perf_counter()
    queries, failures = load_questions(path)
    if limit:
        queries = queries[:limit]
    if not queries:
        raise TwinError(f"{path}: no usable question" + (f" ({failures[0]['error']} on line {failures[0]['line']})" if failures else ""))

    # -- search (the system under test) --------------------------------------------------------
    t = time.perf_counter()
    store = twin._checked_store()  # loads the embedder (once per process)
    embedder = twin.embedder
    emb = twin.config.embedder
    setup_s = time.perf_counter() - t
    t = time.perf_counter()
    vectors = None
    # embed_passages == embed_query with the query prefix; not where a trained adapter or query
    # encoder applies (a given vector is searched as is): search_explain embeds those one by one
    if mode != "bm25" and not emb.passage_prefix and twin.plain_queries():
        from llmtwin.retrieval.disfluency import searched_question

        searched = twin.retrieval_config()
        texts = [emb.query_prefix + searched_question(q.question, searched) for q in queries]
        vectors = embedder.embed_passages(texts) if texts else None
    embed_s = time.perf_counter() - t
    rows: list[dict[str, Any]] = []
    stage_times: dict[str, list[float]] = {}
    search_times: list[float] = []
    t_search = time.perf_counter()
    for i, q in enumerate(queries):
        row: dict[str, Any] = {"id": q.id, "question": q.question, "relevant": q.qrels}
        t = time.perf_counter()
        try:
            result = twin.search_explain(
                q.question, k=depth, mode=mode, query_vector=vectors[i] if vectors is not None else None,
                first_stages=False,
            )
            hits = result.hits
            row["timings"] = {k: round(v, 6) for k, v in result.timings.items()}
            for name, seconds in result.timings.items():
                stage_times.setdefault(name, []).append(seconds)
        except TwinError as e:  # e.g. an empty question: it retrieves nothing
            hits = []
            row["error"] = str(e)
            row["timings"] = {}
        search_times.append(time.perf_counter() - t)
        run: dict[str, float] = {}
        for h in hits:  # hits are best first: a document keeps its best chunk's score
            run.setdefault(h.chunk.doc_id, float(h.score))
        row["run"] = run
        row["hits"] = [[h.chunk.chunk_id, h.chunk.doc_id, round(float(h.score), 6)] for h in hits[:CONTEXT_HITS]]
        rows.append(row)
        if progress:
            progress(i + 1, len(queries))
    search_s = time.perf_counter() - t_search

    # -- metrics -------------------------------------------------------------------------------
    t_metrics = time.perf_counter()
    max_k = max(ks)
    for row in rows:
        ranked = rank_run(row.pop("run"))[:max_k]  # the evaluated run: top max_k documents
        row["retrieved"] = ranked
        row["included"] = has_relevant(row["relevant"])
        row["first_relevant_rank"] = first_relevant_rank(ranked, row["relevant"])
        row["metrics"] = {k: round(v, 6) for k, v in evaluate_query(row["relevant"], ranked, ks).items()}
    included = [r for r in rows if r["included"]]
    names = list(rows[0]["metrics"])
    columns = {n: [r["metrics"][n] for r in included] for n in names}
    intervals = bootstrap_means(columns, resamples=resamples, confidence=confidence, seed=twin.config.seed)
    metrics_s = time.perf_counter() - t_metrics

    run_id = run_id or time.strftime("%Y%m%d-%H%M%S-retrieval-") + uuid.uuid4().hex[:6]
    summary: dict[str, Any] = {
        "run_id": run_id,
        "kind": "retrieval",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "dataset": {"path": str(path.resolve()), "sha256": _file_sha256(path), "questions": len(queries),
                    "failed_lines": len(failures)},
        "project": str(twin.project.root),
        "store_version": store.current_version(),
        "models": {"embedder": embedder.name},
        "config_hash": twin.config_hash(),
        "mode": mode,
        "ks": list(ks),
        "depth_chunks": depth,
        "evaluated": len(included),
        "no_relevant": len(rows) - len(included),
        "search_errors": sum(1 for r in rows if "error" in r),
        "conventions": "trec_eval: linear gain, ties by doc id descending, relevant = grade >= 1; "
        "questions with no relevant document are left out of the means; a search error counts as an empty run",
        "metrics": {n: iv.to_dict() for n, iv in intervals.items()},
        "first_relevant_rank": _rank_histogram(included, max_k),
        "timings": {
            "load_models_s": round(setup_s, 3),
            "embed_queries_s": round(embed_s, 3),
            "search_s": round(search_s, 3),
            "metrics_s": round(metrics_s, 3),
            "per_query_ms": {},
        },
        "failures": failures[:100],
    }
    per_query = summary["timings"]["per_query_ms"]
    if vectors is not None:  # amortised: one batch for all questions
        per_q = round(embed_s / len(queries) * 1000, 3)
        per_query["embed_query (batched)"] = {"mean": per_q, "p50": per_q, "p95": per_q}
    for name, v in {**stage_times, "search (total)": search_times}.items():
        if v:
            per_query[name] = {"mean": round(statistics.fmean(v) * 1000, 3), "p50": round(_percentile(v, 0.5) * 1000, 3),
                               "p95": round(_percentile(v, 0.95) * 1000, 3)}
    summary["worst"] = _worst_examples(store, included, worst, max_k)
    result = EvalRun(run_id, None, summary, rows)
    if write:
        t = time.perf_counter()
        out = reports_dir(twin) / run_id
        write_run(result, out)
        summary["timings"]["report_s"] = round(time.perf_counter() - t, 3)
    summary["timings"]["total_s"] = round(time.perf_counter() - started, 3)
    if result.dir:
        (result.dir / RESULTS_FILE).write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    return result


def _rank_histogram(rows: list[dict[str, Any]], max_k: int) -> dict[str, int]:
    hist = {str(r): 0 for r in range(1, max_k + 1)}
    hist["miss"] = 0
    for row in rows:
        rank = row["first_relevant_rank"]
        hist[str(rank) if rank else "miss"] += 1
    return hist


def _worst_examples(store, rows: list[dict[str, Any]], n: int, max_k: int) -> list[dict[str, Any]]:
    """The n questions with the lowest nDCG@max_k (then MRR, then id), with their retrieved chunks' text."""
    key = f"ndcg@{max_k}"
    imperfect = [r for r in rows if r["metrics"][key] < 1.0]
    chosen = sorted(imperfect, key=lambda r: (r["metrics"][key], r["metrics"]["mrr"], r["id"]))[:n]
    chunk_ids = sorted({h[0] for r in chosen for h in r["hits"]})
    texts = {c.chunk_id: c for c in store.get_chunks(chunk_ids)} if chunk_ids else {}
    out = []
    for r in chosen:
        hits = []
        for rank, (chunk_id, doc_id, score) in enumerate(r["hits"], start=1):
            chunk = texts.get(chunk_id)
            hits.append(
                {"rank": rank, "chunk_id": chunk_id, "doc_id": doc_id, "score": score,
                 "relevant": r["relevant"].get(doc_id, 0), "source": chunk.source if chunk else "",
                 "text": chunk.text[:600] if chunk else ""}
            )
        out.append({"id": r["id"], "question": r["question"], "relevant": r["relevant"], "error": r.get("error"),
                     "metrics": r["metrics"], "first_relevant_rank": r["first_relevant_rank"], "hits": hits})
    return out


def write_run(run: EvalRun, out: Path) -> None:
    from llmtwin.evaluation.report import render_report

    out.mkdir(parents=True, exist_ok=True)
    run.dir = out
    with (out / QUERIES_FILE).open("w", encoding="utf-8") as f:
        for row in run.rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    (out / REPORT_FILE).write_text(render_report(run.summary, run.rows), encoding="utf-8")
    (out / RESULTS_FILE).write_text(json.dumps(run.summary, indent=2, ensure_ascii=False), encoding="utf-8")


def resolve_run(ref: str | Path, reports: Path | None) -> Path:
    """A run's folder from its path or its id (under the project's .twin/reports/)."""
    path = Path(ref)
    if (path / RESULTS_FILE).is_file():
        return path
    if path.name == RESULTS_FILE and path.is_file():
        return path.parent
    if reports is not None:
        if (reports / str(ref) / RESULTS_FILE).is_file():
            return reports / str(ref)
        matches = sorted(p for p in reports.glob(f"{ref}*") if (p / RESULTS_FILE).is_file()) if reports.is_dir() else []
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise TwinError(f"run {ref!r} is ambiguous: {', '.join(p.name for p in matches[:5])}")
    raise TwinError(f"no evaluation run {ref!r}" + (f" (looked in {reports})" if reports else ""))


def load_run(directory: Path) -> EvalRun:
    summary = json.loads((directory / RESULTS_FILE).read_text(encoding="utf-8"))
    rows = []
    queries = directory / QUERIES_FILE
    if queries.is_file():
        with queries.open(encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    return EvalRun(summary["run_id"], directory, summary, rows)


def compare_runs(
    a: EvalRun, b: EvalRun, *, method: str = "bootstrap", resamples: int = 10000, confidence: float = 0.95, seed: int = 0
) -> dict[str, Any]:
    """Per metric: mean of A and B on the questions both evaluated, delta (B − A), its CI and the
    paired p-value (bootstrap or permutation)."""
    rows_a = {r["id"]: r for r in a.rows if r.get("included", True)}
    rows_b = {r["id"]: r for r in b.rows if r.get("included", True)}
    common = sorted(set(rows_a) & set(rows_b))
    names = [n for n in rows_a[common[0]]["metrics"] if n in rows_b[common[0]]["metrics"]] if common else []
    tests = paired_tests(
        {n: [rows_a[q]["metrics"][n] for q in common] for n in names},
        {n: [rows_b[q]["metrics"][n] for q in common] for n in names},
        method=method, resamples=resamples, confidence=confidence, seed=seed,
    )
    return {
        "a": a.run_id, "b": b.run_id, "paired": len(common),
        "only_a": len(set(rows_a) - set(rows_b)), "only_b": len(set(rows_b) - set(rows_a)),
        "method": method, "resamples": resamples, "metrics": {n: t.to_dict() for n, t in tests.items()},
    }
