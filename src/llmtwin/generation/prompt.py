"""The RAG prompt: numbered sources within a token budget, then the question."""

from __future__ import annotations

from llmtwin.config import GenerationConfig
from llmtwin.models.llm import LLM, Message
from llmtwin.types import Hit


def source_label(hit: Hit) -> str:
    chunk = hit.chunk
    label = chunk.source if chunk.file_type != "jsonl" else f"{chunk.source} · {chunk.doc_id}"
    if chunk.heading_path:
        label += " › " + " › ".join(chunk.heading_path)
    return label


def select_context(hits: list[Hit], llm: LLM, budget_tokens: int) -> list[Hit]:
    """Hits in rank order while they fit the budget; the first always goes in (cut to fit)."""
    chosen: list[Hit] = []
    used = 0
    for hit in hits:
        cost = llm.count_tokens(hit.chunk.text) + 12  # label and separators
        if chosen and used + cost > budget_tokens:
            break
        chosen.append(hit)
        used += cost
    return chosen


def build_messages(question: str, hits: list[Hit], cfg: GenerationConfig) -> list[Message]:
    """Sources as `[n] text` only: labels (paths, headings) made small models echo them back."""
    blocks = [f"[{n}] {hit.chunk.text.strip()}" for n, hit in enumerate(hits, start=1)]
    user = "Sources:\n" + "\n\n".join(blocks) + f"\n\nQuestion: {question.strip()}"
    return [{"role": "system", "content": cfg.system_prompt}, {"role": "user", "content": user}]
