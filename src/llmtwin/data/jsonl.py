"""Reading user JSONL: each good line as (line number, object); each bad one reported with file:line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmtwin.errors import TwinError


@dataclass
class BadLine:
    path: str
    line: int
    error: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.error}"

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "line": self.line, "error": self.error}


def read_jsonl(path: Path, bad: list[BadLine]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Objects of a JSONL file with their 1-based line numbers; blank lines are skipped, lines that are
    not a JSON object are appended to `bad`. A missing or unreadable file is a TwinError."""
    path = Path(path)
    if not path.is_file():
        raise TwinError(f"{path}: no such file")
    try:
        fh = path.open(encoding="utf-8")
    except OSError as e:
        raise TwinError(f"{path}: cannot read: {e}") from e
    with fh:
        try:
            for n, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    bad.append(BadLine(str(path), n, f"not valid JSON ({e.msg})"))
                    continue
                if not isinstance(obj, dict):
                    bad.append(BadLine(str(path), n, f"expected a JSON object, got {type(obj).__name__}"))
                    continue
                yield n, obj
        except UnicodeDecodeError as e:
            raise TwinError(f"{path}: not UTF-8 ({e})") from e


def jsonl_files(paths: list[str | Path], root: Path | None = None) -> list[Path]:
    """Files named, and every *.jsonl under folders named (sorted); relative paths are taken from `root`."""
    out: list[Path] = []
    for p in paths:
        path = Path(p).expanduser()
        if not path.is_absolute() and root is not None:
            path = root / path
        if path.is_dir():
            out.extend(sorted(path.rglob("*.jsonl")))
        elif path.is_file():
            out.append(path)
        else:
            raise TwinError(f"{path}: no such file or directory (eval set)")
    return out
