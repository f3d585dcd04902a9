"""Quality filters for generated pairs: length, language, answerability. Each returns a reason or None.

Language (`data.language: en`) is a cheap heuristic, no model: at least 80% of the letters must be
Latin script (a–z with accents), and a text of 8 words or more must have at least 8% English
function words ("the", "of", "is", …; ordinary English prose has 30–50%). `any` turns it off.

Answerability (QA pairs only): the answer must be grounded in its chunk — at least `min_support` of
its content words (the answer checker's word test, with a final plural "s" cut) appear in the chunk; it must say something the
question does not (two content words or more not in the question); it must not be a refusal; and
the question must be about the chunk (one content word or more shared with it).
"""

from __future__ import annotations

import re
import unicodedata

from llmtwin.generation.answer import _ABSTAIN, content_words

_LETTER_WORD = re.compile(r"[^\W\d_]+")
_EN_FUNCTION = frozenset(
    "the of and to a in is it that for on with as are was be by this an or from at not have has can "
    "you your we our they their which what when where how why who do does if but will would should "
    "there these those its into more also than all one each use used".split()  # noqa: SIM905
)


def words(text: str) -> int:
    return len(text.split())


def length_reason(text: str, lo: int, hi: int, what: str) -> str | None:
    n = words(text)
    if n < lo:
        return f"{what} too short ({n} words < {lo})"
    if n > hi:
        return f"{what} too long ({n} words > {hi})"
    return None


def latin_share(text: str) -> float:
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return 1.0
    latin = sum(1 for c in letters if "LATIN" in unicodedata.name(c, ""))
    return latin / len(letters)


def language_reason(text: str, language: str) -> str | None:
    """None when `text` passes the language check for `language` ("en" or "any")."""
    if language == "any":
        return None
    share = latin_share(text)
    if share < 0.8:
        return f"not English: {share:.0%} Latin letters"
    tokens = [w.lower() for w in _LETTER_WORD.findall(text)]
    if len(tokens) >= 8:
        rate = sum(1 for w in tokens if w in _EN_FUNCTION) / len(tokens)
        if rate < 0.08:
            return f"not English: {rate:.0%} function words"
    return None


def stems(text: str) -> set[str]:
    """Content words with a plural / third-person "s" cut (benchmarks ~ benchmark): a crude stem."""
    return {w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w for w in content_words(text)}


def answer_support(answer: str, chunk: str) -> float:
    words_ = stems(answer)
    if not words_:
        return 0.0
    return len(words_ & stems(chunk)) / len(words_)


def answerability_reason(question: str, answer: str, chunk: str, min_support: float) -> str | None:
    if _ABSTAIN.search(answer):
        return "unanswerable: the answer refuses"
    q_words = stems(question)
    if not q_words & stems(chunk):
        return "unanswerable: the question shares no content word with the chunk"
    support = answer_support(answer, chunk)
    if support < min_support:
        return f"unanswerable: answer support {support:.2f} < {min_support}"
    if len(stems(answer) - q_words) < 2:
        return "trivial: the answer only repeats the question"
    return None


_PARAGRAPH = re.compile(r"\n\s*\n")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9`(\"'])")


def prose_sentences(text: str) -> list[str]:
    """Sentences of the prose in `text`: paragraphs (blank-line separated) with their hard line wraps
    joined, split after . ! ? before a capital; table rows, code fences and fragments of fewer than
    five words are left out."""
    out = []
    for para in _PARAGRAPH.split(text):
        if "```" in para or para.lstrip().startswith("|"):
            continue
        for sentence in _SENTENCE_END.split(" ".join(para.split())):
            sentence = sentence.lstrip("#-*• ").strip()
            if len(sentence.split()) >= 5 and "|" not in sentence:
                out.append(sentence)
    return out


def extractive_answer(question: str, chunk: str, min_shared: int = 2) -> str | None:
    """The chunk's prose sentence sharing the most content words with the question (at least
    `min_shared`; the earliest on ties) — a grounded answer in the author's own words, used when the
    generated one fails the support test. None when no sentence is close enough."""
    q = stems(question)
    best: tuple[int, str] | None = None
    for sentence in prose_sentences(chunk):
        shared = len(q & stems(sentence))
        if shared >= min_shared and (best is None or shared > best[0]):
            best = (shared, sentence)
    return best[1] if best else None
