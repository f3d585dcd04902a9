"""What the LLM is asked for each chunk, how its reply is read, and the voice pairs (no LLM).

QA: one request per chunk asks for K question/answer pairs in a `Q: … / A: …` format, shown by one
worked example given as an earlier chat turn. Small local models drift from any format, so the
reader is lenient: `Q:`, `Question:`, `Q1.`, `1.` or a bare line
ending in "?" start a question; `A:`, `Answer:` or the lines after a question are its answer;
markdown emphasis and list bullets are ignored. A reply giving no usable pair is a parse failure.

Voice: an instruction made from the chunk's heading path (or its file name) whose response is the
chunk's own text: it teaches the author's wording and needs no generated answer.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from llmtwin.types import Chunk

PROMPT_VERSION = "qa-v2"  # part of the cache key: a changed prompt regenerates

# One worked example as an earlier chat turn: the packaged 135M model follows the format from a
# previous assistant turn, not from a description or an example inside the user's message.
QA_SYSTEM = "You write questions about a passage and answer them from the passage, in the format Q: ... A: ..."
QA_PROMPT = "Write {k} questions a reader could ask about this passage, each with its answer from the passage.\n\nPassage: {text}"
_EXAMPLE_PASSAGE = (
    "The lighthouse keeper climbed the stairs every evening to light the lamp. In winter the supply boat "
    "could not land for weeks, so he kept a cellar of potatoes and lamp oil."
)
_EXAMPLE_REPLY = (
    "Q: Why did the keeper keep a cellar of potatoes?\nA: Because in winter the supply boat could not land for weeks.\n"
    "Q: When did the keeper light the lamp?\nA: Every evening, after climbing the stairs."
)

# words of the worked example that a reply should not bring in when its chunk lacks them
EXAMPLE_MARKERS = frozenset({"lighthouse", "keeper", "cellar", "potatoe", "potato", "lamp", "boat", "stair"})

_Q_START = re.compile(r"^\s*(?:[-*•]\s*)?(?:\*\*)?\s*(?:q(?:uestion)?\s*\d*\s*[:.)-]|\d+\s*[.)]|#+\s*)\s*(?:\*\*)?\s*", re.IGNORECASE)
_A_START = re.compile(r"^\s*(?:[-*•]\s*)?(?:\*\*)?\s*a(?:nswer)?\s*\d*\s*[:.)-]\s*(?:\*\*)?\s*", re.IGNORECASE)
_MARKUP = re.compile(r"\*\*|__|`")


@dataclass
class QA:
    question: str
    answer: str


def chunk_title(chunk: Chunk) -> str:
    """The heading path (` > `-joined), else the file name without extension, title-cased."""
    if chunk.heading_path:
        return " > ".join(h.strip() for h in chunk.heading_path if h.strip())
    stem = PurePosixPath(chunk.source).stem.replace("_", " ").replace("-", " ")
    return stem.strip().capitalize() or chunk.source


def qa_messages(chunk: Chunk, k: int, max_words: int = 220) -> list[dict[str, str]]:
    """System, the worked example (user + assistant turn), then the chunk (with its heading path)."""
    words = chunk.text.split()
    text = " ".join(words[:max_words]) if len(words) > max_words else chunk.text.strip()
    return [
        {"role": "system", "content": QA_SYSTEM},
        {"role": "user", "content": QA_PROMPT.format(k=2, text=_EXAMPLE_PASSAGE)},
        {"role": "assistant", "content": _EXAMPLE_REPLY},
        {"role": "user", "content": QA_PROMPT.format(k=k, text=f"({chunk_title(chunk)}) {text}")},
    ]


def _clean(line: str) -> str:
    return " ".join(_MARKUP.sub("", line).split()).strip(" \"'")


def parse_qa(reply: str) -> list[QA]:
    """Question/answer pairs from a model reply (see module doc); unpaired questions are dropped."""
    pairs: list[QA] = []
    question: str | None = None
    answer: list[str] = []

    def close() -> None:
        nonlocal question, answer
        if question and answer:
            text = " ".join(answer).strip()
            if text:
                pairs.append(QA(question, text))
        question, answer = None, []

    for raw in reply.splitlines():
        line = raw.strip()
        if not line:
            continue
        a = _A_START.match(line)
        if a and question is not None:
            answer.append(_clean(line[a.end():]))
            continue
        q = _Q_START.match(line)
        is_question = bool(q) and not a
        if is_question or (line.rstrip().endswith("?") and (question is None or answer)):
            close()
            question = _clean(line[q.end():] if q else line)
            # "Q: what …? A: …" on one line
            m = re.search(r"\s(?:\*\*)?a(?:nswer)?\s*[:.]\s*", question, re.IGNORECASE)
            if m and "?" in question[: m.start()]:
                answer.append(_clean(question[m.end():]))
                question = question[: m.start()].strip()
            continue
        if question is not None:
            answer.append(_clean(line))
    close()
    return [p for p in pairs if p.question and p.answer]


_VOICE_TEMPLATES = (
    "Write the part of your notes titled \"{title}\".",
    "In your own words, explain {topic}.",
    "What do you have to say about {topic}?",
    "Write a passage about {topic}, as you would in your documentation.",
)
_HEADING_LINE = re.compile(r"^\s*#{1,6}\s+.*$", re.MULTILINE)


def voice_text(chunk: Chunk) -> str:
    """The chunk's text as the author wrote it: leading heading lines (already in the instruction)
    removed, runs of blank lines collapsed, ends trimmed."""
    text = chunk.text.strip()
    while True:
        m = _HEADING_LINE.match(text)
        if not m or m.start() != 0:
            break
        text = text[m.end():].lstrip()
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def voice_instruction(chunk: Chunk) -> str:
    """An instruction derived from the heading path, one of a few templates chosen by the chunk id."""
    title = chunk_title(chunk)
    topic = chunk.heading_path[-1].strip() if chunk.heading_path and chunk.heading_path[-1].strip() else title
    topic = topic[0].lower() + topic[1:] if topic[:1].isupper() and not topic[1:2].isupper() else topic
    pick = int(hashlib.sha256(chunk.chunk_id.encode()).hexdigest(), 16) % len(_VOICE_TEMPLATES)
    return _VOICE_TEMPLATES[pick].format(title=title, topic=topic)
