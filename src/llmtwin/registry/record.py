"""record_run: a trained run directory → an MLflow run (params, tags, curves, artifacts) and a
registered model version with alias `candidate`.

The run directory follows the shared contract (docs/registry.md): `model/` (a Hugging Face dir or
a PEFT adapter dir), `twin_model.json` (kind, method, base, base_dir, adapter, recipe, datasets,
metrics, created, run_name) and `metrics.jsonl` (one `{"step": n, "loss": ..., ...}` per line).

Where the model files go (`registry.artifacts`):
- `copy` (default): `model/` is copied into the registry's artifact store, so a registered version
  still resolves after the run directory is deleted (and works through a tracking server).
- `reference`: only twin_model.json and metrics.jsonl are copied; the version's source is the run's
  `model/` dir on this machine (no second copy of a large full model; deleting the run breaks it).
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from pathlib import Path
from typing import Any

from llmtwin.config import TwinConfig
from llmtwin.errors import TwinError

log = logging.getLogger(__name__)

CANDIDATE = "candidate"
CHAMPION = "champion"
CARD_FILE = "twin_model.json"
METRICS_FILE = "metrics.jsonl"
_REQUIRED = ("kind", "method", "base")
_REF = re.compile(r"^(?P<name>[A-Za-z0-9_.\-]+)(?:@(?P<alias>[A-Za-z0-9_\-]+)|/(?P<version>\d+))?$")


def read_card(run_dir: Path) -> dict[str, Any]:
    """twin_model.json of a run dir, checked for the fields the registry needs."""
    path = Path(run_dir) / CARD_FILE
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise TwinError(f"{path}: missing (a run dir needs model/ and {CARD_FILE})") from e
    except (OSError, json.JSONDecodeError) as e:
        raise TwinError(f"{path}: cannot read: {e}") from e
    if not isinstance(card, dict):
        raise TwinError(f"{path}: expected a JSON object")
    missing = [k for k in _REQUIRED if not card.get(k)]
    if missing:
        raise TwinError(f"{path}: missing field(s) {', '.join(missing)}")
    return card


def parse_ref(ref: str) -> tuple[str, str | None, int | None]:
    """`NAME@ALIAS` → (name, alias, None); `NAME/3` → (name, None, 3); `NAME` → (name, None, None)."""
    m = _REF.match(ref.strip())
    if not m:
        raise TwinError(f"model reference {ref!r}: expected NAME@ALIAS, NAME/VERSION or NAME")
    version = m.group("version")
    return m.group("name"), m.group("alias"), int(version) if version else None


def is_registry_ref(base: str) -> bool:
    """A base that names a registered model (not 'packaged', not an existing path)."""
    if base == "packaged" or Path(base).expanduser().exists() or base.startswith(("/", ".", "~")):
        return False
    return bool(_REF.match(base)) and ("@" in base or "/" in base)


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """Nested dicts → dotted keys; values as strings (lists as JSON), cut to MLflow's 6000 chars."""
    out: dict[str, str] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    else:
        text = data if isinstance(data, str) else json.dumps(data, default=str)
        out[re.sub(r"[^A-Za-z0-9_\-. /:]", "_", prefix or "value")[:250]] = text[:6000]
    return out


def read_metrics(path: Path) -> tuple[list[tuple[str, float, int]], list[str]]:
    """(key, value, step) for every numeric scalar of metrics.jsonl, and the problems found."""
    rows: list[tuple[str, float, int]] = []
    problems: list[str] = []
    if not path.is_file():
        return rows, problems
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            step = int(record.get("step", n - 1))
        except (json.JSONDecodeError, AttributeError, TypeError, ValueError) as e:
            problems.append(f"{path}:{n}: {e}")
            continue
        for key, value in record.items():
            if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if not math.isfinite(value):
                continue  # MLflow stores NaN/inf poorly; a gap in the curve says the same
            rows.append((re.sub(r"[^A-Za-z0-9_\-. /]", "_", key), float(value), step))
    return rows, problems


