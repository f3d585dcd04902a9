"""N-gram decontamination: find (and drop) training examples that overlap an evaluation set.

Text: every string value of a record, read recursively through dicts and lists (so chat messages'
`content` is read), or only the top-level keys given as `fields`. Each string is normalised like the
dedup hash (NFKC, case-folded) and split into words (`\\w+`); its word n-grams are hashed into a set.
A string shorter than n words (but of n/2 words or more) counts as one "gram" of its whole text, so a
short eval question repeated verbatim as a whole field is still caught; shorter strings (ids, labels)
are ignored.

Overlap of a training example T with an eval example E: |G(T) ∩ G(E)| / min(|G(T)|, |G(E)|) — the
share of the smaller side's n-grams found in the other (1.0 when one contains the other). T is
contaminated when it shares at least one n-gram with some E and its best overlap >= threshold
(threshold 0: any shared n-gram, the GPT-3 rule). The eval side is an n-gram → examples hash index,
so each training example costs one lookup per n-gram.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmtwin.data.jsonl import BadLine, read_jsonl
from llmtwin.feature.hashing import normalise_for_dedup

_WORD = re.compile(r"\w+")


def strings(obj: Any, fields: list[str] | None = None) -> list[str]:
    """The string values of a record (recursively), or of its top-level `fields` only."""
    if fields is not None and isinstance(obj, dict):
        return [s for f in fields if f in obj for s in strings(obj[f])]
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in strings(v)]
    if isinstance(obj, (list, tuple)):
        return [s for v in obj for s in strings(v)]
    return []


def ngrams(texts: Iterable[str], n: int) -> set[int]:
    """Hashed word n-grams of the texts (a text of n/2 to n−1 words: one hash of its whole)."""
    out: set[int] = set()
    for text in texts:
        words = _WORD.findall(normalise_for_dedup(text))
        if len(words) >= n:
            out.update(hash(" ".join(words[i : i + n])) for i in range(len(words) - n + 1))
        elif len(words) >= max(1, n // 2):
            out.add(hash("\x00" + " ".join(words)))
    return out


@dataclass
class EvalExample:
    where: str  # file:line
    preview: str  # its first characters
    grams: int  # its number of distinct n-grams


@dataclass
class Contamination:
    where: str  # the training example: file:line or its id
    id: str | None
    eval_where: str
    eval_preview: str
    overlap: float
    shared_ngrams: int
    preview: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "example": self.where, "id": self.id, "overlap": round(self.overlap, 4),
            "shared_ngrams": self.shared_ngrams, "eval_example": self.eval_where,
            "eval_text": self.eval_preview, "text": self.preview,
        }


def _preview(obj: Any, fields: list[str] | None) -> str:
    return " ".join(" | ".join(strings(obj, fields)).split())[:160]


class EvalIndex:
    """The eval side: n-gram hash → indexes of the eval examples holding it."""

    def __init__(self, n: int = 8, fields: list[str] | None = None):
        if n < 1:
            raise ValueError("n must be >= 1")
        self.n = n
        self.fields = fields
        self.examples: list[EvalExample] = []
        self.postings: dict[int, list[int]] = {}
        self.bad: list[BadLine] = []
        self.files: list[str] = []

    def add(self, obj: Any, where: str) -> None:
        grams = ngrams(strings(obj, self.fields), self.n)
        if not grams:
            return
        i = len(self.examples)
        self.examples.append(EvalExample(where, _preview(obj, self.fields), len(grams)))
        for g in grams:
            self.postings.setdefault(g, []).append(i)

    def add_file(self, path: Path) -> None:
        self.files.append(str(path))
        for line, obj in read_jsonl(path, self.bad):
            self.add(obj, f"{path}:{line}")

    def __len__(self) -> int:
        return len(self.examples)

    def match(self, obj: Any, where: str, threshold: float, id: str | None = None) -> Contamination | None:
        """The eval example `obj` overlaps most, if that overlap passes `threshold`; else None."""
        grams = ngrams(strings(obj, self.fields), self.n)
        counts: Counter[int] = Counter()
        for g in grams:
            for i in self.postings.get(g, ()):
                counts[i] += 1
        best: tuple[float, int, int] | None = None
        for i, shared in counts.items():
            ratio = shared / min(len(grams), self.examples[i].grams)
            if best is None or (ratio, shared) > (best[0], best[1]):
                best = (ratio, shared, i)
        if best is None or best[0] < threshold:
            return None
        e = self.examples[best[2]]
        return Contamination(where, id, e.where, e.preview, best[0], best[1], _preview(obj, self.fields))


def build_index(paths: list[Path], n: int = 8, fields: list[str] | None = None) -> EvalIndex:
    index = EvalIndex(n, fields)
    for p in paths:
        index.add_file(p)
    return index


def decontaminate(
    records: list[dict[str, Any]], index: EvalIndex, threshold: float, where: str = "example"
) -> tuple[list[dict[str, Any]], list[Contamination]]:
    """(kept records, contaminated ones with their best eval match), order kept."""
    kept, found = [], []
    for i, r in enumerate(records, start=1):
        rid = r.get("id") if isinstance(r, dict) else None
        hit = index.match(r, f"{where}#{i}", threshold, id=str(rid) if rid is not None else None)
        if hit is None:
            kept.append(r)
        else:
            found.append(hit)
    return kept, found


def decontaminate_file(
    train: Path, index: EvalIndex, threshold: float, bad: list[BadLine]
) -> tuple[list[dict[str, Any]], list[Contamination], int]:
    """Read a training JSONL (bad lines to `bad`) and decontaminate it: (kept, found, total)."""
    kept, found, total = [], [], 0
    for line, obj in read_jsonl(train, bad):
        total += 1
        rid = obj.get("id")
        hit = index.match(obj, f"{train}:{line}", threshold, id=str(rid) if rid is not None else None)
        if hit is None:
            kept.append(obj)
        else:
            found.append(hit)
    return kept, found, total
