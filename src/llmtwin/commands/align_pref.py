"""`twin train dpo`, `twin train grpo` and `twin train constitutional`: preference and RL alignment.

Heavy imports (torch, transformers, TRL) happen inside the commands; `register(train_app)` adds them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def _project_and_config():
    from llmtwin.cli import _twin

    twin = _twin()
    return twin.project.root, twin.project.config


def _report(result, as_json: bool, lines: list[str], extra: dict | None = None) -> None:
    card = result.card
    if as_json:
        print(json.dumps({"run_dir": str(result.run_dir), "metrics": card["metrics"], **(extra or {}),
                          "resumed_from_step": getattr(result, "resumed_from", None),
                          "registry": result.registry, "registry_note": result.registry_note,
                          "bad_lines": result.bad_lines}, indent=2))
        return
    for line in result.bad_lines[:10]:
        print(f"  skipped {line}")
    if len(result.bad_lines) > 10:
        print(f"  … {len(result.bad_lines) - 10} more bad lines")
    if getattr(result, "resumed_from", None) is not None:
        print(f"resumed from step {result.resumed_from}")
    for line in lines:
        print(line)
    print(f"run: {result.run_dir}")
    if result.registry:
        print(f"registered {result.registry['name']} version {result.registry['version']} as {result.registry['ref']}")
    elif result.registry_note:
        print(result.registry_note)


def _fmt(value, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def dpo(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Recipe YAML (fields: docs/alignment-dpo-grpo-cai.md)."),
    preset: Optional[str] = typer.Option(None, "--preset", help="A named recipe: lora-cpu, smoke."),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Preference dataset name under .twin/datasets/ or a JSONL file."),
    validation: Optional[str] = typer.Option(None, "--validation", help="A JSONL file of held-out pairs."),
    base: Optional[str] = typer.Option(None, "--base", help="Base model: packaged or a Hugging Face dir."),
    beta: Optional[float] = typer.Option(None, "--beta", help="DPO β (strength of the pull to the reference)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after N optimizer steps."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe field, e.g. --set lr=1e-4."),
    run_name: Optional[str] = typer.Option(None, "--run-name", help="Run directory name under .twin/runs/."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Resume an unfinished identical run from its last checkpoint."),
    register: bool = typer.Option(True, "--register/--no-register", help="Register the model (alias candidate)."),
    name: Optional[str] = typer.Option(None, "--name", help="Registered model name (default twin-dpo)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """DPO on preference pairs with a LoRA policy; the reference is the base with the adapter off."""
    from llmtwin.training.dpo import train_dpo
    from llmtwin.training.recipe_pref import build_pref_recipe

    recipe = build_pref_recipe("dpo", config, preset, set_, {"dataset": dataset, "validation": validation,
                                                            "base": base, "beta": beta, "max_steps": max_steps})
    root, cfg = _project_and_config()
    result = train_dpo(recipe, root, run_name=run_name, resume=resume, register=register, name=name, config=cfg, progress=not as_json)
    m, ev = result.card["metrics"], result.card["evaluation"]
    lines = [f"dpo: {m['steps']} steps in {m['train_seconds']:.0f}s, train loss {_fmt(m.get('final_train_loss'), '.4f')}"]
    if ev["held_out_pairs"]:
        lines.append(
            f"held-out pairs ({ev['held_out_pairs']}, {ev['split']}): reward accuracy "
            f"{_fmt(m.get('heldout_reward_accuracy_before'))} → {_fmt(m.get('heldout_reward_accuracy_after'))}, "
            f"margin {_fmt(m.get('heldout_reward_margin_before'), '.4f')} → {_fmt(m.get('heldout_reward_margin_after'), '.4f')}; "
            f"log-prob accuracy {_fmt(m.get('heldout_logp_accuracy_before'))} → {_fmt(m.get('heldout_logp_accuracy_after'))}")
    else:
        lines.append("no held-out pairs (set validation or validation_fraction > 0 to measure)")
    _report(result, as_json, lines)


def grpo(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Recipe YAML (fields: docs/alignment-dpo-grpo-cai.md)."),
    preset: Optional[str] = typer.Option(None, "--preset", help="A named recipe: lora-cpu, smoke."),
    prompts: Optional[str] = typer.Option(None, "--prompts", "-d", help="Prompts JSONL (with answer / tests columns for the rewards)."),
    validation: Optional[str] = typer.Option(None, "--validation", help="Held-out prompts: mean reward before and after."),
    reward_spec: list[str] = typer.Option([], "--reward", help="Reward spec, repeatable (summed): exact, regex:PATTERN, code, model:REF."),
    base: Optional[str] = typer.Option(None, "--base", help="Base model: packaged or a Hugging Face dir."),
    num_generations: Optional[int] = typer.Option(None, "--num-generations", "-g", help="Group size: completions per prompt."),
    beta: Optional[float] = typer.Option(None, "--beta", help="KL coefficient (> 0)."),
    kl_stop: Optional[float] = typer.Option(None, "--kl-stop", help="Stop training when the logged KL exceeds this."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Optimizer steps."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe field, e.g. --set max_new_tokens=48."),
    run_name: Optional[str] = typer.Option(None, "--run-name", help="Run directory name under .twin/runs/."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Resume an unfinished identical run from its last checkpoint."),
    register: bool = typer.Option(True, "--register/--no-register", help="Register the model (alias candidate)."),
    name: Optional[str] = typer.Option(None, "--name", help="Registered model name (default twin-grpo)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """GRPO: groups of sampled completions per prompt, verifiable rewards, KL to the base with a stop bound."""
    from llmtwin.training.grpo import train_grpo
    from llmtwin.training.recipe_pref import build_pref_recipe

    recipe = build_pref_recipe("grpo", config, preset, set_, {
        "prompts": prompts, "validation": validation, "reward": reward_spec or None, "base": base,
        "num_generations": num_generations, "beta": beta, "kl_stop": kl_stop, "max_steps": max_steps})
    root, cfg = _project_and_config()
    result = train_grpo(recipe, root, run_name=run_name, resume=resume, register=register, name=name, config=cfg, progress=not as_json)
    card, m = result.card, result.card["metrics"]
    lines = [
        f"grpo: {m['steps']} steps in {m['train_seconds']:.0f}s; mean reward {_fmt(m.get('first_reward'))} (step 1) → "
        f"{_fmt(m.get('final_reward'))} (last), max KL {_fmt(m.get('max_kl'), '.4g')}",
        f"groups with all-equal rewards (no signal): {m['zero_std_groups']} of {m['groups']}"
        f" ({m['steps_without_signal']} steps had no signal at all)",
    ]
    if card["guard"].get("kl_stopped"):
        lines.append(f"stopped at step {card['guard']['kl_stop_step']}: KL {card['guard']['kl_at_stop']:.4g} > "
                     f"kl_stop {card['guard']['kl_stop']}")
    if "heldout_reward_before" in m:
        lines.append(f"held-out mean reward (greedy): {_fmt(m['heldout_reward_before'])} → {_fmt(m.get('heldout_reward_after'))}")
    if card.get("code_isolation") and card["code_isolation"] != "bwrap":
        lines.append(f"WARNING: code rewards ran in a {card['code_isolation']}")
    lines.append(f"samples: {result.run_dir / 'samples.jsonl'}")
    _report(result, as_json, lines, {"guard": card["guard"]})


def constitutional(
    constitution: Optional[Path] = typer.Option(None, "--constitution", help="Principles YAML (name, critique, revision)."),
    prompts: Optional[Path] = typer.Option(None, "--prompts", "-d", help="Red-team prompts: text (one per line) or JSONL with prompt."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Recipe YAML (fields: docs/alignment-dpo-grpo-cai.md)."),
    preset: Optional[str] = typer.Option(None, "--preset", help="A named recipe: lora-cpu, smoke."),
    stages: Optional[str] = typer.Option(None, "--stages", help="sl (critique/revise + SFT), rl (AI preferences + DPO) or both."),
    base: Optional[str] = typer.Option(None, "--base", help="Base model: packaged or a Hugging Face dir."),
    max_prompts: Optional[int] = typer.Option(None, "--max-prompts", help="Use at most N prompts."),
    held_out: Optional[Path] = typer.Option(None, "--held-out", help="Evaluation-only prompts (same formats); default: a share of --prompts."),
    judge_model: Optional[str] = typer.Option(None, "--judge-model", help="A reward model (run dir or NAME@ALIAS) that judges instead of the LLM."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe field, e.g. --set sft_steps=40."),
    run_name: Optional[str] = typer.Option(None, "--run-name", help="Run directory name under .twin/runs/."),
    register: bool = typer.Option(True, "--register/--no-register", help="Register the model (alias candidate)."),
    name: Optional[str] = typer.Option(None, "--name", help="Registered model name (default twin-constitutional)."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Keep the generated rows of an unfinished identical run."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Constitutional AI: critique and revise by principles, SFT on revisions, AI-judged pairs, DPO."""
    from llmtwin.training.constitutional import train_constitutional
    from llmtwin.training.recipe_pref import build_pref_recipe

    recipe = build_pref_recipe("constitutional", config, preset, set_, {
        "constitution": str(constitution) if constitution else None, "prompts": str(prompts) if prompts else None,
        "stages": stages, "base": base, "max_prompts": max_prompts, "judge_model": judge_model,
        "held_out_prompts": str(held_out) if held_out else None})
    root, cfg = _project_and_config()
    result = train_constitutional(recipe, root, run_name=run_name, resume=resume, register=register, name=name, config=cfg,
                                  progress=not as_json)
    m = result.card["metrics"]
    lines = [f"constitutional ({recipe.stages}): {m.get('prompts', 0)} prompts, {m.get('revisions', 0)} revisions, "
             f"{m.get('preference_pairs', 0)} AI-labelled pairs ({m.get('judge_ties', 0)} ties dropped)"]
    if "revision_win_rate" in m:
        ev = result.card["evaluation"]["revisions_vs_originals"]
        how = "reward model" if ev.get("judge") == "reward_model" else "LLM judge, both orders"
        line = (f"revisions vs originals by the principles ({how}): win {m['revision_win_rate']:.2f}, "
                f"loss {m['revision_loss_rate']:.2f}, tie {m['revision_tie_rate']:.2f}")
        if "mean_p_revision" in ev:
            line += (f"; P(revision better) {ev['mean_p_revision']:.3f}, preferred {ev['preferred']}/{ev['judged']} "
                     f"(sign test p {ev['sign_test_p']:.3f})")
        lines.append(line)
    if "check_pass_original" in m:
        lines.append(f"deterministic checks passed: originals {m['check_pass_original']:.2f} → revisions "
                     f"{m['check_pass_revision']:.2f}")
    _report(result, as_json, lines)


def register(train_app: typer.Typer) -> None:
    train_app.command("dpo")(dpo)
    train_app.command("grpo")(grpo)
    train_app.command("constitutional")(constitutional)
