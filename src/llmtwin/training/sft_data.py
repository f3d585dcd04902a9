"""SFT data: find a dataset (a name under .twin/datasets/ or a JSONL file), read and check its rows, hash it.

Rows are TRL conversational prompt/completion: `{"prompt": [messages], "completion": [messages], ...}`;
other keys are metadata and are dropped. A bad line is reported (file:line: reason) and skipped.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from llmtwin.errors import TwinError
from llmtwin.training.records import as_messages, read_records


@dataclass
class SFTData:
    train: list[dict]
    validation: list[dict]
    train_path: Path
    validation_path: Path | None
    hashes: dict[str, str]  # {"train": "sha256:…", "validation": "sha256:…"}
    bad_lines: list[str] = field(default_factory=list)  # "file:line: reason"


def file_hash(*paths: Path) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(path.read_bytes())
    return "sha256:" + h.hexdigest()


def _sft_row(obj: dict) -> dict:
    prompt = as_messages(obj.get("prompt"), "prompt")
    completion = as_messages(obj.get("completion"), "completion")
    if completion[-1]["role"] != "assistant":
        raise ValueError("completion: the last message must be the assistant's")
    return {"prompt": prompt, "completion": completion}


def read_rows(path: Path) -> tuple[list[dict], list[str]]:
    """(rows with only prompt/completion, bad lines as 'file:line: reason')."""
    return read_records(path, _sft_row)


def resolve_dataset(ref: str, project_root: Path | None) -> tuple[Path, Path | None]:
    """(train.jsonl, validation.jsonl or None) for a dataset name under .twin/datasets/ or a JSONL path."""
    path = Path(ref).expanduser()
    if path.is_file():
        return path, None
    if path.is_dir() and (path / "train.jsonl").is_file():
        val = path / "validation.jsonl"
        return path / "train.jsonl", val if val.is_file() else None
    if project_root is not None:
        folder = project_root / ".twin" / "datasets" / ref
        if (folder / "train.jsonl").is_file():
            val = folder / "validation.jsonl"
            return folder / "train.jsonl", val if val.is_file() else None
    raise TwinError(
        f"dataset {ref!r}: not a JSONL file and no .twin/datasets/{ref}/train.jsonl"
        + ("" if project_root is None else f" in {project_root}")
        + " (build one with `twin data build` or pass a JSONL path)"
    )


def load_sft_data(dataset: str, validation: str | None, project_root: Path | None) -> SFTData:
    train_path, val_path = resolve_dataset(dataset, project_root)
    if validation is not None:
        val_path = Path(validation).expanduser()
        if not val_path.is_file():
            raise TwinError(f"validation {validation!r}: no such file")
    train, bad = read_rows(train_path)
    val: list[dict] = []
    if val_path is not None:
        val, bad_val = read_rows(val_path)
        bad += bad_val
    if not train:
        raise TwinError(f"{train_path}: no usable prompt/completion rows" + (f" ({bad[0]})" if bad else ""))
    card = train_path.parent / "card.json"
    hashes = {"train": file_hash(train_path), "validation": file_hash(val_path) if val_path else None}
    if train_path.name == "train.jsonl" and card.is_file():
        try:
            hashes["dataset"] = json.loads(card.read_text(encoding="utf-8")).get("content_hash")
        except (OSError, ValueError):
            pass
    return SFTData(train, val, train_path, val_path, hashes, bad)
