"""Answers with citations that always point at real retrieved chunks, and say nothing unsupported.

The model is asked to cite with [n]. What it writes is checked sentence by sentence as it
streams:
- a marker naming no source is dropped;
- a sentence the model left uncited gets the source that supports it best by word overlap;
- with `generation.grounded` (the default), a sentence that no source supports — fewer than
  `min_support` of its content words in any one source — is not shown at all;
- an answer that says it does not know is marked as an abstention.
If nothing the model wrote survives, the answer falls back to quoting the source sentences most
similar to the question (cited), or abstains when none is similar enough. Small local models
cite unreliably and drift; these checks are what keep an answer honest.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from llmtwin.config import GenerationConfig, LLMConfig
from llmtwin.models.llm import LLM, Message
from llmtwin.types import Citation, Hit

_MARKER = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_WORD = re.compile(r"[a-z0-9]+")
_ABSTAIN = re.compile(
    r"\b(i (do not|don't|dont) know|not (mentioned|provided|stated|specified|given|found) in|"
    r"(sources|documents|context) (do not|don't|does not) (say|contain|mention|provide)|"
    r"cannot (be )?answer|no information)\b",
    re.IGNORECASE,
)
_STOP = frozenset(
    "a an the and or but if of to in on at by for with from as is are was were be been being it its "
    "this that these those there their they them he she his her we you your our i me my not no do does "
    "did can could would should will shall may might must have has had which who whom what when where "
    "why how than then so such into about over under also just only very more most some any all each "
    "answer question source sources following here".split()
)


@dataclass
class Generated:
    text: str
    citations: list[Citation]
    abstained: bool
    dropped: list[str]  # generated sentences left out as unsupported
    extractive: bool = False


def content_words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP and len(w) > 2}


class CitationChecker:
    """Turns the model's raw text, sentence by sentence, into text whose markers are all real."""

    def __init__(self, hits: list[Hit], min_support: float = 0.5, grounded: bool = True):
        self.hits = hits
        self.words = [content_words(h.chunk.text) for h in hits]
        self.min_support = min_support
        self.grounded = grounded
        self.dropped: list[str] = []

    def sentence(self, raw: str) -> str:
        """The sentence with valid markers only, a marker added if it had none, or "" if unsupported."""
        cited: list[int] = []

        def keep(match: re.Match) -> str:
            good = [n for n in _numbers(match.group(1)) if 1 <= n <= len(self.hits)]
            cited.extend(good)
            return "".join(f"[{n}]" for n in good)

        text = _MARKER.sub(keep, raw)
        if _ABSTAIN.search(text):
            return text
        best, support = self._best_support(text)
        if self.grounded and support < self.min_support:
            if text.strip():
                self.dropped.append(text.strip())
            return ""
        if not cited and best is not None and support >= self.min_support:
            text = insert_marker(text, best)
        return text

    def _best_support(self, sentence: str) -> tuple[int | None, float]:
        words = content_words(_MARKER.sub("", sentence))
        if len(words) < 2:
            return None, 0.0
        scores = [len(words & w) / len(words) for w in self.words]
        if not scores:
            return None, 0.0
        best = max(range(len(scores)), key=lambda i: scores[i])
        return best + 1, scores[best]

    def citations(self, text: str) -> list[Citation]:
        cited = sorted({n for m in _MARKER.finditer(text) for n in _numbers(m.group(1))})
        out = []
        for n in cited:
            if 1 <= n <= len(self.hits):
                chunk = self.hits[n - 1].chunk
                out.append(Citation(n, chunk.chunk_id, chunk.doc_id, chunk.source, chunk.text))
        return out


def _numbers(group: str) -> list[int]:
    return [int(x) for x in re.split(r"\s*,\s*", group)]


def insert_marker(sentence: str, n: int) -> str:
    stripped = sentence.rstrip()
    tail = sentence[len(stripped) :]
    if stripped and stripped[-1] in ".!?:;":
        return f"{stripped[:-1]} [{n}]{stripped[-1]}{tail}"
    return f"{stripped} [{n}]{tail}"


def _until(pieces: Iterator[str], cancelled: Callable[[], bool]) -> Iterator[str]:
    """The pieces until `cancelled()` turns true; then the LLM stream is closed (freeing the model)."""
    try:
        for piece in pieces:
            if cancelled():
                return
            yield piece
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()


def _sentences(pieces: Iterator[str]) -> Iterator[str]:
    """Regroup streamed pieces into sentences (each with its trailing whitespace)."""
    buffer = ""
    for piece in pieces:
        buffer += piece
        while True:
            match = _SENTENCE_END.search(buffer)
            if match is None or match.end() == len(buffer):
                break  # the boundary is only sure once something follows it
            yield buffer[: match.end()]
            buffer = buffer[match.end() :]
    if buffer:
        yield buffer


