"""The RAG triad: context relevance, groundedness and answer relevance of one answered question.

Each score is in [0, 1] and names the method that produced it:
- `llm`: the judge (evaluation/judge.py) answers a yes/no question; the score is P(yes) read from
  its next-token probabilities (or the share of "yes" votes for text-only backends);
- `fallback`: deterministic, no LLM — content-word overlap (as generation/answer.py checks citations)
  and embedding cosine with the project's embedder.

Definitions:
- context relevance: mean over the retrieved chunks of "is this passage relevant to the question?";
- groundedness: the answer is split into claims (sentences, then clauses at ";"; citation markers
  removed); the share of claims supported by the retrieved context (llm: P(yes) ≥ 0.5 for "is the
  claim supported by the context?"; fallback: at least `claim_support` of the claim's content words
  appear in one retrieved chunk, or the claim's embedding has cosine ≥ 0.75 with a context sentence);
- answer relevance: "does the answer address the question?" (fallback: cosine question ↔ answer,
  clipped to [0, 1]).

Conventions (where RAGAS, DeepEval and TruLens disagree):
- an answer with no claims (empty, or only a citation / a one-word fragment): groundedness is NaN
  (undefined, left out of means and counted as `no_claims`). RAGAS returns NaN, DeepEval 1; 1 would
  reward saying nothing.
- an abstention ("I don't know…"): groundedness and answer relevance are NaN; it is scored instead
  by the abstention metrics (right on an unanswerable question, wrong on an answerable one).
- an empty answer that is not an abstention: answer relevance 0.
- no retrieved context: context relevance 0 (nothing relevant was retrieved).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from llmtwin.generation.answer import _ABSTAIN, content_words
from llmtwin.retrieval.sentences import sentence_spans

NAN = float("nan")
_MARKERS = re.compile(r"\s*\[\d+(?:\s*,\s*\d+)*\]")
_CLAUSE = re.compile(r";\s+")
_MAX_CONTEXT_CHARS = 3000  # of the joined context shown to the judge per claim (a small model's window)

CONTEXT_SYSTEM = "You decide whether a passage is relevant to a question. Reply Yes or No."
CONTEXT_USER = "Question: {question}\n\nPassage:\n{passage}\n\nDoes the passage contain information that helps answer the question? Reply Yes or No."
CLAIM_SYSTEM = "You check facts against a context. Reply Yes or No."
CLAIM_USER = "Context:\n{context}\n\nClaim: {claim}\n\nIs the claim supported by the context? Reply Yes or No."
ANSWER_SYSTEM = "You decide whether an answer responds to a question. Reply Yes or No."
ANSWER_USER = "Question: {question}\n\nAnswer: {answer}\n\nDoes the answer address the question? Reply Yes or No."


@dataclass
class Claim:
    text: str
    supported: bool | None  # None: the judge gave no verdict
    score: float  # llm: P(yes); fallback: best content-word support
    method: str


@dataclass
class TriadScores:
    context_relevance: float
    groundedness: float
    answer_relevance: float
    methods: dict[str, str]  # score name → "llm" or "fallback:..."
    claims: list[Claim] = field(default_factory=list)
    chunk_relevance: list[float] = field(default_factory=list)
    abstained: bool = False
    no_claims: bool = False
    claims_skipped: int = 0  # claims past max_claims, not checked
    judge_failures: int = 0  # judge calls that gave no verdict (fallback used for them)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("context_relevance", "groundedness", "answer_relevance"):
            d[k] = None if math.isnan(d[k]) else round(d[k], 4)
        return d


def split_claims(answer: str) -> list[str]:
    """Claims of an answer: its sentences (the chunker's splitter, one per line too), then clauses at
    ";"; citation markers removed; fragments with fewer than two content words dropped."""
    text = _MARKERS.sub("", answer or "")
    out = []
    for start, end in sentence_spans(text):
        for clause in _CLAUSE.split(text[start:end]):
            clause = clause.strip()
            if len(content_words(clause)) >= 2:
                out.append(clause)
    return out


def is_abstention(answer: str, abstain_text: str = "") -> bool:
    text = (answer or "").strip()
    return bool(text) and (text == abstain_text.strip() or bool(_ABSTAIN.search(text)))


def word_support(claim: str, passages: list[str]) -> float:
    """The largest share of the claim's content words found in one passage."""
    words = content_words(claim)
    if not words:
        return 0.0
    return max((len(words & content_words(p)) / len(words) for p in passages), default=0.0)


def _cos(a, b) -> float:
    import numpy as np

    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    return float(a @ b / (na * nb)) if na and nb else 0.0


class TriadScorer:
    """Scores (question, answer, context) with a Judge (method `llm`) or without (fallbacks).
    `embed`: texts → vectors (the project's embedder), used by the fallbacks."""

    def __init__(
        self,
        judge=None,
        embed: Callable[[list[str]], Any] | None = None,
        *,
        claim_support: float = 0.6,
        max_claims: int = 8,
        abstain_text: str = "",
    ):
        self.judge = judge
        self.embed = embed
        self.claim_support = claim_support
        self.max_claims = max_claims
        self.abstain_text = abstain_text

    def score(self, question: str, answer: str, contexts: list[str]) -> TriadScores:
        failures = [0]
        methods: dict[str, str] = {}
        chunk_rel = [self._context_relevance(question, c, failures) for c in contexts]
        methods["context_relevance"] = "llm" if self.judge else ("fallback:cosine" if self.embed else "fallback:overlap")
        context_relevance = sum(chunk_rel) / len(chunk_rel) if chunk_rel else 0.0
        abstained = is_abstention(answer, self.abstain_text)
        claims_text = [] if abstained else split_claims(answer)
        skipped = max(0, len(claims_text) - self.max_claims)
        claims = [self._claim(c, contexts, failures) for c in claims_text[: self.max_claims]]
        methods["groundedness"] = "llm" if self.judge else "fallback:overlap+cosine"
        if abstained or not claims:
            groundedness = NAN
        else:
            groundedness = sum(1.0 for c in claims if c.supported) / len(claims)
        methods["answer_relevance"] = "llm" if self.judge else "fallback:cosine"
        if abstained:
            answer_relevance = NAN
        elif not (answer or "").strip():
            answer_relevance = 0.0
        else:
            answer_relevance = self._answer_relevance(question, _MARKERS.sub("", answer), failures)
        return TriadScores(context_relevance, groundedness, answer_relevance, methods, claims, chunk_rel,
                           abstained, not abstained and not claims, skipped, failures[0])

    # -- the three judgements, each with its fallback -------------------------------------------
    def _context_relevance(self, question: str, passage: str, failures: list[int]) -> float:
        if self.judge is not None:
            p, _ = self.judge.yes_probability(CONTEXT_SYSTEM, CONTEXT_USER.format(question=question, passage=passage[:_MAX_CONTEXT_CHARS]))
            if p is not None:
                return p
            failures[0] += 1
        if self.embed is not None:
            q, c = self.embed([question, passage])
            return max(0.0, _cos(q, c))
        return word_support(question, [passage])

    def _claim(self, claim: str, contexts: list[str], failures: list[int]) -> Claim:
        if self.judge is not None:
            context = "\n\n".join(contexts)[:_MAX_CONTEXT_CHARS]
            p, _ = self.judge.yes_probability(CLAIM_SYSTEM, CLAIM_USER.format(context=context, claim=claim))
            if p is not None:
                return Claim(claim, p >= 0.5, round(p, 4), "llm")
            failures[0] += 1
        support = word_support(claim, contexts)
        supported = support >= self.claim_support
        if not supported and self.embed is not None and contexts:
            sentences = [s for c in contexts for s in (c[a:b] for a, b in sentence_spans(c)) if s.strip()]
            if sentences:
                vectors = self.embed([claim] + sentences)
                best = max(_cos(vectors[0], v) for v in vectors[1:])
                supported = best >= 0.75
        return Claim(claim, supported, round(support, 4), "fallback")

    def _answer_relevance(self, question: str, answer: str, failures: list[int]) -> float:
        if self.judge is not None:
            p, _ = self.judge.yes_probability(ANSWER_SYSTEM, ANSWER_USER.format(question=question, answer=answer))
            if p is not None:
                return p
            failures[0] += 1
        if self.embed is not None:
            q, a = self.embed([question, answer])
            return max(0.0, _cos(q, a))
        return word_support(question, [answer])
