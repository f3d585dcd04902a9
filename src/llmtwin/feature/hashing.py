"""Content hashes: raw file bytes (skip unchanged files) and normalised text (exact duplicates)."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from typing import Any

_WS = re.compile(r"\s+")


def bytes_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def normalise_for_dedup(text: str) -> str:
    """Case-folded, NFKC, whitespace-collapsed: two texts equal after this are exact duplicates."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def dedup_hash(text: str) -> str:
    return hashlib.sha256(normalise_for_dedup(text).encode("utf-8")).hexdigest()


def text_hash(text: str, metadata: dict[str, Any] | None = None) -> str:
    """Hash of a document's stored content: its text and its metadata."""
    h = hashlib.sha256(text.encode("utf-8"))
    if metadata:
        h.update(json.dumps(metadata, sort_keys=True, default=str).encode("utf-8"))
    return h.hexdigest()


def short_id(*parts: object) -> str:
    """A stable 16-hex id from its parts (chunk and section ids)."""
    h = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8"))
    return h.hexdigest()[:16]
