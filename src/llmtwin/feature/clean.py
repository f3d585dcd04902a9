"""Clean a loaded text: unicode, whitespace and repeated boilerplate lines. Code is left alone.

Prose gets NFKC, one space between words and no repeated boilerplate; code (file_type "code",
and ``` / ~~~ fenced blocks in any other type) gets only NFC, control-character removal and
trailing-whitespace stripping, so its indentation and blank lines are kept.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

_NEWLINES = re.compile(r"\r\n?|[\x0b\x0c\x85\u2028\u2029]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # all C0/C1 controls but \t and \n
_ZERO_WIDTH = re.compile("[\u200b\u2060\ufeff\u00ad]")  # zero-width space, word joiner, BOM, soft hyphen
_INNER_SPACE = re.compile(r"(?<=\S)[ \t]+")  # runs after a word; leading indentation is kept
_TRAILING_SPACE = re.compile(r"[^\S\n]+$", re.M)
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
# Lines never counted as boilerplate: headings, horizontal rules, table separator rows.
_STRUCTURAL = re.compile(r"\s*(#{1,6}\s.*|([-*_])(\s*\2){2,}|\|?(\s*:?-+:?\s*\|)+\s*(:?-+:?)?\s*)")
_BOILERPLATE_MIN_CHARS = 10


def clean_text(text: str, file_type: str, boilerplate_min_repeats: int = 3) -> str:
    """The cleaned text of a document of `file_type` (md, txt, rst, html, pdf, code, json, jsonl).

    A prose line of 10+ characters occurring `boilerplate_min_repeats` times or more is kept at
    its first occurrence and removed elsewhere (page headers and footers, newsletter banners).
    """
    text = _NEWLINES.sub("\n", text)
    if file_type == "code":
        return _clean_code(text).strip("\n")
    lines: list[tuple[str, bool]] = []  # (line, is_code)
    for block, is_code in _split_fenced(text.split("\n")):
        cleaned = _clean_code(block) if is_code else _clean_prose(block)
        lines.extend((line, is_code) for line in cleaned.split("\n"))
    lines = _drop_boilerplate(lines, boilerplate_min_repeats)
    return "\n".join(_collapse_blank_lines(lines)).strip()


def _clean_code(text: str) -> str:
    text = _CONTROL.sub("", unicodedata.normalize("NFC", text))
    return _TRAILING_SPACE.sub("", text)


def _clean_prose(text: str) -> str:
    text = unicodedata.normalize("NFKC", text)  # also turns no-break and other spaces into " "
    text = _CONTROL.sub("", _ZERO_WIDTH.sub("", text))
    text = _TRAILING_SPACE.sub("", text)
    return _INNER_SPACE.sub(" ", text)


def _split_fenced(lines: list[str]) -> list[tuple[str, bool]]:
    """Consecutive lines grouped into (block, is_code): fenced blocks, fences included, are code.
    A fence closes on a line of the same character at least as long; an unclosed fence runs to
    the end (as in CommonMark)."""
    blocks: list[tuple[str, bool]] = []
    start, fence = 0, ""
    for i, line in enumerate(lines):
        m = _FENCE.match(line)
        if not fence and m:
            if i > start:
                blocks.append(("\n".join(lines[start:i]), False))
            start, fence = i, m.group(1)
        elif fence and m and m.group(1).startswith(fence) and not line[m.end() :].strip():
            blocks.append(("\n".join(lines[start : i + 1]), True))
            start, fence = i + 1, ""
    if start < len(lines):
        blocks.append(("\n".join(lines[start:]), bool(fence)))
    return blocks


def _boilerplate_key(line: str) -> str | None:
    key = line.strip()
    if len(key) < _BOILERPLATE_MIN_CHARS or _STRUCTURAL.fullmatch(key):
        return None
    return key


def _drop_boilerplate(lines: list[tuple[str, bool]], min_repeats: int) -> list[tuple[str, bool]]:
    keys = [None if is_code else _boilerplate_key(line) for line, is_code in lines]
    counts = Counter(k for k in keys if k is not None)
    repeated = {k for k, n in counts.items() if n >= min_repeats}
    if not repeated:
        return lines
    seen: set[str] = set()
    kept = []
    for key, item in zip(keys, lines, strict=True):
        if key in repeated:
            if key in seen:
                continue
            seen.add(key)
        kept.append(item)
    return kept


def _collapse_blank_lines(lines: list[tuple[str, bool]]) -> list[str]:
    """At most one blank line in a row in prose; code keeps its blank lines."""
    out: list[str] = []
    for line, is_code in lines:
        if not is_code and not line and out and not out[-1]:
            continue
        out.append(line)
    return out
