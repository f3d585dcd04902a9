"""Routing: pick one of the project's collections (retrieval.collections) for a query.

A collection is a named subset of the sources (globs) with a description. The embedding router
(default) compares the query with each description by cosine and takes the best one if it reaches
`retrieval.route_threshold`; under it the query searches everything. The LLM router asks the
configured LLM to name a collection; a reply naming none (or several) searches everything.
The choice, the scores and the reason land in the explain output as `route`.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmtwin.config import CollectionConfig
    from llmtwin.models.llm import LLM


@dataclass
class Route:
    collection: str | None  # None: no collection chosen, search everything
    sources: list[str]  # the chosen collection's source globs ([] = all)
    method: str  # embedding | llm
    scores: dict[str, float] = field(default_factory=dict)  # embedding: cosine per collection
    reason: str = ""
    raw: str = ""  # llm: its reply
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"collection": self.collection, "sources": self.sources, "method": self.method,
                "scores": {k: round(v, 4) for k, v in self.scores.items()}, "reason": self.reason,
                "raw": self.raw, "seconds": round(self.seconds, 4)}


_description_vectors: dict[tuple[str, tuple[str, ...]], Any] = {}  # (embedder, descriptions) → matrix


def embedding_route(query_vector, collections: dict[str, CollectionConfig], embedder, threshold: float) -> Route:
    import numpy as np

    t = time.perf_counter()
    names = list(collections)
    key = (embedder.name, tuple(collections[n].description for n in names))
    if key not in _description_vectors:
        _description_vectors[key] = np.asarray(embedder.embed_passages(list(key[1])), dtype=np.float32)
    sims = _description_vectors[key] @ np.asarray(query_vector, dtype=np.float32)
    scores = {n: float(s) for n, s in zip(names, sims, strict=True)}
    best = max(names, key=lambda n: scores[n])
    if scores[best] < threshold:
        route = Route(None, [], "embedding", scores, f"best cosine {scores[best]:.3f} < threshold {threshold:g}: all")
    else:
        route = Route(best, list(collections[best].sources), "embedding", scores, f"cosine {scores[best]:.3f}")
    route.seconds = time.perf_counter() - t
    return route


def llm_route(question: str, collections: dict[str, CollectionConfig], llm: LLM, max_new_tokens: int = 12) -> Route:
    from llmtwin.retrieval.transforms import ask_llm

    t = time.perf_counter()
    listing = "\n".join(f"- {name}: {c.description}" for name, c in collections.items())
    raw = ask_llm(llm, f"Collections:\n{listing}\n\nWhich collection answers this question? Reply with its name only.\n"
                       f"Question: {question}\nCollection:", max_new_tokens)
    named = [n for n in collections if re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", raw, re.IGNORECASE)]
    if len(named) == 1:
        route = Route(named[0], list(collections[named[0]].sources), "llm", reason="named by the LLM", raw=raw)
    else:
        why = "named no collection" if not named else f"named {len(named)} collections"
        route = Route(None, [], "llm", reason=f"the LLM {why}: all", raw=raw)
    route.seconds = time.perf_counter() - t
    return route
