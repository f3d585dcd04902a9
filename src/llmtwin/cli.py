"""`twin`: the command line. Thin: parses, calls the library (api.Twin), prints.

Flags map onto config fields (`-k` → retrieval.k, `--mode` → retrieval.mode, …); any other field
can be set for one run with `--set section.field=value`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(
    name="twin",
    help="llmtwin: turn a folder of documents into an assistant that answers with citations, offline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_state: dict = {"project": None, "set": []}


@app.callback()
def _main(
    project: Optional[Path] = typer.Option(None, "--project", "-p", help="Project directory (default: found upwards from here)."),
    set_: list[str] = typer.Option([], "--set", help="Override a config field for this run, e.g. --set llm.backend=transformers."),
) -> None:
    _state["project"] = project
    _state["set"] = set_


def _twin(overrides: dict[str, object] | None = None):
    from llmtwin.api import Twin
    from llmtwin.config import parse_set, set_field
    from llmtwin.project import find_project

    project = find_project(_state["project"])
    config = project.config
    for item in _state["set"]:
        config = set_field(config, *parse_set(item))
    for key, value in (overrides or {}).items():
        if value is not None:
            config = set_field(config, key, value)
    project.config = config
    return Twin(project)


def _err(text: str) -> None:
    print(text, file=sys.stderr)


@app.command()
def init(directory: Path = typer.Argument(Path("."), help="Where to create the project.")) -> None:
    """Create a project: twin.yaml (configuration) and .twin/ (store, traces, caches)."""
    from llmtwin.project import CONFIG_FILE, init_project

    existed = (directory / CONFIG_FILE).exists()
    project = init_project(directory)
    verb = "Found existing" if existed else "Initialised"
    print(f"{verb} llmtwin project in {project.root} ({CONFIG_FILE}, .twin/)")


@app.command()
def ingest(
    paths: list[Path] = typer.Argument(..., help="Files and folders to ingest."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    strict: bool = typer.Option(False, "--strict", help="Exit 1 if any file or record failed."),
    rebuild: bool = typer.Option(False, "--rebuild", help="Drop the store and embed everything again."),
    chunk_tokens: Optional[int] = typer.Option(None, help="ingest.chunk_tokens"),
    chunk_overlap: Optional[int] = typer.Option(None, help="ingest.chunk_overlap"),
    minhash_threshold: Optional[float] = typer.Option(None, help="ingest.minhash_threshold"),
    sentence_vectors: Optional[bool] = typer.Option(
        None, "--sentence-vectors/--no-sentence-vectors",
        help="ingest.sentence_vectors (default on): embed each chunk's sentences too (better dense search, ~1/3 more ingest time)."),
    follow_symlinks: Optional[bool] = typer.Option(
        None, "--follow-symlinks/--no-follow-symlinks",
        help="ingest.follow_symlinks (default off): read symbolic links that lead out of the folders given."),
    wait: bool = typer.Option(False, "--wait", help="If another ingest is running on this project, wait for it instead of exiting."),
) -> None:
    """Load, clean, dedup, chunk and embed files into the store (incremental, resumable)."""
    twin = _twin(
        {
            "ingest.chunk_tokens": chunk_tokens,
            "ingest.chunk_overlap": chunk_overlap,
            "ingest.minhash_threshold": minhash_threshold,
            "ingest.sentence_vectors": sentence_vectors,
            "ingest.follow_symlinks": follow_symlinks,
        }
    )

    def waiting(holder: str) -> None:
        print(f"waiting for another ingest on this project ({holder})", file=sys.stderr)

    with _progress("Embedding") as progress:
        report = twin.ingest(paths, rebuild=rebuild, progress=progress, wait=None if wait else 0.0, waiting=waiting)
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        _print_ingest(report)
    if strict and report.failed:
        raise typer.Exit(1)


def _print_ingest(report) -> None:
    print(
        f"store version {report.store_version}: {len(report.added)} added, {len(report.updated)} updated, "
        f"{len(report.unchanged)} unchanged, {len(report.deleted)} deleted, "
        f"{len(report.duplicates)} duplicates, {len(report.failed)} failed; "
        f"{report.chunks} chunks written"
        + (f", {report.sentences} sentence vectors" if report.sentences else "")
        + f" in {report.seconds:.1f}s"
    )
    for dup in report.duplicates:
        print(f"  duplicate ({dup.kind}, {dup.similarity:.2f}): {dup.doc_id} ≈ {dup.duplicate_of}")
    for fail in report.failed:
        where = f"{fail.path}:{fail.line}" if fail.line else fail.path
        print(f"  failed: {where}: {fail.error}")
    if report.skipped:
        print(f"  skipped {len(report.skipped)} file(s) of unsupported types, e.g. {report.skipped[0]}")
    for item in report.ignored:
        print(f"  ignored: {item.path}: {item.error}")
    if report.repaired:
        print(f"  repaired {len(report.repaired)} document(s) with damaged rows (re-chunked from their files)")


@app.command()
def doctor(
    check_only: bool = typer.Option(False, "--check", help="Only report; repair nothing."),
    as_json: bool = typer.Option(False, "--json", help="Print the check as JSON."),
    wait: bool = typer.Option(False, "--wait", help="Wait for a running ingest instead of exiting."),
) -> None:
    """Check the store for duplicated rows, wrong chunk counts and orphan rows, and repair them.

    Exits 1 when --check finds damage."""
    result = _twin().doctor(repair=not check_only, wait=None if wait else 0.0)
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        ok = result["ok"]
        print(
            f"{'ok' if ok else 'damaged'}: {result['documents']} documents, {result['chunks']} chunks, "
            f"{result['versions']} store versions"
        )
        for key in ("duplicate_records", "count_mismatch"):
            if result[key]:
                print(f"  {key.replace('_', ' ')}: {len(result[key])} ({', '.join(result[key][:5])}{' …' if len(result[key]) > 5 else ''})")
        for key in ("duplicate_chunks", "duplicate_sections", "duplicate_sentences", "orphan_chunks", "orphan_sections", "orphan_sentences"):
            if result[key]:
                print(f"  {key.replace('_', ' ')}: {result[key]} row(s)")
        if result["repaired"]:
            print(f"  repaired {len(result['repaired'])} document(s): duplicates removed; the next ingest re-chunks them")
        if result["orphans_deleted"]:
            print(f"  deleted {result['orphans_deleted']} orphan row(s)")
    if check_only and not result["ok"]:
        raise typer.Exit(1)


class _progress:
    """A rich progress bar on stderr, fed by (done, total) callbacks."""

    def __init__(self, label: str):
        self.label = label

    def __enter__(self):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        console = Console(stderr=True)
        self.bar = Progress(
            f"[bold]{self.label}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            console=console, transient=True, disable=not console.is_terminal,
        )
        self.bar.__enter__()
        self.task = self.bar.add_task(self.label, total=None)
        return self.update

    def update(self, done: int, total: int) -> None:
        self.bar.update(self.task, completed=done, total=total or None)

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)


@app.command()
def search(
    query: str = typer.Argument(..., help="What to look for."),
    k: Optional[int] = typer.Option(None, "-k", help="retrieval.k: number of results."),
    mode: Optional[str] = typer.Option(None, "--mode", help="retrieval.mode: hybrid, dense or bm25."),
    filters: list[str] = typer.Option([], "--filter", help="KEY=VALUE: source (glob), file_type, doc_id or a metadata key."),
    as_json: bool = typer.Option(False, "--json", help="Print results as JSON."),
    explain: bool = typer.Option(False, "--explain", help="Show every stage's hits, scores and time."),
    fetch_k: Optional[int] = typer.Option(None, "--fetch-k", help="retrieval.fetch_k: candidates for merge / MMR."),
    merge: Optional[bool] = typer.Option(None, "--merge/--no-merge", help="retrieval.merge: auto-merge chunks into sections."),
    rerank: Optional[bool] = typer.Option(None, "--rerank/--no-rerank", help="retrieval.rerank on/off (default auto: the trained reranker if any)."),
    rerank_top_n: Optional[int] = typer.Option(None, "--rerank-top-n", help="retrieval.rerank_top_n"),
    mmr: Optional[bool] = typer.Option(None, "--mmr/--no-mmr", help="retrieval.mmr: maximal marginal relevance."),
    mmr_lambda: Optional[float] = typer.Option(None, "--mmr-lambda", help="retrieval.mmr_lambda (1 = relevance only)."),
    window: Optional[int] = typer.Option(None, "--window", help="retrieval.window: sentences each side of the best sentence."),
    compress: Optional[int] = typer.Option(None, "--compress", help="retrieval.compress_tokens: context budget (0 = off)."),
    transform: list[str] = typer.Option([], "--transform", help="retrieval.transforms (repeatable): rewrite, decompose, multi_query, hyde, step_back."),
    route: Optional[str] = typer.Option(None, "--route", help="retrieval.route: off, embedding or llm (over retrieval.collections)."),
    self_query: Optional[bool] = typer.Option(None, "--self-query/--no-self-query", help="retrieval.self_query: LLM-proposed filters."),
    repair: Optional[bool] = typer.Option(None, "--repair/--no-repair", help="retrieval.repair: drop self-corrections and filled pauses from the question by rule."),
    llm_rerank: Optional[str] = typer.Option(None, "--llm-rerank", help="retrieval.llm_rerank: off, pointwise or listwise."),
    sentences: Optional[bool] = typer.Option(None, "--sentences/--no-sentences", help="retrieval.sentences: dense scores a chunk by its best sentence too (where the store has sentence vectors)."),
) -> None:
    """Search the store (hybrid dense + BM25 by default), then the configured post-retrieval stages."""
    twin = _twin({
        "retrieval.k": k, "retrieval.mode": mode, "retrieval.sentences": sentences,
        **_stage_flags(fetch_k, merge, rerank, rerank_top_n, mmr, mmr_lambda, window, compress),
        **_before_flags(transform, route, self_query, llm_rerank, repair),
    })
    result = twin.search_explain(query, filters=filters)
    if as_json:
        out = [h.to_dict(rank=i) for i, h in enumerate(result.hits, start=1)]
        if explain:
            from llmtwin.trace import hits_record

            out = {
                "hits": out,
                "stages": {n: hits_record(s[: len(result.hits) * 2]) for n, s in result.stages.items()},
                "timings": result.timings,
                "where": result.where,
                "pipeline": result.pipeline,
                "transforms": result.transforms,
            }
        print(json.dumps(out, indent=2, ensure_ascii=False))
        return
    if explain:
        print("── pipeline: " + " → ".join(result.pipeline))
        for record in result.transforms:
            _print_before(record)
        for name, stage in result.stages.items():
            ms = result.timings.get(name, 0.0) * 1000
            print(f"── {name} ({len(stage)} hits, {ms:.1f} ms)")
            for rank, hit in enumerate(stage[:10], start=1):
                print(f"  {rank:2d}. {hit.score:.4f}  {hit.chunk.source}#{hit.chunk.index}")
        print("── timings: " + ", ".join(f"{n} {v * 1000:.1f} ms" for n, v in result.timings.items()))
    if not result.hits:
        print("no results")
    for rank, hit in enumerate(result.hits, start=1):
        from llmtwin.generation.prompt import source_label

        text = " ".join(hit.chunk.text.split())
        print(f"{rank}. [{hit.score:.4f}] {source_label(hit)}")
        print(f"   {text[:240]}{'…' if len(text) > 240 else ''}")


def _print_before(record: dict) -> None:
    """One line (or a few) per pre-retrieval stage of `search --explain`: what it decided, and why."""
    name, ms = record["name"], record.get("seconds", 0.0) * 1000
    if name == "route":
        scores = ", ".join(f"{n} {v:.3f}" for n, v in record["scores"].items())
        print(f"── route ({record['method']}, {ms:.0f} ms): {record['collection'] or 'all'} — {record['reason']}"
              + (f" [{scores}]" if scores else ""))
    elif name == "self_query":
        print(f"── self_query ({ms:.0f} ms): query {record['query']!r}, filters {record['filters']}"
              + (f" — {record['note']}" if record["note"] else ""))
        for d in record["dropped"]:
            print(f"     dropped {d['field']}={d['value']}: {d['reason']}")
    elif name == "llm_rerank":
        print(f"── llm_rerank replies: {record['replies']}")
    elif name == "repair":
        print(f"── repair: searched {record['query']!r}; removed " + ", ".join(repr(r) for r in record["removed"]))
    else:
        print(f"── {name} ({ms:.0f} ms): " + ("fell back to the question: " + record["fallback"] if record["fallback"]
                                          else "; ".join(f"{q['text']!r} ×{q['weight']:.2f}" for q in record["queries"])))


def _before_flags(transform, route, self_query, llm_rerank, repair) -> dict:
    """Pre-retrieval and LLM-rerank flags → retrieval.* overrides (None: keep twin.yaml's)."""
    return {
        "retrieval.repair": repair,
        "retrieval.transforms": list(transform) or None,
        "retrieval.route": route,
        "retrieval.self_query": self_query,
        "retrieval.llm_rerank": llm_rerank,
    }


def _stage_flags(fetch_k, merge, rerank, rerank_top_n, mmr, mmr_lambda, window, compress) -> dict:
    """Post-retrieval flags → retrieval.* overrides (None: keep twin.yaml's)."""
    return {
        "retrieval.fetch_k": fetch_k,
        "retrieval.merge": merge,
        "retrieval.rerank": None if rerank is None else ("on" if rerank else "off"),
        "retrieval.rerank_top_n": rerank_top_n,
        "retrieval.mmr": mmr,
        "retrieval.mmr_lambda": mmr_lambda,
        "retrieval.window": window,
        "retrieval.compress_tokens": compress,
    }


@app.command()
def ask(
    question: str = typer.Argument(..., help="Your question."),
    k: Optional[int] = typer.Option(None, "-k", help="retrieval.k: chunks to retrieve."),
    mode: Optional[str] = typer.Option(None, "--mode", help="retrieval.mode"),
    filters: list[str] = typer.Option([], "--filter", help="KEY=VALUE, as for search."),
    max_new_tokens: Optional[int] = typer.Option(None, help="llm.max_new_tokens"),
    model: Optional[str] = typer.Option(None, "--model", help="Answer with a registered model: NAME@ALIAS, NAME/VERSION or NAME."),
    as_json: bool = typer.Option(False, "--json", help="Print the answer as JSON (no streaming)."),
    fetch_k: Optional[int] = typer.Option(None, "--fetch-k", help="retrieval.fetch_k"),
    merge: Optional[bool] = typer.Option(None, "--merge/--no-merge", help="retrieval.merge"),
    rerank: Optional[bool] = typer.Option(None, "--rerank/--no-rerank", help="retrieval.rerank on/off"),
    rerank_top_n: Optional[int] = typer.Option(None, "--rerank-top-n", help="retrieval.rerank_top_n"),
    mmr: Optional[bool] = typer.Option(None, "--mmr/--no-mmr", help="retrieval.mmr"),
    mmr_lambda: Optional[float] = typer.Option(None, "--mmr-lambda", help="retrieval.mmr_lambda"),
    window: Optional[int] = typer.Option(None, "--window", help="retrieval.window"),
    compress: Optional[int] = typer.Option(None, "--compress", help="retrieval.compress_tokens"),
    transform: list[str] = typer.Option([], "--transform", help="retrieval.transforms (repeatable): rewrite, decompose, multi_query, hyde, step_back."),
    route: Optional[str] = typer.Option(None, "--route", help="retrieval.route: off, embedding or llm (over retrieval.collections)."),
    self_query: Optional[bool] = typer.Option(None, "--self-query/--no-self-query", help="retrieval.self_query: LLM-proposed filters."),
    repair: Optional[bool] = typer.Option(None, "--repair/--no-repair", help="retrieval.repair: drop self-corrections and filled pauses from the question by rule."),
    llm_rerank: Optional[str] = typer.Option(None, "--llm-rerank", help="retrieval.llm_rerank: off, pointwise or listwise."),
) -> None:
    """Answer a question from the documents, citing sources by number, like \\[1]."""
    twin = _twin({
        "retrieval.k": k, "retrieval.mode": mode, "llm.max_new_tokens": max_new_tokens,
        **_stage_flags(fetch_k, merge, rerank, rerank_top_n, mmr, mmr_lambda, window, compress),
        **_before_flags(transform, route, self_query, llm_rerank, repair),
        **_registry_model(model),
    })
    _answer(twin, question, filters, as_json)


def _registry_model(model: str | None) -> dict[str, object]:
    """--model NAME@ALIAS: llm.provider=registry on this project (see registry/load.py)."""
    if not model:
        return {}
    from llmtwin.project import find_project

    root = str(find_project(_state["project"]).root)
    return {"llm.provider": "registry", "llm.model": model, "llm.path": root, "llm.backend": "auto"}


def _answer(twin, question: str, filters: list[str], as_json: bool) -> None:
    on_text = None if as_json else (lambda text: (sys.stdout.write(text), sys.stdout.flush()))
    answer = twin.ask(question, filters=filters, on_text=on_text)
    if as_json:
        print(json.dumps(answer.to_dict(), indent=2, ensure_ascii=False))
        return
    print()
    if answer.citations:
        print("\nSources:")
        for c in answer.citations:
            hit = next(h for h in answer.hits if h.chunk.chunk_id == c.chunk_id)
            from llmtwin.generation.prompt import source_label

            print(f"  [{c.n}] {source_label(hit)}")
    _err(f"(trace {answer.trace_id}, {answer.timings['total']:.1f}s)")


@app.command()
def chat(
    k: Optional[int] = typer.Option(None, "-k", help="retrieval.k"),
    filters: list[str] = typer.Option([], "--filter", help="KEY=VALUE, as for search."),
    model: Optional[str] = typer.Option(None, "--model", help="Answer with a registered model: NAME@ALIAS, NAME/VERSION or NAME."),
) -> None:
    """Ask questions in a loop (empty line or Ctrl-D to quit)."""
    twin = _twin({"retrieval.k": k, **_registry_model(model)})
    while True:
        try:
            question = input("\nyou › ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return
        if not question or question in ("exit", "quit"):
            return
        print("twin › ", end="", flush=True)
        _answer(twin, question, filters, as_json=False)


@app.command()
def status(as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """Documents, chunks, store versions and models of the project."""
    info = _twin().status()
    if as_json:
        print(json.dumps(info, indent=2))
        return
    print(f"project   {info['project']}")
    print(f"llm       {info['models']['llm']}")
    print(f"embedder  {info['models']['embedder']}")
    by_type = ", ".join(f"{n} {t}" for t, n in sorted(info.get("documents_by_type", {}).items()))
    print(f"documents {info['documents']}" + (f" ({by_type})" if by_type else "") + f", duplicates {info['duplicates']}")
    print(f"chunks    {info['chunks']}" + (f", {info['sentence_vectors']} sentence vectors" if info.get("sentence_vectors") else ""))
    versions = info["versions"]
    print(f"versions  {len(versions)}")
    for v in versions[-10:]:
        print(
            f"  v{v['version']}  {v['time']}  +{v.get('added', 0)} ~{v.get('updated', 0)} "
            f"-{v.get('deleted', 0)}  {v.get('chunks_total', '?')} chunks"
        )


eval_app = typer.Typer(help="Evaluate: retrieval metrics with CIs, HTML reports, paired comparison of runs.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")


@eval_app.command("retrieval")
def eval_retrieval(
    dataset: Path = typer.Argument(..., help='JSONL: {"id", "question", "relevant": [doc ids] or {doc_id: grade}} (or "passage_id").'),
    mode: Optional[str] = typer.Option(None, "--mode", help="retrieval.mode: hybrid, dense or bm25."),
    ks: Optional[str] = typer.Option(None, "--ks", help="evaluation.ks, comma-separated, e.g. 1,5,10."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Evaluate only the first N questions."),
    resamples: Optional[int] = typer.Option(None, "--resamples", help="evaluation.resamples (bootstrap)."),
    run_id: Optional[str] = typer.Option(None, "--run-id", help="Name of the run (default: time-stamped)."),
    as_json: bool = typer.Option(False, "--json", help="Print results.json."),
) -> None:
    """Search every question of DATASET and score the ranking (recall, precision, MRR, MAP, nDCG with CIs)."""
    from llmtwin.errors import TwinError
    from llmtwin.evaluation.runner import evaluate_retrieval

    twin = _twin({"retrieval.mode": mode, "evaluation.resamples": resamples})
    try:
        k_list = tuple(int(k) for k in ks.split(",")) if ks else None
    except ValueError:
        k_list = (0,)
    if k_list is not None and min(k_list) < 1:
        raise TwinError(f"--ks {ks!r}: expected positive integers separated by commas, e.g. 1,5,10")
    with _progress("Searching") as progress:
        run = evaluate_retrieval(twin, dataset, ks=k_list, limit=limit, run_id=run_id, progress=progress)
    s = run.summary
    if as_json:
        print(json.dumps(s, indent=2, ensure_ascii=False))
        return
    print(f"{s['evaluated']} questions evaluated ({s['no_relevant']} without relevant documents left out, "
          f"{s['search_errors']} search errors, {s['dataset']['failed_lines']} unusable lines); mode {s['mode']}")
    metrics, conf = s["metrics"], next(iter(s["metrics"].values()))["confidence"]
    print(f"  {'':<10}" + "".join(f"{'@' + str(k):<24}" for k in s["ks"]) + f"(mean [{conf:.0%} CI])")
    for fam in ("recall", "precision", "mrr", "ndcg"):
        cells = (metrics[f"{fam}@{k}"] for k in s["ks"])
        print(f"  {fam:<10}" + "".join(f"{m['value']:.4f} [{m['low']:.3f},{m['high']:.3f}]  " for m in cells))
    print("  " + "  ".join(f"{n} {metrics[n]['value']:.4f} [{metrics[n]['low']:.3f},{metrics[n]['high']:.3f}]" for n in ("map", "mrr", "ndcg")))
    t = s["timings"]
    print(f"time: embed {t['embed_queries_s']:.1f}s, search {t['search_s']:.1f}s, metrics {t['metrics_s']:.2f}s, "
          f"report {t.get('report_s', 0):.2f}s")
    print(f"report: {run.dir / 'report.html'}")


@eval_app.command("compare")
def eval_compare(
    run_a: str = typer.Argument(..., help="Run id (under .twin/reports/) or folder: the baseline."),
    run_b: str = typer.Argument(..., help="Run id or folder: the candidate."),
    method: str = typer.Option("bootstrap", "--method", help="bootstrap or permutation."),
    resamples: int = typer.Option(10000, "--resamples", help="Resamples for the paired test."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Per-metric difference B − A on the questions both runs evaluated, with paired p-values."""
    from llmtwin.errors import TwinError
    from llmtwin.evaluation.runner import compare_runs, load_run, resolve_run
    from llmtwin.project import find_project

    if method not in ("bootstrap", "permutation"):
        raise TwinError(f"--method {method!r}: expected bootstrap or permutation")
    try:
        reports = find_project(_state["project"]).state_dir / "reports"
    except TwinError:
        reports = None
    a, b = (load_run(resolve_run(r, reports)) for r in (run_a, run_b))
    result = compare_runs(a, b, method=method, resamples=resamples)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    print(f"A {result['a']}  →  B {result['b']}: {result['paired']} paired questions "
          f"({result['only_a']} only in A, {result['only_b']} only in B); {method} test, {resamples} resamples")
    print(f"  {'metric':<14} {'A':>8} {'B':>8} {'B−A':>8}  {'95% CI':<19} p")
    for name, t in result["metrics"].items():
        star = " *" if t["p_value"] < 0.05 else ""
        p = f"<{1 / resamples:.0e}" if t["p_value"] < 1 / resamples else f"{t['p_value']:.4f}"
        print(f"  {name:<14} {t['mean_a']:8.4f} {t['mean_b']:8.4f} {t['delta']:+8.4f}  "
              f"[{t['low']:+.4f}, {t['high']:+.4f}] {p}{star}")



@app.command()
def serve(
    host: Optional[str] = typer.Option(None, "--host", help="serve.host (default 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, "--port", help="serve.port (default 8000; 0 = any free port)."),
    no_auth: bool = typer.Option(False, "--no-auth", help="Serve without API keys (loopback addresses only)."),
    log_level: str = typer.Option("warning", "--log-level", help="uvicorn log level."),
) -> None:
    """Serve the OpenAI-compatible API (/v1) and the web UI (/) over HTTP."""
    twin = _twin({"serve.host": host, "serve.port": port})
    from llmtwin.serve.app import run

    run(twin, no_auth=no_auth, log_level=log_level)


keys_app = typer.Typer(help="API keys for `twin serve` (stored hashed in .twin/keys.json).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


def _keys():
    from llmtwin.project import find_project
    from llmtwin.serve.keys import KeyStore

    return KeyStore(find_project(_state["project"]).state_dir / "keys.json")


@keys_app.command("create")
def keys_create(name: str = typer.Option("default", "--name", help="A label for the key.")) -> None:
    """Create a key and print it (shown only this once)."""
    record, secret = _keys().create(name)
    print(secret)
    _err(f"created key {record.id} ({record.name}); it is shown only now: store it safely")


@keys_app.command("list")
def keys_list(as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """List keys (id, name, first characters, created, revoked)."""
    records = _keys().list()
    if as_json:
        print(json.dumps([r.public() for r in records], indent=2))
        return
    if not records:
        print("no API keys (create one with `twin keys create`)")
    for r in records:
        state = f"revoked {r.revoked}" if r.revoked else "active"
        print(f"{r.id}  {r.name:<16} {r.hint:<12} created {r.created}  {state}")


@keys_app.command("revoke")
def keys_revoke(key: str = typer.Argument(..., help="The key's id, or a name: every active key of that name.")) -> None:
    """Revoke a key (by id), or every key of a name: a running server refuses them from the next request on."""
    for record in _keys().revoke_all(key):
        print(f"revoked {record.id} ({record.name})")


tune_app = typer.Typer(help="Train the project's own retrieval models on its chunks (no labels needed).", no_args_is_help=True)
app.add_typer(tune_app, name="tune")


class _stage_progress(_progress):
    """One progress bar whose label follows the stage being run: (stage, done, total) callbacks."""

    def __enter__(self):
        update = super().__enter__()

        def staged(stage: str, done: int, total: int) -> None:
            self.bar.update(self.task, description=stage)
            update(done, total)

        return staged


@tune_app.command("reranker")
def tune_reranker(
    queries: int = typer.Option(2000, "--queries", help="Sentence-as-query pairs made from the chunks (at most)."),
    llm_questions: int = typer.Option(0, "--llm-questions", help="Also this many questions written by the configured LLM."),
    negatives: int = typer.Option(3, "--negatives", help="Hard negatives per query, from the project's hybrid search."),
    max_minutes: float = typer.Option(18.0, "--max-minutes", help="Stop training (and save) after this long."),
    steps: Optional[int] = typer.Option(None, "--steps", help="At most this many optimiser steps."),
    as_json: bool = typer.Option(False, "--json", help="Print the model card as JSON."),
) -> None:
    """Fine-tune a cross-encoder reranker (from the packaged MiniLM) on pseudo-queries from your chunks.

    Saved as .twin/models/reranker/vN; `retrieval.rerank: auto` (the default) uses the latest version.
    """
    from llmtwin.training.reranker import RerankerTuning
    from llmtwin.training.reranker import tune_reranker as run

    twin = _twin()
    opts = RerankerTuning(queries=queries, llm_questions=llm_questions, negatives=negatives,
                          max_minutes=max_minutes, max_steps=steps, seed=twin.config.seed)
    with _stage_progress("Tuning") as progress:
        card = run(twin, opts, progress)
    if as_json:
        print(json.dumps(card, indent=2))
        return
    tr, chk = card["training"], card["check"]
    print(f"reranker {card['version']}: {card['data']['train_queries']} queries {card['data']['queries']}, "
          f"{tr['steps']} steps in {card['seconds']['train']:.0f}s (total {card['seconds']['total']:.0f}s); "
          f"held-out MRR {chk['before']['mrr']:.3f} → {chk['after']['mrr']:.3f} (hybrid order {chk['hybrid']['mrr']:.3f}); "
          f"{'used' if card['use'] else 'NOT used'} by rerank: auto")
    print(f"  {card['path']}")


@tune_app.command("adapter")
def tune_adapter(
    queries: int = typer.Option(4000, "--queries", help="Sentence-as-query pairs made from the chunks (at most)."),
    epochs: int = typer.Option(30, "--epochs", help="Passes over the pairs (the best on held-out pairs is kept)."),
    as_json: bool = typer.Option(False, "--json", help="Print the card as JSON."),
) -> None:
    """Train a linear adapter on query embeddings from pseudo-queries of your chunks.

    Saved as .twin/models/adapter/vN; `retrieval.adapter: auto` uses it if it beat no adapter on held-out pairs.
    """
    from llmtwin.training.adapter import AdapterTuning
    from llmtwin.training.adapter import tune_adapter as run

    twin = _twin()
    with _stage_progress("Tuning") as progress:
        card = run(twin, AdapterTuning(queries=queries, epochs=epochs, seed=twin.config.seed), progress)
    if as_json:
        print(json.dumps(card, indent=2))
        return
    chk = card["check"]
    print(f"adapter {card['version']}: held-out MRR@10 {chk['held_out_mrr10_identity']:.4f} (none) → "
          f"{chk['held_out_mrr10_adapter']:.4f}; {'used' if card['use'] else 'NOT used (no gain)'} by adapter: auto")
    print(f"  {card['path']}")


@tune_app.command("answers")
def tune_answers(
    questions: int = typer.Option(600, "--questions", help="Pseudo-questions made from the chunks' sentences (at most)."),
    as_json: bool = typer.Option(False, "--json", help="Print the card as JSON."),
) -> None:
    """Train the extractive answer selector on pseudo-questions of your chunks (no labels).

    Saved as .twin/models/answer-selector/vN; extractive answers use it if it chose the right
    sentence at least as often as the default weights on held-out questions.
    """
    from llmtwin.training.answer_selector import AnswerTuning
    from llmtwin.training.answer_selector import tune_answers as run

    twin = _twin()
    with _stage_progress("Tuning") as progress:
        card = run(twin, AnswerTuning(questions=questions, seed=twin.config.seed), progress)
    if as_json:
        print(json.dumps(card, indent=2))
        return
    chk = card["check"]
    print(f"answer selector {card['version']}: held-out top-1 {chk['default']['top1']:.3f} (default) → "
          f"{chk['trained']['top1']:.3f} on {chk['held_out']} questions; "
          f"{'used' if card['use'] else 'NOT used (no gain)'} by extractive answers")
    print(f"  {card['path']}")


@tune_app.command("query-encoder")
def tune_query_encoder(
    layers: int = typer.Option(3, "--layers", help="Transformer layers the student keeps (the first and the last ones)."),
    steps: int = typer.Option(2000, "--steps", help="Optimiser steps (batches of --batch texts)."),
    batch: int = typer.Option(64, "--batch", help="Texts per step."),
    queries: int = typer.Option(20000, "--queries", help="Pseudo-queries made from the chunks (at most; the check's included)."),
    texts: list[Path] = typer.Option([], "--texts", help="More training texts: a .txt (one per line) or .jsonl (text/query/question); repeatable."),
    from_chunks: bool = typer.Option(True, "--from-chunks/--no-from-chunks", help="Train on the chunks' pseudo-queries (the check always uses them)."),
    max_drop: float = typer.Option(0.01, "--max-drop", help="Held-out MRR@10 the student may lose against the embedder and still be used."),
    max_minutes: float = typer.Option(60.0, "--max-minutes", help="Stop training (then check and save) after this long."),
    as_json: bool = typer.Option(False, "--json", help="Print the card as JSON."),
) -> None:
    """Distil a shallower query encoder from the embedder: searches embed questions faster, into the same vectors.

    Saved as .twin/models/query_encoder/vN; `retrieval.query_encoder: auto` uses it if its held-out check passed.
    """
    from llmtwin.training.query_encoder import QueryEncoderTuning
    from llmtwin.training.query_encoder import tune_query_encoder as run

    twin = _twin()
    opts = QueryEncoderTuning(layers=layers, steps=steps, batch=batch, queries=queries, texts=list(texts),
                              from_chunks=from_chunks, max_drop=max_drop, max_minutes=max_minutes, seed=twin.config.seed)
    with _stage_progress("Tuning") as progress:
        card = run(twin, opts, progress)
    if as_json:
        print(json.dumps(card, indent=2))
        return
    chk, tr = card["check"], card["training"]
    print(f"query encoder {card['version']}: {len(card['layers']['kept'])} of {card['layers']['of']} layers, "
          f"{tr['steps']} steps on {card['data']['train_texts']} texts in {card['seconds']['train']:.0f}s; "
          f"held-out MRR@10 {chk['teacher_mrr10']:.4f} (embedder) → {chk['student_mrr10']:.4f}, cosine {chk['cosine_mean']:.3f}; "
          f"{'used' if card['use'] else 'NOT used'} by query_encoder: auto")
    print(f"  {card['path']}")


# ---- command groups from llmtwin.commands (one line each; keep module tops free of heavy imports)
# (helpers: add your `app.add_typer(...)` / `register(...)` line here)
from llmtwin.commands.evaluate import register as _reg_eval  # noqa: E402
from llmtwin.commands.models import models_app  # noqa: E402

_reg_eval(eval_app)
app.add_typer(models_app, name="models")
from llmtwin.commands.train import train_app  # noqa: E402

app.add_typer(train_app, name="train")
from llmtwin.commands import align_rl  # noqa: E402

align_rl.register(train_app)
from llmtwin.commands import align_pref  # noqa: E402

align_pref.register(train_app)
from llmtwin.commands.estimate import estimate_cmd  # noqa: E402
from llmtwin.commands.model import model_app  # noqa: E402

app.command("estimate")(estimate_cmd)
app.add_typer(model_app, name="model")
from llmtwin.commands.data import data_app  # noqa: E402

app.add_typer(data_app, name="data")


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # numpy next to torch: see NOTES.md
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads must not spin on 2 cores
    from llmtwin.errors import TwinError

    try:
        app()
    except TwinError as e:  # a user error: one line, no traceback (anything else keeps its traceback)
        _err("error: " + (" ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__))
        sys.exit(2)
    except KeyboardInterrupt:
        _err("interrupted: run the same command again to resume")
        sys.exit(130)


if __name__ == "__main__":
    main()
