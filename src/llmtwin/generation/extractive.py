"""Answers taken from the evidence (`generation.mode: extractive`, the default with the packaged model).

A 135M model cannot be trusted to write an answer; it can be trusted not to be asked. This mode
answers with the sentence of the retrieved chunks that answers the question, cited, and says
that the documents do not say when no sentence does. No LLM is loaded.

1. **Candidates**: the prose sentences of the top `answer_chunks` hits, split by line and
   sentence (Markdown headings, code blocks, tables and list markers are not sentences).
2. **Features** of each candidate against the question: its cosine to the question (the same
   encoder as search), its lead over the best other candidate, the share of the question's
   content words (stemmed) and word pairs it holds, how much new content it brings, its chunk's
   rank and score, and whether it holds what the question asks for (a number for "how many", a
   year or date for "when", a name not in the question for "who"/"where").
3. **A selector** scores each candidate (a logistic model over the features); the best one is
   the answer. Its probability is the **answerability** score: under `answer_threshold` the answer
   abstains and lists the closest sources instead.

The selector's weights are the defaults below until `twin tune answers` trains them on the
project's own chunks (training/answer_selector.py: pseudo-questions made from the chunks'
sentences, no labels); the trained ones are used from then on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llmtwin.retrieval.sentences import sentence_spans
from llmtwin.types import Hit

FEATURES = (
    "cosine",  # cos(question, sentence)
    "lead",  # cosine minus the best other candidate's (0 for all but the best)
    "lexical",  # share of the question's content stems in the sentence
    "pairs",  # share of the question's adjacent content-stem pairs in the sentence
    "novelty",  # share of the sentence's content stems not in the question (an answer adds something)
    "chunk_rank",  # 1 / rank of the sentence's chunk
    "chunk_score",  # the chunk's fused score over the top chunk's
    "answer_type",  # holds what the question asks for (1), lacks it (-1), no type asked (0)
    "short",  # 1 for a sentence under 6 words (fragments answer less often)
    "intro",  # 1 for a sentence ending in ':' (it introduces a list or code: the answer is below)
)

# Hand-set before any training (cosine and word overlap lead; see docs/answers.md). A trained
# selector replaces them: `twin tune answers`.
DEFAULT_WEIGHTS = {
    "cosine": 6.0, "lead": 4.0, "lexical": 3.0, "pairs": 1.0, "novelty": 0.5,
    "chunk_rank": 1.0, "chunk_score": 0.5, "answer_type": 0.8, "short": -1.0, "intro": -1.5,
}  # fmt: skip
DEFAULT_BIAS = -6.0

_WORD = re.compile(r"[A-Za-z0-9]+(?:['’][a-z]+)?")
_STOP = frozenset(
    "a an the and or but if of to in on at by for with from as is are was were be been being it its this "
    "that these those there their they them he she his her we you your our i me my not no do does did can "
    "could would should will shall may might must have has had which who whom whose what when where why how "
    "than then so such into about over under also just only very more most some any all each much many "
    "s t one two get got use used using make made like well".split()
)
_FENCE = re.compile(r"^\s*(```|~~~)")
_LIST_MARK = re.compile(r"^\s*(?:[-*+]|\d{1,3}[.)])\s+")
NUMBER = re.compile(r"\b\d[\d,.]*\b|\b(?:one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|"
                     r"twenty|thirty|forty|fifty|hundred|thousand|million|billion|dozen)\b", re.I)
DATE = re.compile(r"\b(?:1[0-9]{3}|20[0-9]{2})s?\b|\b(?:January|February|March|April|May|June|July|August|"
                   r"September|October|November|December)\b|\bcentury\b|\b\d+(?:st|nd|rd|th)\b", re.I)
NAME = re.compile(r"\b[A-Z][a-zA-Z’'-]+(?:\s+(?:of|de|van|von|the|da|del)?\s*[A-Z][a-zA-Z’'-]+)*")


def _stemmer():
    import Stemmer  # PyStemmer: the Snowball stemmers in C, as the BM25 index uses

    return Stemmer.Stemmer("english")


_STEM = None


def content_stems(text: str) -> list[str]:
    """Stems of the content words of `text`, in order (stop words and 1-letter words left out)."""
    global _STEM
    if _STEM is None:
        _STEM = _stemmer()
    words = [w.lower() for w in _WORD.findall(text)]
    return _STEM.stemWords([w for w in words if w not in _STOP and len(w) > 1])


def answer_type(question: str) -> str | None:
    """What the question asks for: number, date, name, or None (no type)."""
    q = question.lower()
    if re.search(r"\bhow (many|much|long|far|old|big|large|tall|high|often)\b|\bwhat (number|percentage|percent)\b", q):
        return "number"
    if re.search(r"\bwhen\b|\b(what|which) (year|date|day|month|century|decade|time)\b|\bhow long ago\b", q):
        return "date"
    if re.search(r"\b(who|whom|whose|where)\b", q):
        return "name"
    return None


def _type_match(kind: str | None, sentence: str, question_words: set[str]) -> float:
    if kind is None:
        return 0.0
    if kind == "number":
        found = NUMBER.search(sentence) is not None
    elif kind == "date":
        found = DATE.search(sentence) is not None
    else:
        found = any(
            w.lower() not in question_words for m in NAME.finditer(sentence) for w in m.group().split()
            if m.start() > 0 or len(m.group().split()) > 1
        )
    return 1.0 if found else -1.0


# ------------------------------------------------------------------------------------ candidates


def prose_sentences(text: str) -> list[str]:
    """The sentences of a chunk worth answering with: no headings, code, table rows, or fragments
    under 3 words. Lines wrapped inside a paragraph or a list item are joined first (Markdown
    wraps prose at ~100 characters); list markers are taken off."""
    out: list[str] = []
    for i, block in enumerate(_paragraphs(text)):
        sentences = [block[a:b] for a, b in sentence_spans(block)]  # the chunker's rules (abbreviations…)
        if i == 0 and sentences and _cut_off(block, sentences[0]):
            sentences = sentences[1:]  # a chunk that starts inside a sentence
        out.extend(s for s in sentences if len(s.split()) >= 3 and re.search(r"[A-Za-z]", s))
    return out


def _cut_off(block: str, head: str) -> bool:
    """Whether a chunk's first paragraph starts inside a sentence (chunks overlap and may start
    mid-paragraph): a lower-case word, a closing mark, or more ')' than '(' in its first sentence."""
    return block[:1].islower() or block[:1] in ",;:)]}" or head.count(")") > head.count("(")


def _paragraphs(text: str) -> list[str]:
    """Prose paragraphs and list items of Markdown-ish text, each on one line."""
    blocks: list[str] = []
    current: list[str] = []
    in_code = False

    def flush() -> None:
        if current:
            blocks.append(" ".join(current))
            current.clear()

    for line in text.splitlines():
        if _FENCE.match(line):
            flush()
            in_code = not in_code
            continue
        stripped = line.strip()
        if in_code or not stripped:
            flush()
            continue
        if stripped.startswith(("#", "|", "<", ">")) or set(stripped) <= set("=-~*_+ ") or stripped.count(" | ") >= 2:
            flush()
            continue
        if _LIST_MARK.match(line):
            flush()
            stripped = _LIST_MARK.sub("", stripped)
        current.append(stripped)
    flush()
    return blocks


@dataclass
class Candidates:
    hit_index: list[int] = field(default_factory=list)  # 0-based, into the hits
    sentences: list[str] = field(default_factory=list)
    features: np.ndarray = field(default_factory=lambda: np.zeros((0, len(FEATURES)), np.float32))


def candidates(
    question: str,
    hits: list[Hit],
    question_vector: np.ndarray,
    embed: Callable[[list[str]], np.ndarray],
    n_chunks: int,
) -> Candidates:
    """Every prose sentence of the top `n_chunks` hits with its features (FEATURES order)."""
    out = Candidates()
    for i, hit in enumerate(hits[:n_chunks]):
        for sentence in dict.fromkeys(prose_sentences(hit.chunk.text)):
            out.hit_index.append(i)
            out.sentences.append(sentence)
    if not out.sentences:
        return out
    vectors = np.asarray(embed(out.sentences), dtype=np.float32)
    q = np.asarray(question_vector, dtype=np.float32)
    q = q / max(float(np.linalg.norm(q)), 1e-12)
    cos = vectors @ q
    order = np.argsort(-cos, kind="stable")
    second = cos[order[1]] if len(cos) > 1 else cos[order[0]] - 0.1
    lead = np.where(np.arange(len(cos)) == order[0], cos - second, 0.0)
    q_stems = content_stems(question)
    q_set = set(q_stems)
    q_pairs = set(zip(q_stems, q_stems[1:]))
    q_words = {w.lower() for w in _WORD.findall(question)}
    kind = answer_type(question)
    top = max(hits[0].score, 1e-9) if hits else 1.0
    rows = []
    for j, sentence in enumerate(out.sentences):
        stems = content_stems(sentence)
        s_set = set(stems)
        hit = hits[out.hit_index[j]]
        rows.append([
            cos[j],
            lead[j],
            len(q_set & s_set) / len(q_set) if q_set else 0.0,
            len(q_pairs & set(zip(stems, stems[1:]))) / len(q_pairs) if q_pairs else 0.0,
            len(s_set - q_set) / len(s_set) if s_set else 0.0,
            1.0 / (out.hit_index[j] + 1),
            max(0.0, min(1.0, hit.score / top)) if top > 0 else 0.0,
            _type_match(kind, sentence, q_words),
            1.0 if len(sentence.split()) < 6 else 0.0,
            1.0 if sentence.rstrip().endswith(":") else 0.0,
        ])
    out.features = np.asarray(rows, dtype=np.float32)
    return out


# ------------------------------------------------------------------------------------ the selector


@dataclass
class Selector:
    """A logistic model over FEATURES: sigmoid(w · x + b) is the probability that a candidate is
    the sentence that answers the question. `source` says where the weights came from."""

    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    bias: float = DEFAULT_BIAS
    source: str = "default"

    def vector(self) -> np.ndarray:
        return np.asarray([self.weights.get(f, 0.0) for f in FEATURES], dtype=np.float32)

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        if len(features) == 0:
            return np.zeros(0, np.float32)
        z = features @ self.vector() + self.bias
        return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"features": list(FEATURES), "weights": self.weights, "bias": self.bias,
                                    "source": self.source}, indent=1), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Selector:
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls({k: float(v) for k, v in data["weights"].items()}, float(data["bias"]), str(data.get("source", path)))


@dataclass
class Extracted:
    sentence: str  # "" when abstaining
    hit_index: int  # 0-based; -1 when abstaining
    answerability: float
    ranked: list[tuple[int, str, float]]  # (hit index, sentence, probability), best first


def select(cands: Candidates, selector: Selector, threshold: float) -> Extracted:
    """The best candidate, or an abstention when its probability is under `threshold`."""
    if not cands.sentences:
        return Extracted("", -1, 0.0, [])
    p = selector.probabilities(cands.features)
    order = np.argsort(-p, kind="stable")
    ranked = [(cands.hit_index[i], cands.sentences[i], float(p[i])) for i in order]
    best_hit, best, prob = ranked[0]
    if prob < threshold:
        return Extracted("", -1, prob, ranked)
    return Extracted(best, best_hit, prob, ranked)
