"""LLM reranking: the configured LLM re-orders the top `top_n` hits (retrieval.llm_rerank).

- pointwise: one call per passage, "does it answer the question? yes/no" (a 0–3 digit is read
  too); the hits are sorted by that grade, ties keeping their previous order. A reply that is
  neither counts as unknown (grade 0.5: between no and yes) and is reported.
- listwise: one call with the numbered passages, "which passages answer the question?"; the
  numbers named, in the order named, come first; the others keep their order.

Passages are cut to `max_chars` (the small model's context is short). Each hit's grade or pick
lands in `scores["llm"]`; what the LLM said, per call, in `LLMRerank.replies` (the explain output).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from llmtwin.types import Hit

if TYPE_CHECKING:
    from llmtwin.models.llm import LLM


@dataclass
class LLMRerank:
    hits: list[Hit]
    replies: list[str] = field(default_factory=list)
    unparsed: int = 0  # replies that said nothing usable


def _passage(hit: Hit, max_chars: int) -> str:
    text = " ".join(hit.chunk.text.split())
    return text if len(text) <= max_chars else text[:max_chars].rsplit(" ", 1)[0] + " …"


def grade(reply: str) -> float | None:
    """yes → 1, no → 0, a digit 0–3 → digit / 3; None if the reply says none of these."""
    text = reply.strip().lower()
    m = re.match(r"\W*(yes|no|[0-3])\b", text)
    if m is None:
        m = re.search(r"\b(yes|no)\b", text)
    if m is None:
        return None
    word = m.group(1)
    return {"yes": 1.0, "no": 0.0}.get(word, int(word) / 3 if word.isdigit() else 0.0)


def pointwise(hits: list[Hit], question: str, llm: LLM, top_n: int = 5, max_chars: int = 600) -> LLMRerank:
    from llmtwin.retrieval.transforms import ask_llm

    head, tail = hits[:top_n], hits[top_n:]
    graded: list[tuple[float, int, Hit]] = []
    out = LLMRerank([])
    for i, hit in enumerate(head):
        reply = ask_llm(llm, f"Passage: {_passage(hit, max_chars)}\n\nQuestion: {question}\n"
                             "Does the passage answer the question? Answer yes or no.", 3)
        out.replies.append(reply)
        g = grade(reply)
        if g is None:
            out.unparsed += 1
            g = 0.5
        graded.append((g, i, hit))
    graded.sort(key=lambda x: (-x[0], x[1]))
    out.hits = [Hit(h.chunk, g, {**h.scores, "llm": g}) for g, _, h in graded] + list(tail)
    return out


def listwise(hits: list[Hit], question: str, llm: LLM, top_n: int = 5, max_chars: int = 300) -> LLMRerank:
    from llmtwin.retrieval.transforms import ask_llm

    head, tail = hits[:top_n], hits[top_n:]
    listing = "\n".join(f"[{i}] {_passage(h, max_chars)}" for i, h in enumerate(head, start=1))
    reply = ask_llm(llm, f"{listing}\n\nQuestion: {question}\nWhich passage answers the question best? "
                         "Answer with its number.", 8)
    picks: list[int] = []
    for n in re.findall(r"\d+", reply):
        i = int(n) - 1
        if 0 <= i < len(head) and i not in picks:
            picks.append(i)
    out = LLMRerank([], [reply], 0 if picks else 1)
    order = picks + [i for i in range(len(head)) if i not in picks]
    n_picks = len(picks)
    out.hits = [
        Hit(head[i].chunk, float(n_picks - r) if r < n_picks else 0.0,
            {**head[i].scores, "llm": float(n_picks - r) if r < n_picks else 0.0})
        for r, i in enumerate(order)
    ] + list(tail)
    return out