def _lineage(tracking, base: str) -> dict[str, str]:
    """Tags naming the parent registered model version when the base is itself a registry ref."""
    if not is_registry_ref(base):
        return {}
    name, alias, version = parse_ref(base)
    try:
        if alias:
            mv = tracking.client.get_model_version_by_alias(name, alias)
        elif version is not None:
            mv = tracking.client.get_model_version(name, str(version))
        else:
            return {"twin.parent.name": name}
    except Exception:  # noqa: BLE001 - a base from another registry: keep the ref itself
        return {"twin.parent.name": name}
    return {"twin.parent.name": name, "twin.parent.version": str(mv.version)}


def _ensure_registered_model(client, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        try:
            client.create_registered_model(name, description="llmtwin model (twin models show)")
        except MlflowException:  # created meanwhile by another process
            client.get_registered_model(name)


def record_run(
    project_root: Path, run_dir: Path, name: str | None = None, config: TwinConfig | None = None
) -> dict:
    """Log a trained run dir to MLflow and register its model as a new version with alias `candidate`.

    Returns {"name", "version", "run_id", "ref": "name@candidate"}.
    """
    from mlflow.entities import Metric, Param

    from llmtwin.registry.tracking import open_tracking

    run_dir = Path(run_dir).resolve()
    card = read_card(run_dir)
    model_dir = run_dir / "model"
    if not model_dir.is_dir() or not any(model_dir.iterdir()):
        raise TwinError(f"{model_dir}: missing or empty (the trained model or adapter goes there)")
    config = config or TwinConfig()
    name = name or config.registry.model_name or f"twin-{card['method']}"
    parse_ref(name)  # a registered model name must be a plain NAME
    if "@" in name or "/" in name:
        raise TwinError(f"--name {name!r}: a registered model name cannot contain '@' or '/'")

    tracking = open_tracking(project_root, config)
    client = tracking.client
    run_name = str(card.get("run_name") or run_dir.name)
    datasets = card.get("datasets") or {}
    tags = {
        "twin.kind": str(card["kind"]),
        "twin.method": str(card["method"]),
        "twin.base": str(card["base"]),
        "twin.base_dir": str(card.get("base_dir") or ""),
        "twin.adapter": str(bool(card.get("adapter"))).lower(),
        "twin.run_name": run_name,
        "twin.run_dir": str(run_dir),
        "twin.created": str(card.get("created") or ""),
        **{f"twin.dataset.{k}": str(v) for k, v in datasets.items() if v},
        **_lineage(tracking, str(card["base"])),
    }
    run = client.create_run(tracking.experiment_id(), run_name=run_name, tags=tags)
    run_id = run.info.run_id
    try:
        params = flatten(card.get("recipe") or {}, "recipe")
        params.update({"kind": str(card["kind"]), "method": str(card["method"]), "base": str(card["base"])})
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            client.log_batch(run_id, params=items[i : i + 100], synchronous=True)

        now = int(time.time() * 1000)
        curve, problems = read_metrics(run_dir / METRICS_FILE)
        for problem in problems:
            log.warning("registry: skipped a metrics line: %s", problem)
        last_step = max((s for _, _, s in curve), default=0)
        final = {
            f"final.{k}" if any(k == c[0] for c in curve) else k: float(v)
            for k, v in (card.get("metrics") or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        }
        metrics = [Metric(k, v, now, s) for k, v, s in curve] + [Metric(k, v, now, last_step) for k, v in final.items()]
        for i in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[i : i + 1000], synchronous=True)

        client.log_artifact(run_id, str(run_dir / CARD_FILE))
        if (run_dir / METRICS_FILE).is_file():
            client.log_artifact(run_id, str(run_dir / METRICS_FILE))
        if config.registry.artifacts == "copy":
            client.log_artifacts(run_id, str(model_dir), "model")
            source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/model"
        else:
            source = model_dir.as_uri()
        client.set_terminated(run_id, "FINISHED")
    except Exception:
        client.set_terminated(run_id, "FAILED")
        raise

    _ensure_registered_model(client, name)
    version_tags = {k: v for k, v in tags.items() if k != "twin.run_dir"} | {"twin.artifacts": config.registry.artifacts}
    mv = client.create_model_version(name, source, run_id=run_id, tags=version_tags, await_creation_for=0)
    client.set_registered_model_alias(name, CANDIDATE, str(mv.version))
    return {"name": name, "version": int(mv.version), "run_id": run_id, "ref": f"{name}@{CANDIDATE}"}
