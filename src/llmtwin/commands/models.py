"""`twin models list|show|promote|export`: the model registry (MLflow) from the command line."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Optional

import typer

models_app = typer.Typer(
    help="Registered models (MLflow): list, show lineage and metrics, promote to champion, export.",
    no_args_is_help=True,
)


def _project():
    import sys

    from llmtwin.project import find_project

    main = sys.modules.get("__main__")  # `python -m llmtwin.cli` runs cli.py as __main__
    cli = main if hasattr(main, "_state") else sys.modules["llmtwin.cli"]
    return find_project(cli._state["project"])


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M") if ms else "?"


@models_app.command("list")
def models_list(as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """Registered models: versions, aliases (candidate, champion) and kinds."""
    from llmtwin.registry.models import list_models

    project = _project()
    models = list_models(project.root, project.config)
    if as_json:
        print(json.dumps(models, indent=2))
        return
    if not models:
        print("no registered models yet (training registers each run as NAME@candidate)")
    for m in models:
        aliases = ", ".join(f"{a}→v{v}" for a, v in m["aliases"].items()) or "no aliases"
        print(f"{m['name']:<24} {m['versions']} version(s), latest v{m['latest']}  {aliases}  [{', '.join(m['kinds'])}]")


@models_app.command("show")
def models_show(
    ref: str = typer.Argument(..., help="NAME (all versions), NAME@ALIAS or NAME/VERSION."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Versions of a registered model with aliases, metrics, evaluations and lineage."""
    from llmtwin.registry.models import show_model

    project = _project()
    info = show_model(project.root, ref, project.config)
    if as_json:
        print(json.dumps(info, indent=2))
        return
    print(f"{info['name']}  aliases: " + (", ".join(f"{a}→v{v}" for a, v in info["aliases"].items()) or "none"))
    for v in info["versions"]:
        lin = v["lineage"]
        tags = f" ({', '.join(v['aliases'])})" if v["aliases"] else ""
        print(f"  v{v['version']}{tags}  {v['kind']}/{v['method']}  {_when(v['created'])}  run {lin['run_name']} ({lin['run_id']})")
        print(f"      base {lin['base']}" + (f"  parent {lin['parent']}" if lin["parent"] else ""))
        for split, digest in lin["datasets"].items():
            print(f"      dataset {split}: {digest}")
        if v["metrics"]:
            print("      metrics " + ", ".join(f"{k}={val:.4g}" for k, val in sorted(v["metrics"].items())))
        if v["evaluation"]:
            print("      held-out " + ", ".join(f"{k}={val}" for k, val in sorted(v["evaluation"].items())))
        print(f"      source {v['source']}")


@models_app.command("promote")
def models_promote(
    ref: str = typer.Argument(..., help="NAME (its candidate), NAME@ALIAS or NAME/VERSION."),
    force: bool = typer.Option(False, "--force", help="Promote even if not better than the champion."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Held-out set: a dataset name under .twin/datasets/, a dir or a JSONL file."),
    limit: Optional[int] = typer.Option(None, "--limit", help="registry.promote_limit: examples scored per model."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Score the candidate and the champion on a held-out set; move `champion` if the candidate is better.

    Exits 1 (with both scores) when the candidate is not better, unless --force.
    """
    from llmtwin.config import set_field
    from llmtwin.registry.promote import promote

    project = _project()
    config = set_field(project.config, "registry.promote_limit", limit) if limit else project.config
    result = promote(project.root, ref, force=force, dataset=dataset, config=config)
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        c, ch = result.candidate, result.champion
        print(f"held-out set {result.dataset} ({c.examples} examples, {c.tokens} tokens)")
        print(f"  candidate v{c.version}: loss {c.loss:.4f}, perplexity {c.ppl:.3f} ({c.seconds:.1f}s)")
        if ch is not None:
            print(f"  champion  v{ch.version}: loss {ch.loss:.4f}, perplexity {ch.ppl:.3f} ({ch.seconds:.1f}s)")
        verdict = f"promoted v{c.version} to {result.name}@champion" if result.promoted else "NOT promoted"
        print(f"{verdict}: {result.reason}")
    if not result.promoted and not (result.champion is None and "already" in result.reason):
        raise typer.Exit(1)


@models_app.command("export")
def models_export(
    ref: str = typer.Argument(..., help="NAME@ALIAS, NAME/VERSION or NAME."),
    out: Path = typer.Option(..., "--out", help="Directory to write (must not exist or be empty)."),
    merge: bool = typer.Option(False, "--merge", help="Merge a LoRA adapter into its float32 base: a plain Hugging Face dir."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Write a registered model to a directory: as it is (full model or adapter), or merged."""
    from llmtwin.registry.merge import export

    project = _project()
    result = export(project.root, ref, out, merge=merge, config=project.config)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    print(f"exported {result['ref']} ({result['what']}, {result['bytes'] / 1e6:.1f} MB) to {result['out']}")
