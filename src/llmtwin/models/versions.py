"""Models a project trains for itself, versioned under `.twin/models/<kind>/vN/` with a `card.json`.

A version is complete once its card exists: it is written last, in a temp folder renamed into
place, so an interrupted training never leaves a version that looks usable.
"""

from __future__ import annotations

import json
import os
import re
import shutil
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


def latest(state_dir: Path, kind: str, *, usable: bool = False) -> Path | None:
    """The newest complete version; with `usable`, None if its card says `use: false` (its training's
    held-out check did not beat the baseline: an older version is not used instead either)."""
    found = versions(state_dir, kind)
    if not found or (usable and not read_card(found[-1]).get("use", True)):
        return None
    return found[-1]


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
            return target
        except OSError:  # another training published that number meanwhile
            if not target.exists():
                shutil.rmtree(tmp, ignore_errors=True)
                raise
