"""Reading training JSONL (SFT rows, preference pairs, prompts): each trainer gives a row parser;
a line that is not JSON, or that its parser rejects, is reported as 'file:line: reason' and skipped."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from llmtwin.errors import TwinError

ROLES = ("system", "user", "assistant")
T = TypeVar("T")


def as_messages(value: object, key: str, role: str | None = None) -> list[dict[str, str]]:
    """A conversational list of {role, content} messages; with `role`, a non-empty string is also taken
    as one message of that role. Raises ValueError naming `key` (and the message index)."""
    if role is not None and isinstance(value, str) and value.strip():
        return [{"role": role, "content": value}]
    if not isinstance(value, list) or not value:
        what = "a non-empty string or list of messages" if role is not None else "a non-empty list of messages"
        raise ValueError(f"{key}: expected {what}")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ValueError(f"{key}[{i}]: expected {{'role': system|user|assistant, 'content': str}}")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def read_records(
    path: Path, parse: Callable[[Any], T], what: str = "rows", strings: bool = False
) -> tuple[list[T], list[str]]:
    """(parsed rows, bad lines). `parse` gets each line's JSON object (or string, with `strings`) and
    raises ValueError to reject it. An unreadable file is a TwinError."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise TwinError(f"{path}: cannot read {what}: {e}") from e
    rows: list[T] = []
    bad: list[str] = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)  # json.JSONDecodeError is a ValueError
            if not isinstance(obj, dict) and not (strings and isinstance(obj, str)):
                raise ValueError("expected a JSON object" + (" or string" if strings else ""))
            rows.append(parse(obj))
        except ValueError as e:
            bad.append(f"{path}:{n}: {e}")
    return rows, bad
