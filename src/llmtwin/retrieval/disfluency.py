"""Rule-based repair of disfluent questions before retrieval (`retrieval.repair: true`).

Spoken or dictated questions keep the speaker's self-corrections: "When did the Normans, no
wait, the Vikings reach Iceland?" BM25 still finds the passage by its rare words, but the
embedding of the whole string points between two topics. A self-repair has a known surface
structure (Levelt 1983; Shriberg 1994):

    reparandum ─ interregnum (an editing term: "no", "sorry", "I mean", "uh"…) ─ repair

and the repair either restarts the question (it begins like a question: "what", "when", "is"…)
or replaces the words just before the editing term, from a word it shares with them ("the
Normans, no, the Vikings"); a repair starting with a name replaces the name before the term.
`repair()` drops the reparandum and the interregnum by those rules and removes filled pauses
("uh", "um"). Ambiguous terms ("no", "wait", "actually") count only where punctuation, another
editing term, a restart or a shared word marks them, so fluent questions ("Is there no cure?",
"rather than") pass through unchanged. No model is called: microseconds per question, where an
LLM rewrite costs seconds and the packaged 135M model garbles it (docs/BENCHMARKS.md).

Measured on all 8,000 disfl_qa questions it *loses* retrieval quality — hybrid nDCG@10 0.9258 →
0.8841, dense 0.814 → 0.769, BM25 0.914 → 0.872 (5,991 questions changed, keeping 66 % of their
words): Disfl-QA's corrected-away words name other things of the same passage, so for passage
retrieval they are clues, not noise. Hence off by default; it is for corpora where a speaker's
false start points elsewhere, and for showing the LLM a clean question.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmtwin.config import RetrievalConfig

FILLERS = frozenset({"uh", "um", "uhm", "umm", "uhh", "er", "erm", "ah", "eh", "hmm", "mm"})
# Editing terms that mark a repair wherever they stand (longest first when matching).
STRONG = (
    ("let", "me", "rephrase"), ("scratch", "that"), ("or", "rather"), ("i", "mean"), ("i", "meant"),
    ("make", "that"), ("no", "wait"), ("wait", "no"), ("sorry",), ("oops",), ("correction",),
)
WEAK = frozenset({"no", "wait", "actually", "rather", "well", "oh", "okay", "ok"})  # need a marker
OPENERS = frozenset({
    "what", "who", "whom", "whose", "when", "where", "which", "why", "how",
    "is", "are", "was", "were", "do", "does", "did", "can", "could", "will", "would", "should",
    "has", "have", "had", "in", "on", "at", "during", "for", "from", "to", "name", "list",
})
ANCHOR_SPAN = 6  # how far back a shared word may restart the repair
_EDGE = ",;:-–—…"


@dataclass
class Repair:
    text: str  # the repaired question (the input itself when nothing was found)
    removed: list[str]  # the dropped spans, in order, for the trace

    @property
    def changed(self) -> bool:
        return bool(self.removed)


def _norm(word: str) -> str:
    return word.strip(_EDGE + ".!?\"'()[]").lower()


def _term_at(words: list[str], i: int) -> int:
    """The length of the editing term starting at words[i] (0 if none), before weak-term checks."""
    for term in STRONG:
        n = len(term)
        if tuple(_norm(w) for w in words[i : i + n]) == term:
            if term[-1] == "rather" and i + n < len(words) and _norm(words[i + n]) == "than":
                return 0  # "or rather than": part of the question
            return n
    return 1 if _norm(words[i]) in WEAK else 0


def _marked(words: list[str], i: int, j: int) -> bool:
    """Whether the weak interregnum words[i:j] reads as an editing term, not as part of the question."""
    before = words[i - 1] if i > 0 else ""
    if before.endswith(tuple(_EDGE)) or words[j - 1].endswith(tuple(_EDGE)) or words[i].startswith(tuple(_EDGE)):
        return True
    if j >= len(words):
        return False
    nxt = _norm(words[j])
    if nxt in OPENERS and i > 0:
        return True
    return nxt in {_norm(w) for w in words[max(0, i - ANCHOR_SPAN) : i]}


def _interregnum(words: list[str], i: int) -> tuple[int, bool]:
    """(end, is_repair) of the editing run starting at words[i]: fillers and editing terms in a
    row. Fillers alone are dropped in place (is_repair False); a run of weak terms only is a repair
    where it is marked (a filler in the run marks it too); unmarked, only its leading fillers go."""
    j, strong, fillers, lead = i, False, False, i
    while j < len(words):
        if _norm(words[j]) in FILLERS:
            fillers = True
            j += 1
            if lead == j - 1:
                lead = j
            continue
        n = _term_at(words, j)
        if not n:
            break
        strong = strong or n > 1 or _norm(words[j]) not in WEAK
        j += n
    if j == lead:  # fillers only (or nothing)
        return j, False
    if strong or fillers or _marked(words, lead, j):
        return j, True
    return lead, False


def _cut(prefix: list[str], repair: list[str]) -> int:
    """How many words at the end of `prefix` the repair replaces."""
    if not prefix or not repair:
        return 0
    first = _norm(repair[0])
    if first in OPENERS:  # a restart: the whole question so far is replaced
        return len(prefix)
    for k in range(1, min(len(prefix), ANCHOR_SPAN) + 1):  # the nearest shared word
        if _norm(prefix[-k]) == first:
            return k
    if repair[0][:1].isupper():  # a name replaces the name before the term
        k = 0
        while k < len(prefix) and prefix[-1 - k][:1].isupper() and len(prefix) - 1 - k > 0:
            k += 1
        if k:
            return k
    return 1


def repair(question: str) -> Repair:
    """`question` without its reparanda, interregna and filled pauses."""
    words = question.split()
    out: list[str] = []
    removed: list[str] = []
    i = 0
    while i < len(words):
        j, is_repair = _interregnum(words, i)
        if is_repair and j == len(words):  # nothing follows, so nothing was corrected ("Why was he sorry?")
            j = i
        if j == i:
            out.append(words[i])
            i += 1
            continue
        k = _cut(out, words[j:]) if is_repair else 0
        removed.append(" ".join(out[len(out) - k :] + words[i:j]))
        del out[len(out) - k :]
        i = j
    if not removed:
        return Repair(question, [])
    text = " ".join(out).strip(_EDGE + " ")
    text = re.sub(r"\s+([,;:?.!])", r"\1", text)
    text = re.sub(r"[,;:]+(?=[,;:?.!]|$)", "", text)
    if not text:
        return Repair(question, [])
    if question.rstrip().endswith("?") and not text.endswith("?"):
        text = text.rstrip(".!") + "?"
    return Repair(text[:1].upper() + text[1:] if question[:1].isupper() else text, removed)


def searched_question(question: str, cfg: RetrievalConfig) -> str:
    """The question as retrieval searches it: repaired when `retrieval.repair` is on."""
    return repair(question).text if cfg.repair else question