def source_sentences(text: str) -> list[str]:
    """Prose sentences of a chunk worth quoting (no headings, code or fragments)."""
    out = []
    in_code = False
    for line in text.splitlines():
        if line.strip().startswith("```"):
            in_code = not in_code
            continue
        if in_code or line.lstrip().startswith(("#", "|")):
            continue
        for sentence in re.split(r"(?<=[.!?])\s+", line.strip().lstrip("-* ").strip()):
            if 4 <= len(sentence.split()) <= 60:
                out.append(sentence)
    return out


def ranked_quotes(
    question: str,
    hits: list[Hit],
    embed: Callable[[list[str]], np.ndarray],
    min_similarity: float,
) -> list[tuple[int, str, float]]:
    """(source number, sentence, cosine to the question) of the quotable source sentences at least
    `min_similarity` similar to the question, most similar first."""
    candidates = [(n, s) for n, hit in enumerate(hits, start=1) for s in source_sentences(hit.chunk.text)]
    if not candidates:
        return []
    vectors = embed([question] + [s for _, s in candidates])
    similarity = vectors[1:] @ vectors[0]
    return [(candidates[i][0], candidates[i][1], float(similarity[i]))
            for i in np.argsort(-similarity, kind="stable") if similarity[i] >= min_similarity]


def extractive_answer(
    question: str,
    hits: list[Hit],
    embed: Callable[[list[str]], np.ndarray],
    max_sentences: int,
    min_similarity: float,
) -> str:
    """The source sentences most similar to the question, in source order, each cited."""
    if max_sentences <= 0:
        return ""
    best = ranked_quotes(question, hits, embed, min_similarity)[:max_sentences]
    order = {(n, sentence): i for i, (n, sentence) in
             enumerate((n, s) for n, hit in enumerate(hits, start=1) for s in source_sentences(hit.chunk.text))}
    best.sort(key=lambda q: order[(q[0], q[1])])
    return " ".join(insert_marker(sentence, n) for n, sentence, _ in best)


def generate_answer(
    question: str,
    messages: list[Message],
    hits: list[Hit],
    llm: LLM,
    llm_cfg: LLMConfig,
    gen_cfg: GenerationConfig,
    embed: Callable[[list[str]], np.ndarray],
    on_text: Callable[[str], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
    lead_quote: bool = False,
) -> Generated:
    """`lead_quote`: before the LLM runs, stream the source sentence most similar to the question
    (cited) as the answer's first sentence. A small local model needs seconds of prompt prefill
    before its first word; the quote is real, checked content a reader sees at once, and an
    answer whose generated sentences all fail the check keeps it (plus the next best quotes)."""

    def emit(text: str) -> None:
        if on_text and text:
            on_text(text)

    if not hits:
        emit(gen_cfg.abstain_text)
        return Generated(gen_cfg.abstain_text, [], True, [])
    checker = CitationChecker(hits, gen_cfg.min_support, gen_cfg.grounded)
    quotes = ranked_quotes(question, hits, embed, gen_cfg.extractive_min_similarity) if lead_quote else []
    out: list[str] = []
    if quotes:
        n, sentence, _ = quotes[0]
        out.append(insert_marker(sentence, n) + " ")
        emit(out[0])
    pieces = llm.stream(
        messages,
        max_new_tokens=llm_cfg.max_new_tokens,
        temperature=llm_cfg.temperature,
        repetition_penalty=llm_cfg.repetition_penalty,
        stop=["\nQuestion:", "\nSources:", "<|im_end|>"],
    )
    if cancelled is not None:
        pieces = _until(pieces, cancelled)
    generated = False
    for raw in _sentences(pieces):
        text = checker.sentence(raw)
        if quotes and _ABSTAIN.search(text):  # the quote already answers: "I don't know" would contradict it
            checker.dropped.append(text.strip())
            continue
        generated = generated or bool(text.strip())
        out.append(text)
        emit(text)
    if quotes and not generated:  # the quote stands; add the next best ones, as the extractive answer would
        more = [insert_marker(s, n) for n, s, _ in quotes[1: max(gen_cfg.extractive_sentences, 1)]]
        if more:
            out.append(" ".join(more))
            emit(out[-1])
        answer = "".join(out).strip()
        return Generated(answer, checker.citations(answer), False, checker.dropped, extractive=True)
    answer = "".join(out).strip()
    if answer and (_MARKER.search(answer) or not _ABSTAIN.search(answer)):
        return Generated(answer, checker.citations(answer), False, checker.dropped)
    if answer:  # the model said it does not know
        return Generated(answer, [], True, checker.dropped)
    quoted = extractive_answer(
        question, hits, embed, gen_cfg.extractive_sentences, gen_cfg.extractive_min_similarity
    )
    if quoted:
        emit(quoted)
        return Generated(quoted, checker.citations(quoted), False, checker.dropped, extractive=True)
    emit(gen_cfg.abstain_text)
    return Generated(gen_cfg.abstain_text, [], True, checker.dropped)
