"""Self-query: the LLM turns a question into a search query plus metadata filters.

The store's actual fields and values (`store_schema`) are shown to the LLM and every proposed
filter is checked against them: an unknown field, a value no document has, or a set of filters
that together match no document is dropped and reported (`SelfQuery.dropped`), never raised. The
kept filters are ANDed with the user's own `--filter`s.
"""

from __future__ import annotations

import fnmatch
import json
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmtwin.models.llm import LLM
    from llmtwin.store.lancedb_store import LanceStore

_MAX_VALUES = 200  # values kept per field for validation (the prompt shows a few)


@dataclass
class Schema:
    """Per field, the values documents have (metadata lists contribute each item)."""

    values: dict[str, set[str]]
    docs: list[dict[str, Any]] = field(repr=False, default_factory=list)  # {field: value(s)} per stored document


@dataclass
class DroppedFilter:
    field: str
    value: str
    reason: str


@dataclass
class SelfQuery:
    query: str  # the query to search (the question when the LLM gave none usable)
    filters: dict[str, str]  # the valid filters
    dropped: list[DroppedFilter]
    raw: str = ""
    note: str = ""  # e.g. "no JSON in the reply: the question, no filters"
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"query": self.query, "filters": self.filters,
                "dropped": [{"field": d.field, "value": d.value, "reason": d.reason} for d in self.dropped],
                "raw": self.raw, "note": self.note, "seconds": round(self.seconds, 4)}


_schemas: dict[tuple[str, int], Schema] = {}


def store_schema(store: LanceStore) -> Schema:
    """The filterable fields of the stored documents and their values (cached per store version)."""
    key = (str(store.path), store.current_version())
    if key in _schemas:
        return _schemas[key]
    values: dict[str, set[str]] = {}
    docs = []
    for r in store.documents():
        if r.status != "stored":
            continue
        doc: dict[str, Any] = {"source": r.source, "file_type": r.file_type, "doc_id": r.doc_id}
        for k, v in r.metadata.items():
            if isinstance(v, (str, int, float, bool)) or (isinstance(v, list) and v):
                doc[str(k)] = v
        docs.append(doc)
        for k, v in doc.items():
            bucket = values.setdefault(k, set())
            for item in v if isinstance(v, list) else [v]:
                if len(bucket) < _MAX_VALUES and isinstance(item, (str, int, float, bool)):
                    bucket.add(str(item))
    schema = Schema(values, docs)
    _schemas[key] = schema
    return schema


def _matches(field_name: str, actual: Any, wanted: str) -> bool:
    if isinstance(actual, list):
        return any(_matches(field_name, a, wanted) for a in actual)
    if actual is None:
        return False
    actual = str(actual)
    if field_name == "file_type":
        return actual.lower() == wanted.lstrip(".").lower()
    if field_name == "source" and not any(ch in wanted for ch in "*?"):
        base = wanted.rstrip("/")
        return actual == base or actual.startswith(base + "/")
    if isinstance(actual, str) and actual.lower() in ("true", "false"):
        return actual.lower() == wanted.lower()
    return fnmatch.fnmatchcase(actual, wanted) or actual.lower() == wanted.lower()


def validate_filters(proposed: dict[str, Any], schema: Schema) -> tuple[dict[str, str], list[DroppedFilter]]:
    """Keep the filters whose field exists and whose value some document has; drop (with a reason)
    the rest, and all of them if together they match no document."""
    kept: dict[str, str] = {}
    dropped: list[DroppedFilter] = []
    for key, value in proposed.items():
        name = "file_type" if str(key) == "type" else str(key).strip()
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        if value is None or isinstance(value, (dict, list)) or not str(value).strip():
            dropped.append(DroppedFilter(name, json.dumps(value), "not a single value"))
            continue
        text = str(value).strip()
        if name not in schema.values:
            known = ", ".join(sorted(schema.values))
            dropped.append(DroppedFilter(name, text, f"unknown field (fields: {known})"))
            continue
        if not any(_matches(name, doc.get(name), text) for doc in schema.docs):
            examples = ", ".join(sorted(schema.values[name])[:5])
            dropped.append(DroppedFilter(name, text, f"no document has this value (e.g. {examples})"))
            continue
        kept[name] = text
    if kept and not any(all(_matches(k, doc.get(k), v) for k, v in kept.items()) for doc in schema.docs):
        dropped += [DroppedFilter(k, v, "the filters together match no document") for k, v in kept.items()]
        kept = {}
    return kept, dropped


def parse_proposal(raw: str) -> tuple[str | None, dict[str, Any], str]:
    """(query, filters, note) from the LLM's reply: a JSON object if there is one, else `key: value` lines."""
    match = re.search(r"\{.*\}", raw, re.DOTALL)
    data: dict[str, Any] | None = None
    if match:
        for candidate in (match.group(0), match.group(0).replace("'", '"')):
            try:
                loaded = json.loads(candidate)
            except json.JSONDecodeError:
                continue
            if isinstance(loaded, dict):
                data = loaded
                break
    note = ""
    if data is None:
        data = {}
        for line in raw.splitlines():
            m = re.match(r"\s*[\"']?([\w.-]{1,40})[\"']?\s*[:=]\s*(.+)", line)
            if m and m.group(2).strip(" \"',"):
                data[m.group(1).lower()] = m.group(2).strip(" \"',")
        note = "no JSON in the reply: read key: value lines" if data else "nothing usable in the reply"
    query = data.pop("query", None)
    filters = data.pop("filters", None)
    if not isinstance(filters, dict):
        filters = {k: v for k, v in data.items() if k not in ("question", "answer")}
    return (str(query).strip() if isinstance(query, (str, int, float)) and str(query).strip() else None), filters, note


def self_query(question: str, llm: LLM, schema: Schema, max_new_tokens: int = 64) -> SelfQuery:
    from llmtwin.retrieval.transforms import ask_llm, junk_reason

    t = time.perf_counter()
    fields = "\n".join(f"- {k}: e.g. {', '.join(sorted(v)[:3])}" for k, v in sorted(schema.values.items())
                       if k != "doc_id")
    raw = ask_llm(llm, f"Fields:\n{fields}\n\nWrite JSON with a search query and filters on these fields "
                       'for the question, like {"query": "...", "filters": {"field": "value"}}.\n'
                       f"Question: {question}\nJSON:", max_new_tokens)
    query, proposed, note = parse_proposal(raw)
    if query is None or junk_reason(query, question) is not None:
        note = (note + "; " if note else "") + "no usable query: searched the question"
        query = question
    filters, dropped = validate_filters(proposed, schema)
    return SelfQuery(query, filters, dropped, raw, note, time.perf_counter() - t)
