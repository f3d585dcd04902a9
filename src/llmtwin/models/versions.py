"""Models a project trains for itself, versioned under `.twin/models/<kind>/vN/` with a `card.json`.

A version is complete once its card exists: it is written last, in a temp folder renamed into
place, so an interrupted training never leaves a version that looks usable.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

_VERSION = re.compile(r"^v(\d+)$")


def kind_dir(state_dir: Path, kind: str) -> Path:
    return state_dir / "models" / kind


def versions(state_dir: Path, kind: str) -> list[Path]:
    """Complete versions, oldest first."""
    root = kind_dir(state_dir, kind)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _VERSION.match(p.name)
        if m and (p / "card.json").is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest(state_dir: Path, kind: str, *, usable: bool = False, max_age: float = 0.0) -> Path | None:
    """The newest complete version; with `usable`, None if its card says `use: false` (its training's
    held-out check did not beat the baseline: an older version is not used instead either).

    `max_age` > 0: an answer looked up at most that many seconds ago is reused (every search asks
    for the reranker and the adapter; under load each look at the folder cost a GIL hand-off).
    A version published by this process is seen at once; by another process, within `max_age`."""
    key = (str(state_dir), kind, usable)
    now = time.monotonic()
    if max_age > 0:
        seen = _latest_seen.get(key)
        if seen is not None and now - seen[0] <= max_age:
            return seen[1]
    found = versions(state_dir, kind)
    path = None if not found or (usable and not read_card(found[-1]).get("use", True)) else found[-1]
    _latest_seen[key] = (now, path)
    return path


_latest_seen: dict[tuple[str, str, bool], tuple[float, Path | None]] = {}  # latest()'s answers, by when


def read_card(version_dir: Path) -> dict[str, Any]:
    return json.loads((version_dir / "card.json").read_text(encoding="utf-8"))


def new_version(state_dir: Path, kind: str) -> Path:
    """A fresh temp folder to write a version into; `publish` gives it its number."""
    root = kind_dir(state_dir, kind)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    return tmp


def publish(tmp: Path, card: dict[str, Any]) -> Path:
    """Write the card into `tmp` and rename it to the next vN; returns the version dir."""
    root = tmp.parent
    while True:
        numbers = [int(m.group(1)) for p in root.iterdir() if (m := _VERSION.match(p.name))]
        target = root / f"v{max(numbers, default=0) + 1}"
        card = {**card, "version": target.name}
        (tmp / "card.json").write_text(json.dumps(card, indent=2), encoding="utf-8")
        try:
            os.rename(tmp, target)
            _latest_seen.clear()
            return target
        except OSError:  # another training published that number meanwhile
            if not target.exists():
                shutil.rmtree(tmp, ignore_errors=True)
                raise
