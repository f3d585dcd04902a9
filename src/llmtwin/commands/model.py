"""`twin model downscale|upscale`: new models made by removing or repeating decoder layers of a base."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

model_app = typer.Typer(help="Model surgery: remove middle decoder layers or stack copies of them (depth up-scaling).",
                        no_args_is_help=True)


def _runs_dir() -> tuple[Path | None, Path | None]:
    """(project root, its .twin/runs) or (None, None) outside a project."""
    from llmtwin.cli import _state
    from llmtwin.errors import ProjectNotFound
    from llmtwin.project import find_project

    try:
        project = find_project(_state["project"])
    except ProjectNotFound:
        return None, None
    return project.root, project.state_dir / "runs"


def _base_dir(base: str, root: Path | None) -> Path | None:
    """The HF dir of a registered model (NAME@ALIAS, NAME/VERSION; adapters merged), else None."""
    from llmtwin.registry.record import is_registry_ref

    if not is_registry_ref(base):
        return None
    if root is None:
        from llmtwin.errors import TwinError

        raise TwinError(f"--base {base!r}: a registered model needs a project (run inside one or pass --project)")
    from llmtwin.registry.merge import runnable_dir
    from llmtwin.registry.models import resolve

    return runnable_dir(root, resolve(root, base))


def _finish(result, name: Optional[str], as_json: bool, root: Path | None) -> None:
    """Register the run (when a project and the registry exist) and print what was made."""
    import sys

    info = result.to_dict()
    if root is not None:
        try:
            from llmtwin.registry.record import record_run
        except ImportError:
            print("note: the model registry is not available in this install; the run dir was written only", file=sys.stderr)
        else:
            info["registry"] = record_run(root, result.run_dir, name=name)
    if as_json:
        print(json.dumps(info, indent=2))
        return
    print(f"{result.method}: {result.source_layers} → {len(result.layers)} layers "
          f"({result.params_before / 1e6:.1f}M → {result.params_after / 1e6:.1f}M parameters)")
    print(f"  layers (0-based source indices): {','.join(map(str, result.layers))}")
    print(f"  {result.run_dir}")
    if "registry" in info:
        print(f"  registered as {info['registry'].get('ref')}")


@model_app.command("downscale")
def downscale(
    base: str = typer.Option("packaged", "--base", help="'packaged', a Hugging Face dir or a registered NAME@ALIAS."),
    remove: Optional[int] = typer.Option(None, "--remove", help="Remove N layers from the middle (first and last stay)."),
    keep_layers: Optional[str] = typer.Option(None, "--keep-layers", help="0-based layers to keep, e.g. 0-9,20-29."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run dir to write (default: .twin/runs/downscale-<time>)."),
    name: Optional[str] = typer.Option(None, "--name", help="Registered model name (default twin-downscale)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """A smaller model: the base without some decoder layers (fine-tune it afterwards to heal)."""
    from llmtwin.training.surgery import parse_layers, run_surgery

    layers = parse_layers(keep_layers, "--keep-layers") if keep_layers is not None else None
    root, runs = _runs_dir() if out is None else (_runs_dir()[0], None)
    result = run_surgery(base, "downscale", layers=layers, remove=remove, out_dir=out, runs_dir=runs,
                         base_dir=_base_dir(base, root))
    _finish(result, name, as_json, root)


@model_app.command("upscale")
def upscale(
    layers: str = typer.Option(..., "--layers", help="0-based source layers of the new stack, e.g. 0-19,10-29 or 1,2,3,2,3,4."),
    base: str = typer.Option("packaged", "--base", help="'packaged', a Hugging Face dir or a registered NAME@ALIAS."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run dir to write (default: .twin/runs/upscale-<time>)."),
    name: Optional[str] = typer.Option(None, "--name", help="Registered model name (default twin-upscale)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """A deeper model: a new stack of copies of the base's layers (depth up-scaling; continue pre-training after)."""
    from llmtwin.training.surgery import parse_layers, run_surgery

    root, runs = _runs_dir() if out is None else (_runs_dir()[0], None)
    result = run_surgery(base, "upscale", layers=parse_layers(layers, "--layers"), out_dir=out, runs_dir=runs,
                         base_dir=_base_dir(base, root))
    _finish(result, name, as_json, root)
