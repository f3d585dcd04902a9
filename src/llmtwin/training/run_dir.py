"""A training run's directory: naming, finding an unfinished run to resume, writing twin_model.json, recording.

Layout (shared contract): `.twin/runs/<run_name>/` with `model/`, `twin_model.json`, `metrics.jsonl`,
plus `recipe.json` (what was asked) and `checkpoints/` while training.
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

CARD = "twin_model.json"
RECIPE = "recipe.json"


def runs_root(project_root: Path) -> Path:
    return project_root / ".twin" / "runs"


def new_run_name(prefix: str) -> str:
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoints/checkpoint-N with a trainer_state.json (an interrupted save has none)."""
    found = []
    for d in (run_dir / "checkpoints").glob("checkpoint-*"):
        if d.is_dir() and (d / "trainer_state.json").is_file() and d.name.split("-")[-1].isdigit():
            found.append((int(d.name.split("-")[-1]), d))
    return max(found)[1] if found else None


def trainable_state(module) -> dict:
    """A copy of `module`'s trainable weights (LoRA, heads): what a checkpoint or a rollback keeps."""
    return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


def restore_trainable(module, state: dict, source: object = "the saved state") -> None:
    """Copy `trainable_state` output back into `module` (built by the same recipe)."""
    import torch

    from llmtwin.errors import TwinError

    params = dict(module.named_parameters())
    missing = sorted(set(state) - set(params))
    if missing:
        raise TwinError(f"{source}: does not fit this model (e.g. {missing[0]})")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def save_state(run_dir: Path, step: int, state: dict) -> None:
    """checkpoints/checkpoint-N of our own training loops (reward model, PPO): `state` (tensors,
    optimizer state, data order, RNG states…) in state.pt, plus the trainer_state.json that
    `last_checkpoint` looks for. Written under a temporary name and renamed; older ones removed."""
    import shutil

    import torch

    root = run_dir / "checkpoints"
    target, tmp = root / f"checkpoint-{step}", root / f".tmp-checkpoint-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(state, tmp / "state.pt")
    (tmp / "trainer_state.json").write_text(json.dumps({"global_step": step}), encoding="utf-8")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    for old in root.glob("checkpoint-*"):
        if old != target:
            shutil.rmtree(old, ignore_errors=True)


def load_state(checkpoint: Path) -> dict:
    """What `save_state` wrote (a checkpoint of this project's own run: trusted, so not weights-only)."""
    import torch

    return torch.load(checkpoint / "state.pt", weights_only=False)


def find_unfinished(root: Path, prefix: str, recipe_json: str, started=None) -> Path | None:
    """The newest run `<prefix>-*` with the same recipe, no twin_model.json yet and something to
    resume from: a checkpoint, or whatever `started(run_dir)` accepts."""
    if not root.is_dir():
        return None
    started = started or (lambda d: last_checkpoint(d) is not None)
    candidates = sorted((d for d in root.glob(f"{prefix}-*") if d.is_dir()), key=lambda d: d.stat().st_mtime, reverse=True)
    for d in candidates:
        if (d / CARD).exists() or not (d / RECIPE).is_file():
            continue
        if (d / RECIPE).read_text(encoding="utf-8") == recipe_json and started(d):
            return d
    return None


def prepare(project_root: Path, prefix: str, recipe_json: str, run_name: str | None, resume: bool
            ) -> tuple[Path, Path | None, int | None]:
    """(run dir, checkpoint to resume from, its step): an explicit name, else an unfinished identical run, else new."""
    import shutil

    from llmtwin.errors import TwinError
    from llmtwin.training.callbacks import truncate_metrics

    root = runs_root(project_root)
    run_dir = root / run_name if run_name else (find_unfinished(root, prefix, recipe_json) if resume else None)
    run_dir = run_dir or root / new_run_name(prefix)
    if (run_dir / CARD).exists():
        raise TwinError(f"{run_dir}: this run is finished (twin_model.json exists); choose another --run-name")
    checkpoint = last_checkpoint(run_dir) if resume else None
    if not resume and (run_dir / "checkpoints").exists():
        shutil.rmtree(run_dir / "checkpoints")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RECIPE).write_text(recipe_json, encoding="utf-8")
    metrics = run_dir / "metrics.jsonl"
    step = int(checkpoint.name.split("-")[-1]) if checkpoint else None
    if step is not None:
        truncate_metrics(metrics, step)
    else:
        metrics.unlink(missing_ok=True)
    return run_dir, checkpoint, step


def resolve_base(base: str, project_root: Path, config=None) -> str:
    """'packaged', a HF dir, or a registered model (NAME@ALIAS, NAME/VERSION): its runnable HF dir (adapters merged)."""
    from llmtwin.registry.record import is_registry_ref

    if not is_registry_ref(base):
        return base
    from llmtwin.registry.merge import runnable_dir
    from llmtwin.registry.models import resolve

    return str(runnable_dir(project_root, resolve(project_root, base, config), config))


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_card(run_dir: Path, card: dict) -> None:
    (run_dir / CARD).write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def record(project_root: Path, run_dir: Path, name: str | None, config) -> tuple[dict | None, str | None]:
    """Register the run (MLflow run + model version with alias `candidate`); (result, None) or (None, why not)."""
    try:
        from llmtwin.registry.record import record_run
    except ImportError as e:
        return None, f"not registered: the model registry is not available ({e})"
    return record_run(project_root, run_dir, name=name, config=config), None
