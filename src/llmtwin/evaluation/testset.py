"""Test sets from the user's own documents: question/answer pairs with their gold chunk, no labels needed.

The configured LLM reads a chunk and writes one question it answers and the answer. A pair is kept
only if it passes every filter (each rejection is counted by reason):
- `unparsed`: the reply has no "Question: … Answer: …" shape;
- `not_a_question`: the question is shorter than 4 words or does not end with "?";
- `answer_in_question`: the answer's content words are all in the question (it gives itself away);
- `unsupported`: the answer is not supported by the chunk — it is not a substring of it and fewer
  than 80% of its content words appear in it (a made-up answer);
- `off_chunk`: fewer than half of the question's content words (and fewer than 2) appear in the chunk;
- `duplicate`: the same question after normalisation, or a near-duplicate (Jaccard ≥ 0.7 of the
  content-word sets) of a question already kept.
The JSONL it writes is what `twin eval rag` reads: {"id", "question", "answer", "relevant": [doc_id],
"chunk_ids": [chunk_id], "source", "generated_by"}.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llmtwin.evaluation.qa import normalize_answer
from llmtwin.generation.answer import content_words

SYSTEM = "You write quiz questions about a text. Use only facts stated in the text."
USER = (
    "Text:\n{text}\n\n"
    "Write one question that this text answers, and its short answer copied from the text.\n"
    "Format:\nQuestion: <the question>\nAnswer: <the answer>"
)
_QA = re.compile(r"question\s*:\s*(?P<q>.+?)\s*\n+\s*(?:\*\*)?answer\s*(?:\*\*)?\s*:\s*(?P<a>.+)", re.IGNORECASE | re.DOTALL)
_MAX_CHUNK_CHARS = 1500
NEAR_DUPLICATE = 0.7


@dataclass
class TestItem:
    id: str
    question: str
    answer: str
    relevant: list[str]
    chunk_ids: list[str]
    source: str
    generated_by: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TestSetReport:
    requested: int
    tried: int
    kept: int
    rejected: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    path: str = ""
    examples_rejected: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_qa(reply: str) -> tuple[str, str] | None:
    m = _QA.search(reply.replace("**Question**", "Question").replace("**Question:**", "Question:"))
    if not m:
        return None
    question = m.group("q").strip().strip("*").strip()
    answer = m.group("a").strip().split("\n")[0].strip().strip("*").strip().rstrip(".").strip()
    return (question, answer) if question and answer else None


def check_pair(question: str, answer: str, chunk_text: str) -> str | None:
    """The reason a generated pair is rejected, or None if it is kept (duplicates are checked later)."""
    if len(question.split()) < 4 or not question.rstrip().endswith("?"):
        return "not_a_question"
    a_words, q_words, c_words = content_words(answer), content_words(question), content_words(chunk_text)
    if a_words and a_words <= q_words:
        return "answer_in_question"
    in_text = normalize_answer(answer) in normalize_answer(chunk_text)
    if not in_text and (not a_words or len(a_words & c_words) / len(a_words) < 0.8):
        return "unsupported"
    overlap = len(q_words & c_words)
    if overlap < 2 or overlap / max(len(q_words), 1) < 0.5:
        return "off_chunk"
    return None


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def generate_testset(
    twin,
    n: int = 50,
    *,
    out: Path | None = None,
    seed: int | None = None,
    max_tries: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[TestItem], TestSetReport]:
    """Up to `n` filtered, deduplicated pairs from the project's chunks (tried in a seeded random
    order, one per chunk, at most `max_tries` chunks: default 3 × n)."""
    from llmtwin.errors import TwinError
    from llmtwin.training.pseudo_queries import load_chunks

    started = time.perf_counter()
    store = twin._checked_store()
    chunks = [c for c in load_chunks(store) if len(content_words(c.text)) >= 8]
    if not chunks:
        raise TwinError("the store has no chunk with enough text to ask about: run `twin ingest PATH` first")
    rng = random.Random(twin.config.seed if seed is None else seed)
    rng.shuffle(chunks)
    max_tries = min(len(chunks), max_tries or 3 * n)
    llm = twin.llm
    items: list[TestItem] = []
    seen_exact: set[str] = set()
    seen_words: list[set[str]] = []
    rejected: Counter[str] = Counter()
    examples: list[dict[str, str]] = []
    tried = 0
    for chunk in chunks[:max_tries]:
        if len(items) >= n:
            break
        tried += 1
        reply = llm.complete(
            [{"role": "system", "content": SYSTEM},
             {"role": "user", "content": USER.format(text=chunk.text[:_MAX_CHUNK_CHARS])}],
            max_new_tokens=80, temperature=0.0, repetition_penalty=1.1,
        )
        parsed = parse_qa(reply)
        reason = "unparsed" if parsed is None else check_pair(parsed[0], parsed[1], chunk.text)
        if reason is None:
            question, answer = parsed  # type: ignore[misc]
            key = normalize_answer(question)
            words = content_words(question)
            if key in seen_exact or any(_jaccard(words, w) >= NEAR_DUPLICATE for w in seen_words):
                reason = "duplicate"
            else:
                seen_exact.add(key)
                seen_words.append(words)
                items.append(TestItem(f"g{len(items):04d}", question, answer, [chunk.doc_id], [chunk.chunk_id],
                                      chunk.source, llm.name))
        if reason is not None:
            rejected[reason] += 1
            if len(examples) < 20:
                examples.append({"reason": reason, "chunk_id": chunk.chunk_id, "reply": reply[:300]})
        if progress:
            progress(len(items), n)
    report = TestSetReport(n, tried, len(items), dict(rejected), round(time.perf_counter() - started, 2),
                           examples_rejected=examples)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", encoding="utf-8") as f:
            for item in items:
                f.write(json.dumps(item.to_dict(), ensure_ascii=False) + "\n")
        report.path = str(out)
    return items, report
