"""Registered models: list, show, resolve a reference to a local model dir, move aliases.

A reference is `NAME@ALIAS` (`twin-sft@champion`), `NAME/VERSION` (`twin-sft/3`) or `NAME` (the
latest version). Resolving gives the version's `model/` dir on this machine and its twin_model.json:
a local registry points straight into its artifact store (or, for `registry.artifacts: reference`,
at the run dir); a tracking server's artifacts are downloaded once into `.twin/cache/registry/`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from llmtwin.config import TwinConfig
from llmtwin.errors import TwinError
from llmtwin.registry.record import CARD_FILE, parse_ref
from llmtwin.registry.tracking import Tracking, open_tracking


@dataclass
class VersionInfo:
    name: str
    version: int
    aliases: list[str]
    source: str
    run_id: str | None
    created: int  # ms since epoch
    tags: dict[str, str]
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.tags.get("twin.kind", "?")

    def lineage(self) -> dict[str, Any]:
        parent = self.tags.get("twin.parent.name")
        return {
            "base": self.tags.get("twin.base"),
            "base_dir": self.tags.get("twin.base_dir"),
            "parent": f"{parent}/{self.tags['twin.parent.version']}" if parent and "twin.parent.version" in self.tags else parent,
            "datasets": {k.split(".", 2)[2]: v for k, v in self.tags.items() if k.startswith("twin.dataset.")},
            "run_name": self.tags.get("twin.run_name"),
            "run_id": self.run_id,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "version": self.version, "aliases": self.aliases, "kind": self.kind,
            "method": self.tags.get("twin.method"), "source": self.source, "created": self.created,
            "metrics": self.metrics, "lineage": self.lineage(),
            "evaluation": {k[len("twin.eval."):]: v for k, v in self.tags.items() if k.startswith("twin.eval.")},
        }


@dataclass
class ResolvedModel:
    """A registered version on this machine: its model dir (HF dir or PEFT adapter) and card."""

    name: str
    version: int
    model_dir: Path
    card: dict[str, Any]
    info: VersionInfo

    @property
    def ref(self) -> str:
        return f"{self.name}/{self.version}"

    @property
    def adapter(self) -> bool:
        return (self.model_dir / "adapter_config.json").is_file()


def _version_info(tracking: Tracking, mv, aliases: list[str] | None = None, with_metrics: bool = False) -> VersionInfo:
    metrics: dict[str, float] = {}
    if with_metrics and mv.run_id:
        try:
            metrics = dict(tracking.client.get_run(mv.run_id).data.metrics)
        except Exception:  # noqa: BLE001 - a run deleted from the tracking store
            metrics = {}
    return VersionInfo(
        name=mv.name, version=int(mv.version), aliases=sorted(aliases if aliases is not None else (mv.aliases or [])),
        source=mv.source, run_id=mv.run_id, created=int(mv.creation_timestamp or 0), tags=dict(mv.tags or {}),
        metrics=metrics,
    )


def list_models(root: Path, config: TwinConfig | None = None) -> list[dict[str, Any]]:
    """Every registered model: name, latest version, aliases → version, kinds."""
    tracking = open_tracking(root, config)
    out = []
    for rm in tracking.client.search_registered_models(max_results=1000):
        versions = versions_of(tracking, rm.name)
        out.append({
            "name": rm.name,
            "versions": len(versions),
            "latest": max((v.version for v in versions), default=None),
            "aliases": {a: int(v) for a, v in sorted((rm.aliases or {}).items())},
            "kinds": sorted({v.kind for v in versions}),
        })
    return sorted(out, key=lambda m: m["name"])


def versions_of(tracking: Tracking, name: str, with_metrics: bool = False) -> list[VersionInfo]:
    mvs = tracking.client.search_model_versions(f"name = '{name}'", max_results=10000)
    aliases: dict[int, list[str]] = {}  # search results carry no aliases: take them from the model
    for alias, version in (tracking.client.get_registered_model(name).aliases or {}).items():
        aliases.setdefault(int(version), []).append(alias)
    infos = (_version_info(tracking, mv, aliases.get(int(mv.version), []), with_metrics) for mv in mvs)
    return sorted(infos, key=lambda v: v.version)


def show_model(root: Path, name: str, config: TwinConfig | None = None) -> dict[str, Any]:
    """One registered model with all its versions (aliases, metrics, lineage, evaluations)."""
    tracking = open_tracking(root, config)
    base, alias, version = parse_ref(name)
    rm = _registered(tracking, base)
    versions = versions_of(tracking, base, with_metrics=True)
    if alias or version is not None:
        wanted = _get_version(tracking, base, alias, version).version
        versions = [v for v in versions if v.version == wanted]
    return {
        "name": rm.name,
        "description": rm.description,
        "aliases": {a: int(v) for a, v in sorted((rm.aliases or {}).items())},
        "versions": [v.to_dict() for v in versions],
    }


def _registered(tracking: Tracking, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return tracking.client.get_registered_model(name)
    except MlflowException as e:
        known = ", ".join(m.name for m in tracking.client.search_registered_models(max_results=50)) or "none yet"
        raise TwinError(f"no registered model {name!r} in {tracking.uri} (registered: {known})") from e


def _get_version(tracking: Tracking, name: str, alias: str | None, version: int | None):
    from mlflow.exceptions import MlflowException

    rm = _registered(tracking, name)
    try:
        if alias:
            return tracking.client.get_model_version_by_alias(name, alias)
        if version is not None:
            return tracking.client.get_model_version(name, str(version))
    except MlflowException as e:
        what = f"alias {alias!r}" if alias else f"version {version}"
        aliases = ", ".join(f"{a}→{v}" for a, v in sorted((rm.aliases or {}).items())) or "no aliases"
        raise TwinError(f"registered model {name!r} has no {what} ({aliases})") from e
    mvs = tracking.client.search_model_versions(f"name = '{name}'", max_results=10000)
    if not mvs:
        raise TwinError(f"registered model {name!r} has no versions")
    return max(mvs, key=lambda mv: int(mv.version))


def _local_path(uri: str) -> Path | None:
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" and uri.startswith("/"):
        return Path(uri)
    return None


def resolve(root: Path, ref: str, config: TwinConfig | None = None) -> ResolvedModel:
    """`NAME@ALIAS` | `NAME/VERSION` | `NAME` → the version's local model dir and twin_model.json."""
    tracking = open_tracking(root, config)
    name, alias, version = parse_ref(ref)
    mv = _get_version(tracking, name, alias, version)
    info = _version_info(tracking, mv)
    local = _local_path(mv.source)
    if local is not None:
        model_dir, card_path = local, local.parent / CARD_FILE
    else:  # a tracking server: fetch the artifacts once into the project's cache
        import mlflow.artifacts

        cache = Path(root).resolve() / ".twin" / "cache" / "registry" / name / f"v{info.version}"
        model_dir, card_path = cache / "model", cache / CARD_FILE
        if not (cache / ".complete").is_file():
            cache.mkdir(parents=True, exist_ok=True)
            mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(cache), tracking_uri=tracking.uri)
            downloaded = cache / Path(urlparse(mv.source).path).name
            if downloaded != model_dir and downloaded.is_dir():
                downloaded.rename(model_dir)
            mlflow.artifacts.download_artifacts(
                run_id=mv.run_id, artifact_path=CARD_FILE, dst_path=str(cache), tracking_uri=tracking.uri
            )
            (cache / ".complete").write_text("ok", encoding="utf-8")
    if not model_dir.is_dir():
        raise TwinError(
            f"{name}/{info.version}: its model files are gone ({model_dir}); "
            "it was registered with registry.artifacts=reference and the run dir was deleted"
        )
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        card = {"kind": info.kind, "method": info.tags.get("twin.method"), "base": info.tags.get("twin.base"),
                "base_dir": info.tags.get("twin.base_dir")}
    return ResolvedModel(name=name, version=info.version, model_dir=model_dir, card=card, info=info)


def set_alias(root: Path, name: str, alias: str, version: int, config: TwinConfig | None = None) -> None:
    open_tracking(root, config).client.set_registered_model_alias(name, alias, str(version))


def tag_version(root: Path, name: str, version: int, tags: dict[str, str], config: TwinConfig | None = None) -> None:
    client = open_tracking(root, config).client
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, str(value))


def served_models(root: Path, config: TwinConfig) -> list[dict[str, Any]]:
    """What the server lists for the registry: `NAME@ALIAS` for every alias and `NAME` (the latest
    version). Empty when the project has no registry yet (nothing is created by listing)."""
    from llmtwin.registry.tracking import DB_FILE

    if not config.registry.tracking_uri and not (Path(root) / ".twin" / DB_FILE).is_file():
        return []
    out = []
    for m in list_models(root, config):
        for alias, version in m["aliases"].items():
            out.append({"id": f"{m['name']}@{alias}", "version": version, "kinds": m["kinds"]})
        if m["latest"] is not None:
            out.append({"id": m["name"], "version": m["latest"], "kinds": m["kinds"]})
    return out
