"""Query transforms before retrieval: the configured LLM turns the question into search queries.

    rewrite     a rambling or disfluent question → one clean search query
    decompose   a compound question → sub-questions, each retrieved separately
    multi_query N paraphrases, each retrieved; the lists fused
    hyde        a hypothetical answer, embedded and combined with the question's embedding
    step_back   a more general question, retrieved as well

Each transform returns a `Transform`: the `SubQuery`s it adds (text, weight in the fusion, kind,
optional vector), the LLM's raw output, its seconds, and `fallback` — why the output was not used
when it was junk (empty, a copy of the prompt, a refusal…); then only the original question is
searched. The prompts are short on purpose: the packaged SmolLM2-135M follows little more.
`fuse()` merges the sub-queries' hit lists by weighted reciprocal-rank fusion.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from llmtwin.types import Hit

if TYPE_CHECKING:
    import numpy as np

    from llmtwin.models.llm import LLM

Kind = Literal["original", "rewrite", "decompose", "multi_query", "hyde", "step_back", "self_query"]


@dataclass
class SubQuery:
    text: str  # searched with BM25 and (unless `vector` is given) embedded for dense search
    weight: float = 1.0  # its hit list's weight in the fusion
    kind: Kind = "original"
    vector: np.ndarray | None = field(default=None, repr=False)  # dense-search vector instead of embedding `text`


@dataclass
class Transform:
    name: str
    queries: list[SubQuery]  # what it adds (empty on fallback)
    raw: str = ""  # the LLM's output, as generated
    fallback: str | None = None  # why the output was not used
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "queries": [{"text": q.text, "weight": q.weight, "kind": q.kind, "vector": q.vector is not None}
                        for q in self.queries],
            "raw": self.raw,
            "fallback": self.fallback,
            "seconds": round(self.seconds, 4),
        }


# -- the LLM call and lenient parsing -------------------------------------------------------------

def ask_llm(llm: LLM, prompt: str, max_new_tokens: int, *, system: str | None = None,
            stop: list[str] | None = None) -> str:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return llm.complete(messages, max_new_tokens=max_new_tokens, temperature=0.0, repetition_penalty=1.1, stop=stop)


_LEAD = re.compile(r"^\s*(?:[-*•]+|\d+[.):]|q\d*[.):]|(?:sub-?)?(?:question|query|paraphrase|answer)\s*\d*\s*[:.-])\s*",
                   re.IGNORECASE)
_JUNK = re.compile(r"^(?:sure|here (?:is|are)|i (?:can(?:no|')t|am sorry|'m sorry)|as an ai|sorry)\b", re.IGNORECASE)


def clean_line(line: str) -> str:
    """A generated line without list markers, labels and quotes."""
    line = line.strip()
    for _ in range(2):
        line = _LEAD.sub("", line).strip()
    return line.strip(" \"'`“”").strip()


def parse_lines(text: str, limit: int) -> list[str]:
    """Distinct useful lines of a generated list, at most `limit`."""
    out: list[str] = []
    for raw in re.split(r"\n+|(?<=\?)\s+(?=\S)", text):
        line = clean_line(raw)
        if len(line.split()) < 2 or _JUNK.match(line) or line.endswith(":"):
            continue
        if line.lower() not in {o.lower() for o in out}:
            out.append(line)
        if len(out) == limit:
            break
    return out


def junk_reason(text: str, question: str, *, min_words: int = 2) -> str | None:
    """Why a generated query is unusable, or None: empty, too short, a refusal, an echo of the prompt,
    or (over twice as long as the question) rambling."""
    words = text.split()
    if len(words) < min_words:
        return "empty or too short"
    if _JUNK.match(text):
        return "a preamble or refusal, not a query"
    if re.search(r"\b(?:rewrite|search query|the question)\b", text, re.IGNORECASE):
        return "echoes the instruction"
    if len(words) > 2 * max(8, len(question.split())):
        return "longer than the question"
    return None


def _timed(name: str, run) -> Transform:
    t = time.perf_counter()
    out = run()
    out.seconds = time.perf_counter() - t
    out.name = name
    return out


# -- the transforms ---------------------------------------------------------------------------------

def _unusable(text: str, question: str) -> str | None:
    """Why an LLM-written query cannot be searched (junk, or the question again); None when it can."""
    reason = junk_reason(text, question)
    if reason is None and text.lower().strip(" ?") == question.lower().strip(" ?"):
        reason = "same as the question"
    return reason


def _one_query(kind: str, prompt: str, question: str, weight: float, llm: LLM, max_new_tokens: int) -> Transform:
    """A transform whose LLM writes one query (rewrite, step-back): its first line, or the reason it is unusable."""
    def run() -> Transform:
        raw = ask_llm(llm, prompt, max_new_tokens, stop=["\n\n"])
        lines = parse_lines(raw, 1)
        text = lines[0] if lines else ""
        reason = _unusable(text, question)
        if reason:
            return Transform(kind, [], raw, reason)
        return Transform(kind, [SubQuery(text, weight, kind)], raw)

    return _timed(kind, run)


def rewrite(question: str, llm: LLM, max_new_tokens: int = 48) -> Transform:
    return _one_query("rewrite", "Rewrite this question as a short, clear search query. Drop corrections, "
                      f"hesitations and repeated words.\nQuestion: {question}\nQuery:", question, 1.0, llm, max_new_tokens)


def decompose(question: str, llm: LLM, max_new_tokens: int = 48, limit: int = 3) -> Transform:
    def run() -> Transform:
        raw = ask_llm(llm, "Split this question into simpler questions, one per line. If it is already "
                           f"simple, repeat it.\nQuestion: {question}\nQuestions:", max_new_tokens)
        subs = [s for s in parse_lines(raw, limit) if _unusable(s, question) is None]
        if not subs:
            return Transform("decompose", [], raw, "no usable sub-question")
        weight = 1.0 / len(subs)  # together the sub-questions count as much as the question
        return Transform("decompose", [SubQuery(s, weight, "decompose") for s in subs], raw)

    return _timed("decompose", run)


def multi_query(question: str, llm: LLM, n: int = 3, max_new_tokens: int = 48) -> Transform:
    def run() -> Transform:
        raw = ask_llm(llm, f"Write {n} different ways to ask this question, one per line.\n"
                           f"Question: {question}\nQuestions:", max_new_tokens * max(1, (n + 1) // 2))
        found = [s for s in parse_lines(raw, n + 1) if _unusable(s, question) is None][:n]
        if not found:
            return Transform("multi_query", [], raw, "no usable paraphrase")
        return Transform("multi_query", [SubQuery(s, 1.0 / len(found), "multi_query") for s in found], raw)

    return _timed("multi_query", run)


def step_back(question: str, llm: LLM, max_new_tokens: int = 48) -> Transform:
    return _one_query("step_back", "Write a more general question about the topic behind this question.\n"
                      f"Question: {question}\nGeneral question:", question, 0.5, llm, max_new_tokens)


def hyde(question: str, llm: LLM, embed, *, query_vector, mode: str = "average",
         max_new_tokens: int = 96) -> Transform:
    """The hypothetical answer's embedding, averaged with the question's (`average`: replaces the
    question's dense vector; its BM25 list is the question's), or searched as a query of its own
    (`fuse`: its hits fused with the question's). `embed(text)` → unit vector."""

    def run() -> Transform:
        import numpy as np

        raw = ask_llm(llm, f"Write a short passage that answers this question.\nQuestion: {question}\nPassage:",
                      max_new_tokens)
        text = " ".join(raw.split())
        reason = junk_reason(text, question, min_words=4)
        if reason == "longer than the question":
            reason = None  # an answer passage may be long
        if reason:
            return Transform("hyde", [], raw, reason)
        vector = np.asarray(embed(text), dtype=np.float32)
        if mode == "fuse":
            return Transform("hyde", [SubQuery(text, 1.0, "hyde", vector)], raw)
        mean = np.asarray(query_vector(), dtype=np.float32) + vector
        mean /= max(float(np.linalg.norm(mean)), 1e-12)
        return Transform("hyde", [SubQuery(question, 1.0, "hyde", mean)], raw)

    return _timed("hyde", run)


def run_transforms(names: list[str], question: str, llm: LLM, *, embed, query_vector, n: int = 3,
                   max_new_tokens: int = 48, hyde_mode: str = "average") -> list[Transform]:
    out = []
    for name in names:
        if name == "rewrite":
            out.append(rewrite(question, llm, max_new_tokens))
        elif name == "decompose":
            out.append(decompose(question, llm, max_new_tokens))
        elif name == "multi_query":
            out.append(multi_query(question, llm, n, max_new_tokens))
        elif name == "step_back":
            out.append(step_back(question, llm, max_new_tokens))
        elif name == "hyde":
            out.append(hyde(question, llm, embed, query_vector=query_vector, mode=hyde_mode,
                            max_new_tokens=2 * max_new_tokens))
    return out


def plan_queries(question: str, transforms: list[Transform]) -> list[SubQuery]:
    """The queries to search: the question itself (unless HyDE-average replaces its vector), then each
    transform's. Duplicate texts without vectors are searched once (the larger weight kept)."""
    queries = [SubQuery(question, 1.0, "original")]
    for t in transforms:
        for q in t.queries:
            if q.kind == "hyde" and q.text == question:  # average: the question, with the mixed vector
                queries[0] = q
                continue
            same = next((p for p in queries if p.vector is None and q.vector is None
                         and p.text.lower() == q.text.lower()), None)
            if same is not None:
                same.weight = max(same.weight, q.weight)
            else:
                queries.append(q)
    return queries


def fuse(rankings: list[list[Hit]], weights: list[float], k: int = 60) -> list[Hit]:
    """Weighted reciprocal-rank fusion of several queries' hit lists: score = Σ w / (k + rank).
    Each hit keeps its stage scores from the first list it appeared in; `scores["fused"]` is the sum."""
    fused: dict[str, Hit] = {}
    for ranking, w in zip(rankings, weights, strict=True):
        for rank, hit in enumerate(ranking, start=1):
            entry = fused.get(hit.chunk.chunk_id)
            if entry is None:
                entry = fused[hit.chunk.chunk_id] = Hit(hit.chunk, 0.0, dict(hit.scores))
            entry.score += w / (k + rank)
    out = sorted(fused.values(), key=lambda h: (-h.score, h.chunk.chunk_id))
    for hit in out:
        hit.scores["multi_rrf"] = hit.score
    return out

