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
    import yaml

    from llmtwin.api import Twin
    from llmtwin.config import set_field
    from llmtwin.errors import TwinError
    from llmtwin.project import find_project

    project = find_project(_state["project"])
    config = project.config
    for item in _state["set"]:
        key, sep, value = item.partition("=")
        if not sep:
            raise TwinError(f"--set {item!r}: expected section.field=value")
        config = set_field(config, key.strip(), yaml.safe_load(value))
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
) -> None:
    """Load, clean, dedup, chunk and embed files into the store (incremental, resumable)."""
    twin = _twin(
        {
            "ingest.chunk_tokens": chunk_tokens,
            "ingest.chunk_overlap": chunk_overlap,
            "ingest.minhash_threshold": minhash_threshold,
        }
    )
    with _progress("Embedding") as progress:
        report = twin.ingest(paths, rebuild=rebuild, progress=progress)
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
        f"{report.chunks} chunks written in {report.seconds:.1f}s"
    )
    for dup in report.duplicates:
        print(f"  duplicate ({dup.kind}, {dup.similarity:.2f}): {dup.doc_id} ≈ {dup.duplicate_of}")
    for fail in report.failed:
        where = f"{fail.path}:{fail.line}" if fail.line else fail.path
        print(f"  failed: {where}: {fail.error}")
    if report.skipped:
        print(f"  skipped {len(report.skipped)} file(s) of unsupported types, e.g. {report.skipped[0]}")


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
) -> None:
    """Search the store (hybrid dense + BM25 by default)."""
    twin = _twin({"retrieval.k": k, "retrieval.mode": mode})
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
            }
        print(json.dumps(out, indent=2, ensure_ascii=False))
        return
    if explain:
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


@app.command()
def ask(
    question: str = typer.Argument(..., help="Your question."),
    k: Optional[int] = typer.Option(None, "-k", help="retrieval.k: chunks to retrieve."),
    mode: Optional[str] = typer.Option(None, "--mode", help="retrieval.mode"),
    filters: list[str] = typer.Option([], "--filter", help="KEY=VALUE, as for search."),
    max_new_tokens: Optional[int] = typer.Option(None, help="llm.max_new_tokens"),
    as_json: bool = typer.Option(False, "--json", help="Print the answer as JSON (no streaming)."),
) -> None:
    """Answer a question from the documents, citing sources as [n]."""
    twin = _twin({"retrieval.k": k, "retrieval.mode": mode, "llm.max_new_tokens": max_new_tokens})
    _answer(twin, question, filters, as_json)


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
) -> None:
    """Ask questions in a loop (empty line or Ctrl-D to quit)."""
    twin = _twin({"retrieval.k": k})
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
    print(f"chunks    {info['chunks']}")
    versions = info["versions"]
    print(f"versions  {len(versions)}")
    for v in versions[-10:]:
        print(
            f"  v{v['version']}  {v['time']}  +{v.get('added', 0)} ~{v.get('updated', 0)} "
            f"-{v.get('deleted', 0)}  {v.get('chunks_total', '?')} chunks"
        )


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # numpy next to torch: see NOTES.md
    from llmtwin.errors import TwinError

    try:
        app()
    except TwinError as e:
        _err(f"error: {e}")
        sys.exit(2)
    except KeyboardInterrupt:
        _err("interrupted: run the same command again to resume")
        sys.exit(130)


if __name__ == "__main__":
    main()
