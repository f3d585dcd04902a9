"""Auto-merging retrieval: when enough of a section's chunks are retrieved, return the section instead.

A section (heading-delimited part of a document: the chunks' `parent_id`) replaces its retrieved
children when they are at least `threshold` of all its chunks (and at least two). The parent takes
the place and the score of its best child, its chunk id is the section id and its metadata lists
the children it stands for (`merged`). Sections longer than `max_chars` are never returned whole.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmtwin.types import Chunk, Hit

if TYPE_CHECKING:
    from llmtwin.store.lancedb_store import LanceStore


def auto_merge(hits: list[Hit], store: LanceStore, threshold: float = 0.5, max_chars: int = 6000) -> list[Hit]:
    retrieved: dict[str, list[Hit]] = {}
    for hit in hits:
        if hit.chunk.parent_id:
            retrieved.setdefault(hit.chunk.parent_id, []).append(hit)
    candidates = [p for p, kids in retrieved.items() if len(kids) >= 2]
    if not candidates:
        return list(hits)
    children = store.children(candidates)
    merge = [
        p for p in candidates
        if p in children and len({h.chunk.chunk_id for h in retrieved[p]}) / len(children[p]) >= threshold
    ]
    sections = store.get_sections(merge)
    merge = [p for p in merge if p in sections and len(sections[p].text) <= max_chars]
    if not merge:
        return list(hits)

    out: list[Hit] = []
    done: set[str] = set()
    for hit in hits:  # hits are best first: the parent lands where its best child was
        p = hit.chunk.parent_id
        if p not in merge:
            out.append(hit)
            continue
        if p in done:
            continue
        done.add(p)
        sec, best = sections[p], hit.chunk
        kids = [h.chunk.chunk_id for h in retrieved[p]]
        parent = Chunk(
            chunk_id=sec.section_id,
            doc_id=sec.doc_id,
            source=best.source,
            text=sec.text,
            start=sec.start,
            end=sec.end,
            heading_path=list(sec.heading_path),
            parent_id=sec.section_id,
            index=min(h.chunk.index for h in retrieved[p]),
            file_type=best.file_type,
            metadata={**best.metadata, "merged": kids, "children": len(children[p])},
        )
        out.append(Hit(parent, hit.score, {**hit.scores, "merged_children": float(len(kids))}))
    return out
