"""Answers with citations that always point at real retrieved chunks.

The model is asked to cite with [n]. What it writes is checked sentence by sentence as it
streams: a marker naming no source is dropped; a sentence the model left uncited gets the
source that supports it best by word overlap (if any does); an answer that says it does not
know is marked as an abstention. Small local models cite unreliably, so attribution after the
fact is what keeps every marker honest.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

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
    "why how than then so such into about over under also just only very more most some any all each".split()
)


@dataclass
class Generated:
    text: str
    citations: list[Citation]
    abstained: bool


def content_words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP and len(w) > 2}


class CitationChecker:
    """Turns the model's raw text, sentence by sentence, into text whose markers are all real."""

    def __init__(self, hits: list[Hit], min_support: float = 0.5):
        self.hits = hits
        self.words = [content_words(h.chunk.text) for h in hits]
        self.min_support = min_support
        self.used: list[int] = []

    def sentence(self, raw: str) -> str:
        valid: list[int] = []

        def keep(match: re.Match) -> str:
            numbers = [int(x) for x in re.split(r"\s*,\s*", match.group(1))]
            good = [n for n in numbers if 1 <= n <= len(self.hits)]
            valid.extend(good)
            return "".join(f"[{n}]" for n in good)

        text = _MARKER.sub(keep, raw)
        if not valid and not _ABSTAIN.search(text):
            best = self._best_support(text)
            if best is not None:
                valid.append(best)
                text = _insert_marker(text, best)
        for n in valid:
            if n not in self.used:
                self.used.append(n)
        return text

    def _best_support(self, sentence: str) -> int | None:
        words = content_words(sentence)
        if not words:
            return None
        scores = [len(words & w) / len(words) for w in self.words]
        best = max(range(len(scores)), key=lambda i: scores[i], default=None)
        if best is None or scores[best] < self.min_support:
            return None
        return best + 1

    def citations(self, text: str) -> list[Citation]:
        cited = sorted({int(n) for m in _MARKER.finditer(text) for n in re.split(r"\s*,\s*", m.group(1))})
        out = []
        for n in cited:
            chunk = self.hits[n - 1].chunk
            out.append(Citation(n, chunk.chunk_id, chunk.doc_id, chunk.source, chunk.text))
        return out


def _insert_marker(sentence: str, n: int) -> str:
    stripped = sentence.rstrip()
    tail = sentence[len(stripped) :]
    if stripped and stripped[-1] in ".!?:;":
        return f"{stripped[:-1]} [{n}]{stripped[-1]}{tail}"
    return f"{stripped} [{n}]{tail}"


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


def generate_answer(
    messages: list[Message],
    hits: list[Hit],
    llm: LLM,
    llm_cfg: LLMConfig,
    gen_cfg: GenerationConfig,
    on_text: Callable[[str], None] | None = None,
) -> Generated:
    if not hits:
        if on_text:
            on_text(gen_cfg.abstain_text)
        return Generated(gen_cfg.abstain_text, [], True)
    checker = CitationChecker(hits)
    pieces = llm.stream(
        messages,
        max_new_tokens=llm_cfg.max_new_tokens,
        temperature=llm_cfg.temperature,
        stop=["\nQuestion:", "\nSources:", "<|im_end|>"],
    )
    out = []
    for raw in _sentences(pieces):
        text = checker.sentence(raw)
        out.append(text)
        if on_text:
            on_text(text)
    answer = "".join(out).strip()
    abstained = not answer or bool(_ABSTAIN.search(answer)) and not _MARKER.search(answer)
    if not answer:
        answer = gen_cfg.abstain_text
        if on_text:
            on_text(answer)
    return Generated(answer, checker.citations(answer), abstained)
