"""Traces: every answer appends one JSON line under .twin/traces/ (query, stages, prompt, output, timings)."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

from llmtwin.types import Hit


def hits_record(hits: list[Hit]) -> list[dict[str, Any]]:
    return [
        {
            "rank": rank,
            "chunk_id": h.chunk.chunk_id,
            "doc_id": h.chunk.doc_id,
            "source": h.chunk.source,
            "score": round(h.score, 6),
            "scores": {k: round(v, 6) for k, v in h.scores.items()},
        }
        for rank, h in enumerate(hits, start=1)
    ]


def new_trace_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:8]


def write_trace(traces_dir: Path, trace_id: str, record: dict[str, Any]) -> Path:
    traces_dir.mkdir(parents=True, exist_ok=True)
    path = traces_dir / f"{trace_id[:8]}.jsonl"
    line = json.dumps({"trace_id": trace_id, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **record}, default=str)
    with path.open("a", encoding="utf-8") as f:
        f.write(line + "\n")
    return path


def read_trace(traces_dir: Path, trace_id: str) -> dict[str, Any] | None:
    path = traces_dir / f"{trace_id[:8]}.jsonl"
    if not path.exists():
        return None
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get("trace_id") == trace_id:
            return record
    return None
