"""A dataset on disk: train.jsonl, validation.jsonl and card.json, and its content hash."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SPLITS = ("train", "validation")


def dataset_hash(path: Path) -> str:
    """`sha256:<hex>` over train.jsonl bytes then validation.jsonl bytes (a dataset dir), or over the
    file itself (a plain JSONL path). A missing split counts as empty."""
    path = Path(path)
    h = hashlib.sha256()
    files = [path] if path.is_file() else [path / f"{s}.jsonl" for s in SPLITS]
    for f in files:
        if f.exists():
            with f.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return "sha256:" + h.hexdigest()


def dumps(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, sort_keys=False)


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    """Write atomically (a temp file renamed into place): a crash never leaves half a split."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for r in records:
            fh.write(dumps(r) + "\n")
    os.replace(tmp, path)


def write_dataset(
    out_dir: Path, train: list[dict[str, Any]], validation: list[dict[str, Any]], card: dict[str, Any]
) -> dict[str, Any]:
    """Write both splits and card.json (with `content_hash` and `created` filled in); return the card."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(out_dir / "train.jsonl", train)
    write_jsonl(out_dir / "validation.jsonl", validation)
    card = {
        "name": card.get("name", out_dir.name),
        **card,
        "content_hash": dataset_hash(out_dir),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    card.setdefault("counts", {}).update({"train": len(train), "validation": len(validation)})
    (out_dir / "card.json").write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return card


def read_card(out_dir: Path) -> dict[str, Any]:
    return json.loads((Path(out_dir) / "card.json").read_text(encoding="utf-8"))


def in_validation(key: str, fraction: float, seed: int = 0) -> bool:
    """Deterministic split: a record goes to validation when the hash of its key (the source chunk,
    or the prompt) falls under `fraction`, so records sharing a key always land in the same split."""
    digest = hashlib.sha256(f"{seed}\x1f{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def split(records: list[dict[str, Any]], key: str, fraction: float, seed: int = 0) -> tuple[list, list]:
    """(train, validation) by `in_validation(record[key])`; when that leaves validation empty and there
    are two keys or more, the key nearest the threshold goes to validation (a split always has both)."""
    train, val = [], []
    for r in records:
        (val if in_validation(str(r[key]), fraction, seed) else train).append(r)
    keys = sorted({str(r[key]) for r in records})
    if fraction > 0 and not val and len(keys) >= 2:
        def score(k: str) -> int:
            return int.from_bytes(hashlib.sha256(f"{seed}\x1f{k}".encode()).digest()[:8], "big")

        chosen = min(keys, key=score)
        val = [r for r in records if str(r[key]) == chosen]
        train = [r for r in records if str(r[key]) != chosen]
    return train, val
