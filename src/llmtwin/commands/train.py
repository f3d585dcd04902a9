"""`twin train sft|cpt`: fine-tune or continue pre-training the base model; other trainers add commands here.

`train_app` is importable without heavy imports: torch/transformers/TRL load inside the commands.
Other modules add their commands with a `register(train_app)` function (see cli.py's marked block).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

train_app = typer.Typer(help="Train models: SFT (full, LoRA, QLoRA, prompt, prefix), continual pre-training, …",
                        no_args_is_help=True)


def _project_and_config():
    from llmtwin.cli import _twin

    twin = _twin()
    return twin.project.root, twin.project.config


def _print_result(result, as_json: bool) -> None:
    out = {
        "run_dir": str(result.run_dir),
        "metrics": result.card["metrics"],
        "registry": result.registry,
        "resumed_from_step": result.resumed_from,
        "bad_lines": result.bad_lines,
    }
    if as_json:
        print(json.dumps(out, indent=2))
        return
    m = result.card["metrics"]
    if result.resumed_from is not None:
        print(f"resumed from step {result.resumed_from}")
    for line in result.bad_lines[:10]:
        print(f"  skipped {line}")
    if len(result.bad_lines) > 10:
        print(f"  … {len(result.bad_lines) - 10} more bad lines")
    parts = [f"{m['steps']} steps in {m['train_seconds']:.0f}s"]
    if m.get("final_train_loss") is not None:
        parts.append(f"train loss {m['final_train_loss']:.4f}")
    if m.get("eval_loss") is not None:
        parts.append(f"eval loss {m['eval_loss']:.4f}")
    if m.get("tokens_per_s"):
        parts.append(f"{m['tokens_per_s']:.0f} tokens/s")
    parts.append(f"peak RSS {m['peak_rss_mb']:.0f} MB")
    print(f"{result.card['kind']} {result.card['method']}: " + ", ".join(parts))
    print(f"run: {result.run_dir}")
    if result.registry:
        ref = result.registry["ref"]
        print(f"registered {result.registry['name']} version {result.registry['version']} as {ref}")
        print(f"use it: twin ask --model {ref} \"your question\"")
    elif result.registry_note:
        print(result.registry_note)


@train_app.command("sft")
def sft(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Recipe YAML (fields: see docs/training.md)."),
    preset: Optional[str] = typer.Option(None, "--preset", help="A named recipe: lora-cpu, full-cpu, prompt-cpu, prefix-cpu, qlora-gpu, smoke."),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Dataset name under .twin/datasets/ or a JSONL file."),
    method: Optional[str] = typer.Option(None, "--method", help="full, lora, qlora, prompt or prefix."),
    base: Optional[str] = typer.Option(None, "--base", help="Base model: packaged or a Hugging Face dir."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after N optimizer steps."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe field, e.g. --set r=8 --set lr=1e-4."),
    run_name: Optional[str] = typer.Option(None, "--run-name", help="Run directory name under .twin/runs/."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Resume an unfinished identical run from its last checkpoint."),
    register: bool = typer.Option(True, "--register/--no-register", help="Register the model (alias candidate)."),
    name: Optional[str] = typer.Option(None, "--name", help="Registered model name (default twin-sft)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Supervised fine-tuning on prompt/completion data (loss on the completion only)."""
    from llmtwin.training.recipe import build_recipe
    from llmtwin.training.sft import train_sft

    recipe = build_recipe("sft", config, preset, set_, {"dataset": dataset, "method": method, "base": base, "max_steps": max_steps})
    root, cfg = _project_and_config()
    result = train_sft(recipe, root, run_name=run_name, resume=resume, register=register, name=name, config=cfg,
                       progress=not as_json)
    _print_result(result, as_json)


@train_app.command("cpt")
def cpt(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Recipe YAML (fields: see docs/training.md)."),
    preset: Optional[str] = typer.Option(None, "--preset", help="A named recipe: full-cpu, lora-cpu, smoke."),
    data: Optional[str] = typer.Option(None, "--data", help="store (the project's documents), a folder, or a JSONL with \"text\"."),
    method: Optional[str] = typer.Option(None, "--method", help="full or lora."),
    base: Optional[str] = typer.Option(None, "--base", help="Base model: packaged or a Hugging Face dir."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after N optimizer steps."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe field, e.g. --set block_size=256."),
    run_name: Optional[str] = typer.Option(None, "--run-name", help="Run directory name under .twin/runs/."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Resume an unfinished identical run from its last checkpoint."),
    register: bool = typer.Option(True, "--register/--no-register", help="Register the model (alias candidate)."),
    name: Optional[str] = typer.Option(None, "--name", help="Registered model name (default twin-cpt)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Continual pre-training on raw documents, packed into blocks (one epoch by default)."""
    from llmtwin.training.cpt import train_cpt
    from llmtwin.training.recipe import build_recipe

    recipe = build_recipe("cpt", config, preset, set_, {"data": data, "method": method, "base": base, "max_steps": max_steps})
    root, cfg = _project_and_config()
    result = train_cpt(recipe, root, run_name=run_name, resume=resume, register=register, name=name, config=cfg,
                       progress=not as_json)
    _print_result(result, as_json)
