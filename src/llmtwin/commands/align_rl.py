"""`twin train reward`, `twin train reward-score` and `twin train ppo`: reward models and llmtwin's own PPO.

Heavy imports (torch, transformers, peft) happen inside the commands; `register(train_app)` adds them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer


def _project_and_config():
    from llmtwin.cli import _twin

    twin = _twin()
    return twin.project.root, twin.project.config


class _StepProgress:
    """A rich progress bar on stderr with the step's key numbers; plain lines when not a terminal."""

    def __init__(self, label: str, keys: tuple[str, ...], enabled: bool = True):
        self.label, self.keys, self.enabled = label, keys, enabled
        self.bar = self.task = None

    def __enter__(self):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        console = Console(stderr=True)
        if self.enabled and console.is_terminal:
            self.bar = Progress(f"[bold]{self.label}", BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                                TimeRemainingColumn(), console=console, transient=True)
            self.bar.__enter__()
        return self

    def __call__(self, step: int, total: int, row: dict) -> None:
        info = " ".join(f"{k} {row[k]:.4g}" for k in self.keys if isinstance(row.get(k), (int, float)))
        if self.bar is not None:
            if self.task is None:
                self.task = self.bar.add_task(self.label, total=total, info="")
            self.bar.update(self.task, completed=step, info=info)
        elif self.enabled:
            print(f"{self.label} step {step}/{total} {info}", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)


def _report(result, as_json: bool, headline: str) -> None:
    card = result.card
    if as_json:
        print(json.dumps({"run_dir": str(result.run_dir), "metrics": card["metrics"], "stopped": card.get("stopped"),
                          "registry": result.registry, "registry_note": result.registry_note,
                          "bad_lines": result.bad_lines}, indent=2))
        return
    for line in result.bad_lines[:10]:
        print(f"  skipped {line}")
    if len(result.bad_lines) > 10:
        print(f"  … {len(result.bad_lines) - 10} more bad lines")
    print(headline)
    print(f"run: {result.run_dir}")
    if result.registry:
        print(f"registered {result.registry['name']} version {result.registry['version']} as {result.registry['ref']}")
    elif result.registry_note:
        print(result.registry_note)


