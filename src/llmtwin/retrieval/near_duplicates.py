"""Near-duplicate documents kept in the store (ingest.near_duplicates: keep) must not crowd a
result list: where two or more documents of one near-duplicate group reach the results, the best
ranked stays in its place and the others move after every other hit (kept, never dropped; they
fall off the end only when there are better distinct hits to show).

A group is a document and every stored document whose record names it as `duplicate_of`. The
stage runs only when the store holds such documents, so other stores' results are untouched.
"""

from __future__ import annotations

from llmtwin.types import Hit


def collapse(hits: list[Hit], groups: dict[str, str]) -> list[Hit]:
    """`groups`: doc id → its group's first document. Stable: every hit of the first document of
    each group seen (and every hit outside a group) in order, then the other documents' hits."""
    kept: dict[str, str] = {}  # group → the document of it that came first
    first: list[Hit] = []
    later: list[Hit] = []
    for hit in hits:
        doc = hit.chunk.doc_id
        group = groups.get(doc)
        (first if group is None or kept.setdefault(group, doc) == doc else later).append(hit)
    return first + later