def reward(
    config: Path | None = typer.Option(None, "--config", "-c", help="Recipe YAML (fields: see docs/alignment.md)."),
    preset: str | None = typer.Option(None, "--preset", help="A named recipe: lora-cpu, smoke."),
    dataset: str | None = typer.Option(None, "--dataset", "-d", help="Preference dataset name under .twin/datasets/ or a JSONL file."),
    validation: str | None = typer.Option(None, "--validation", help="A JSONL file of held-out pairs for the accuracy check."),
    method: str | None = typer.Option(None, "--method", help="lora or full."),
    base: str | None = typer.Option(None, "--base", help="Base model: packaged or a Hugging Face dir."),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Stop after N optimizer steps."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe field, e.g. --set max_len=256."),
    run_name: str | None = typer.Option(None, "--run-name", help="Run directory name under .twin/runs/."),
    register: bool = typer.Option(True, "--register/--no-register", help="Register the model (alias candidate)."),
    name: str | None = typer.Option(None, "--name", help="Registered model name (default twin-reward)."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Resume an unfinished identical run from its last checkpoint."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Train a reward model (base LM + scalar head) on preference pairs with the pairwise loss."""
    from llmtwin.training.recipe_rl import build_rl_recipe
    from llmtwin.training.reward_model import train_reward

    recipe = build_rl_recipe("reward", config, preset, set_, {"dataset": dataset, "validation": validation,
                                                             "method": method, "base": base, "max_steps": max_steps})
    root, cfg = _project_and_config()
    with _StepProgress("Reward model", ("loss", "accuracy"), enabled=not as_json) as progress:
        result = train_reward(recipe, root, run_name=run_name, register=register, name=name, config=cfg, on_step=progress,
                              resume=resume)
    m = result.card["metrics"]
    if result.resumed_from is not None and not as_json:
        print(f"resumed from step {result.resumed_from}")
    line = f"reward {recipe.method}: {m['steps']} steps in {m['train_seconds']:.0f}s, train loss {m['final_train_loss']:.4f}"
    if "eval_accuracy" in m:
        line += (f"; held-out pairwise accuracy {m['eval_accuracy_before']:.3f} → {m['eval_accuracy']:.3f} "
                 f"on {m['eval_pairs']} pairs (chance 0.5)")
    _report(result, as_json, line)


def reward_score(
    model: str = typer.Option(..., "--model", "-m", help="A reward run dir, its model/ dir, or a registry ref NAME@ALIAS."),
    prompt: str = typer.Option(..., "--prompt", help="The user's message."),
    completion: list[str] = typer.Option(..., "--completion", help="An answer to score (repeat to compare several)."),
    as_json: bool = typer.Option(False, "--json", help="Print the scores as JSON."),
) -> None:
    """Score answers to a prompt with a trained reward model (higher is preferred)."""
    from llmtwin.training.reward_model import RewardModel

    root, _ = _project_and_config() if "@" in model else (None, None)
    rm = RewardModel.load(model, project_root=root)
    scores = rm.score([prompt] * len(completion), list(completion))
    if as_json:
        print(json.dumps([{"completion": c, "score": s} for c, s in zip(completion, scores)], indent=2))
        return
    for c, s in zip(completion, scores):
        print(f"{s:+.4f}  {c}")


def ppo(
    config: Path | None = typer.Option(None, "--config", "-c", help="Recipe YAML (fields: see docs/alignment.md)."),
    preset: str | None = typer.Option(None, "--preset", help="A named recipe: lora-cpu, smoke."),
    prompts: str | None = typer.Option(None, "--prompts", "-d", help="Prompts: a dataset name under .twin/datasets/ or a JSONL file."),
    validation: str | None = typer.Option(None, "--validation", help="Held-out prompts: mean reward before and after."),
    reward_spec: list[str] = typer.Option([], "--reward", help="Reward spec, repeatable (summed): exact, regex:PATTERN, code, model:REF."),
    base: str | None = typer.Option(None, "--base", help="Base model: packaged or a Hugging Face dir."),
    steps: int | None = typer.Option(None, "--steps", help="Rollout batches (PPO steps)."),
    kl_stop: float | None = typer.Option(None, "--kl-stop", help="Stop (and roll back) when KL to the base per completion exceeds this."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe field, e.g. --set beta=0.1 --set max_new_tokens=48."),
    run_name: str | None = typer.Option(None, "--run-name", help="Run directory name under .twin/runs/."),
    register: bool = typer.Option(True, "--register/--no-register", help="Register the model (alias candidate)."),
    name: str | None = typer.Option(None, "--name", help="Registered model name (default twin-ppo)."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Resume an unfinished identical run from its last checkpoint."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """PPO on a LoRA policy with a value head: reward, per-token KL to the base, GAE, clipped losses."""
    from llmtwin.training.ppo import train_ppo
    from llmtwin.training.recipe_rl import build_rl_recipe

    recipe = build_rl_recipe("ppo", config, preset, set_, {"prompts": prompts, "validation": validation,
                                                          "reward": reward_spec or None, "base": base, "steps": steps,
                                                          "kl_stop": kl_stop})
    root, cfg = _project_and_config()
    with _StepProgress("PPO", ("reward", "kl", "entropy", "value_loss"), enabled=not as_json) as progress:
        result = train_ppo(recipe, root, register=register, name=name, config=cfg, run_name=run_name, on_step=progress,
                           resume=resume)
    if result.resumed_from is not None and not as_json:
        print(f"resumed from step {result.resumed_from}")
    m = result.card["metrics"]
    line = (f"ppo: {m['steps']} steps in {m['train_seconds']:.0f}s (stopped: {result.stopped}); "
            f"reward {m['reward_first']:.3f} → {m['reward_last']:.3f}, KL last {m['kl_last']:.3f} (max {m['kl_max']:.3f})")
    if "eval_reward_before" in m:
        line += f"; held-out reward {m['eval_reward_before']:.3f} → {m['eval_reward_after']:.3f}"
    _report(result, as_json, line)


def register(train_app: typer.Typer) -> None:
    """Add `reward`, `reward-score` and `ppo` to `twin train`."""
    train_app.command("reward")(reward)
    train_app.command("reward-score")(reward_score)
    train_app.command("ppo")(ppo)
