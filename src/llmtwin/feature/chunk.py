"""Split a document into heading-delimited sections and token-bounded chunks.

Sections follow the document's structure: markdown ATX/setext headings, RST underlined (and
overlined) titles, top-level definitions of code files. Chunks are made inside a section only,
by recursive splitting on structure (fenced code blocks, paragraphs, lines, sentences, words,
characters) and greedy merging of adjacent pieces while they fit in `chunk_tokens`.

Everything is a character span into `Document.text`: `chunk.text == doc.text[chunk.start:chunk.end]`,
and every non-whitespace character of the document lies in at least one chunk.

Token counting is batched and done once per piece: the size of merged pieces is the sum of their
counts (exact for BERT-style tokenizers, which never make a token across whitespace). A final
batched count of every chunk's text checks the real size; a chunk found over the limit (possible
with tokenizers where counts are not additive) first loses its overlap, then is split in two.
So every chunk is <= `chunk_tokens` by the counter itself, with no slack.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from llmtwin.feature.hashing import short_id
from llmtwin.types import Chunk, Document, Section

# A batch of texts -> the number of embedder tokens of each (no special tokens).
TokenCounter = Callable[[list[str]], list[int]]

Span = tuple[int, int]


def hf_token_counter(tokenizer_json: Path) -> TokenCounter:
    """A TokenCounter from a Hugging Face `tokenizer.json` (truncation and padding switched off).

    The counter has `additive = True` when the tokenizer never makes a token across whitespace
    (a whitespace-splitting pre-tokenizer after a per-character normalizer, as BERT/MiniLM):
    then the count of pieces joined by whitespace is exactly the sum of their counts.
    """
    import json

    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    tok.no_truncation()
    tok.no_padding()

    def count(texts: list[str]) -> list[int]:
        if not texts:
            return []
        return [len(e) for e in tok.encode_batch(list(texts), add_special_tokens=False)]

    spec = json.loads(tok.to_str())
    count.additive = _splits_on_whitespace(spec.get("pre_tokenizer")) and _per_char(  # type: ignore[attr-defined]
        spec.get("normalizer")
    )
    return count


_WS_PRETOK = {"BertPreTokenizer", "Whitespace", "WhitespaceSplit"}
_PER_CHAR_NORM = {
    "BertNormalizer",
    "Lowercase",
    "NFC",
    "NFD",
    "NFKC",
    "NFKD",
    "StripAccents",
    "Strip",
}


def _splits_on_whitespace(pre: dict | None) -> bool:
    if not pre:
        return False
    if pre.get("type") == "Sequence":
        return any(_splits_on_whitespace(p) for p in pre.get("pretokenizers", []))
    return pre.get("type") in _WS_PRETOK


def _per_char(norm: dict | None) -> bool:
    if not norm:
        return True
    if norm.get("type") == "Sequence":
        return all(_per_char(n) for n in norm.get("normalizers", []))
    return norm.get("type") in _PER_CHAR_NORM


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------

_MD_TYPES = {"md", "markdown", "html", "htm"}
_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_FENCE_OPEN = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_RST_ADORN = re.compile(r"^([=\-`:'\"~^_*+#<>.])\1{2,}[ \t]*$")
_CODE_DEF = re.compile(
    r"(?:async\s+)?(?:def|class|function\*?|func|fn|interface|struct|enum|trait|impl|module|namespace"
    r"|sub|object|type)\s"
    r"|export\s+(?:default\s+|async\s+)*(?:function|class|const|let|var|interface|type|enum|abstract)\b"
    r"|(?:pub(?:\([^)]*\))?|public|private|protected|internal|static|abstract|final|sealed)\s"
)
# Decorators and comments right above a definition belong to its section.
_CODE_LEAD = ("@", "#", "//", "/*", " *", "*/")


def _lines(text: str) -> tuple[list[str], list[int]]:
    """Lines (without their newline, without a trailing CR) and their start offsets."""
    lines = text.split("\n")
    starts = [0] * len(lines)
    pos = 0
    for i, line in enumerate(lines):
        starts[i] = pos
        pos += len(line) + 1
    return [ln.removesuffix("\r") for ln in lines], starts


def _fence_close(line: str, fence: str) -> bool:
    s = line.lstrip(" ")
    if len(line) - len(s) > 3 or not s.startswith(fence[0] * len(fence)):
        return False
    return s.rstrip() == fence[0] * len(s.rstrip())


def _markdown_headings(lines: list[str], setext: bool) -> list[tuple[int, int, str]]:
    """(first line index, level, title) of ATX headings (and setext ones), outside code fences."""
    out: list[tuple[int, int, str]] = []
    fence = ""
    prev_break = True  # previous line blank, a heading, or the start
    i, n = 0, len(lines)
    while i < n:
        line = lines[i]
        if fence:
            if _fence_close(line, fence):
                fence = ""
            prev_break = False
            i += 1
            continue
        m = _FENCE_OPEN.match(line)
        if m:
            fence = m.group(1)
            prev_break = False
            i += 1
            continue
        m = _ATX.match(line)
        if m and m.group(2):
            out.append((i, len(m.group(1)), (m.group(2) or "").strip()))
            prev_break = True
            i += 1
            continue
        title = line.strip()
        if (
            setext
            and title
            and prev_break
            and i + 1 < n
            and len(line) - len(line.lstrip(" ")) <= 3
            and not _SETEXT.match(line)
        ):
            u = _SETEXT.match(lines[i + 1])
            if u and len(u.group(1)) >= len(title):
                out.append((i, 1 if u.group(1)[0] == "=" else 2, title))
                prev_break = True
                i += 2
                continue
        prev_break = not title
        i += 1
    return out


def _rst_headings(lines: list[str]) -> list[tuple[int, int, str]]:
    """RST section titles; levels by order of first appearance of each (char, overlined) style."""
    out: list[tuple[int, int, str]] = []
    styles: list[tuple[str, bool]] = []
    prev_break = True
    i, n = 0, len(lines)

    def level(style: tuple[str, bool]) -> int:
        if style not in styles:
            styles.append(style)
        return styles.index(style) + 1

    while i < n:
        line = lines[i]
        over = _RST_ADORN.match(line)
        if over and prev_break and i + 2 < n:
            title = lines[i + 1].strip()
            under = _RST_ADORN.match(lines[i + 2])
            if (
                title
                and not _RST_ADORN.match(lines[i + 1])
                and under
                and under.group(1) == over.group(1)
                and len(line.rstrip()) >= len(title)
            ):
                out.append((i, level((over.group(1), True)), title))
                prev_break = True
                i += 3
                continue
        title = line.strip()
        if title and prev_break and not over and i + 1 < n and not line[:1].isspace():
            under = _RST_ADORN.match(lines[i + 1])
            if under and len(lines[i + 1].rstrip()) >= len(line.rstrip()):
                out.append((i, level((under.group(1), False)), title))
                prev_break = True
                i += 2
                continue
        prev_break = not title
        i += 1
    return out


def _code_headings(lines: list[str]) -> list[tuple[int, int, str]]:
    """Top-level definitions; a section starts at the decorators/comments right above its def."""
    out: list[tuple[int, int, str]] = []
    last = -1
    for i, line in enumerate(lines):
        if line[:1].isspace() or not _CODE_DEF.match(line):
            continue
        first = i
        while first - 1 > last and lines[first - 1].startswith(_CODE_LEAD):
            first -= 1
        out.append((first, 1, line.strip()[:200]))
        last = i
    return out


def split_sections(doc: Document) -> list[Section]:
    """Heading-delimited sections covering `doc.text` contiguously (none for an empty text)."""
    text = doc.text
    if not text:
        return []
    lines, starts = _lines(text)
    ft = (doc.file_type or "").lower()
    if ft == "code":
        heads = _code_headings(lines)
    elif ft == "rst":
        heads = _rst_headings(lines)
    else:
        heads = _markdown_headings(lines, setext=ft in _MD_TYPES)

    bounds: list[tuple[int, list[str]]] = []  # (start offset, heading path)
    stack: list[tuple[int, str]] = []
    for line_i, lvl, title in heads:
        while stack and stack[-1][0] >= lvl:
            stack.pop()
        stack.append((lvl, title))
        bounds.append((starts[line_i], [t for _, t in stack]))
    if not bounds or bounds[0][0] > 0:
        if bounds and not text[: bounds[0][0]].strip():
            bounds[0] = (0, bounds[0][1])  # whitespace before the first heading joins it
        else:
            bounds.insert(0, (0, []))

    sections = []
    for k, (start, path) in enumerate(bounds):
        end = bounds[k + 1][0] if k + 1 < len(bounds) else len(text)
        sections.append(
            Section(
                section_id=short_id(doc.doc_id, "section", start, end),
                doc_id=doc.doc_id,
                heading_path=path,
                start=start,
                end=end,
                text=text[start:end],
            )
        )
    return sections


# --------------------------------------------------------------------------------------------
# Pieces: structural units as stripped spans
# --------------------------------------------------------------------------------------------

BLOCK, PARA, LINE, SENT, WORD, CHAR = range(6)  # levels, coarse to fine

# Chunks are also cut at this many characters per token of the limit: a tokenizer may count a
# very long "word" (base64, a URL) as one [UNK] token, and a 1 MB chunk helps no one.
MAX_CHARS_PER_TOKEN = 32

_BLANK_SEP = re.compile(r"\n[^\S\n]*\n")
_NONBLANK_LINE = re.compile(r"[^\n]+")
_WORD = re.compile(r"\S+")
_SENT_END = re.compile(r"[.!?\u2026]+[\"'\u201d\u2019)\]]*(?=\s)")
_OPENERS = "\"'\u201c\u2018(["
# Words that end with a period without ending a sentence.
# fmt: off
_ABBREV = {
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "fig", "figs", "no", "nos", "vol",
    "vols", "p", "pp", "ed", "eds", "al", "approx", "dept", "est", "inc", "ltd", "co", "corp",
    "cf", "ca", "resp", "sec", "ch", "eq", "eqs", "ref", "refs", "gen", "gov", "rev", "mt", "ft",
    "lt", "col", "capt", "sgt", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept",
    "oct", "nov", "dec", "misc", "min", "max", "op", "cit",
}
# fmt: on
_DOTTED = re.compile(r"(?:\w\.)+\w")  # e.g, i.e, u.s


def _strip(text: str, a: int, b: int) -> Span | None:
    while a < b and text[a].isspace():
        a += 1
    while b > a and text[b - 1].isspace():
        b -= 1
    return (a, b) if a < b else None


def _cut(text: str, s: int, e: int, cuts: list[int]) -> list[Span]:
    out = []
    prev = s
    for c in [*cuts, e]:
        sp = _strip(text, prev, c)
        if sp:
            out.append(sp)
        prev = c
    return out


def _blocks(text: str, s: int, e: int, fences: bool) -> list[Span]:
    """Paragraphs (blank-line separated) and fenced code blocks (whole) of text[s:e]."""
    out: list[Span] = []
    para: list[int] = []  # [start, end] of the open paragraph
    fence = ""
    fence_start = 0
    pos = s
    while pos < e:
        nl = text.find("\n", pos, e)
        end = e if nl < 0 else nl
        line = text[pos:end]
        if fence:
            if _fence_close(line.rstrip("\r"), fence):
                out.append((fence_start, end))
                fence = ""
        elif fences and (m := _FENCE_OPEN.match(line)):
            if para:
                out.append((para[0], para[1]))
                para = []
            fence, fence_start = m.group(1), pos
        elif not line.strip():
            if para:
                out.append((para[0], para[1]))
                para = []
        elif para:
            para[1] = end
        else:
            para = [pos, end]
        pos = end + 1
    if fence:
        out.append((fence_start, e))
    if para:
        out.append((para[0], para[1]))
    return [sp for a, b in out if (sp := _strip(text, a, b))]


def _sentences(text: str, s: int, e: int) -> list[Span]:
    cuts: list[int] = []
    piece_start = s
    for m in _SENT_END.finditer(text, s, e):
        j = m.end()
        while j < e and text[j].isspace():
            j += 1
        if j >= e:
            continue
        nxt = text[j]
        if not (nxt.isupper() or nxt.isdigit() or nxt in _OPENERS):
            continue
        p = m.start()
        if m.group().startswith(".") and not m.group().startswith(".."):
            k = p
            while k > s and not text[k - 1].isspace():
                k -= 1
            word = text[k:p].lstrip(_OPENERS).lower()
            if word in _ABBREV or (len(word) == 1 and word.isalpha()) or _DOTTED.fullmatch(word):
                continue
            while piece_start < p and text[piece_start].isspace():
                piece_start += 1
            if k <= piece_start and len(word) <= 3 and word.isalnum():
                continue  # an enumerator: "1. Install", "b. Run"
        cuts.append(m.end())
        piece_start = m.end()
    return _cut(text, s, e, cuts)


def _split_level(text: str, s: int, e: int, level: int) -> list[Span]:
    if level == PARA:
        return _cut(text, s, e, [m.end() for m in _BLANK_SEP.finditer(text, s, e)])
    if level == LINE:
        return [sp for m in _NONBLANK_LINE.finditer(text, s, e) if (sp := _strip(text, *m.span()))]
    if level == SENT:
        return _sentences(text, s, e)
    if level == WORD:
        return [m.span() for m in _WORD.finditer(text, s, e)]
    raise ValueError(level)


def _finer(text: str, s: int, e: int, level: int) -> tuple[list[Span], int]:
    """The next finer level that splits text[s:e] into at least two pieces (CHAR: none did)."""
    for lv in range(level + 1, CHAR):
        pieces = _split_level(text, s, e, lv)
        if len(pieces) > 1:
            return pieces, lv
    return [], CHAR


class _Counts:
    """Token counts of spans, computed in batches and cached."""

    def __init__(self, text: str, count_tokens: TokenCounter) -> None:
        self.text = text
        self.count_tokens = count_tokens
        self.cache: dict[Span, int] = {}

    def ensure(self, spans: list[Span]) -> None:
        missing = list(dict.fromkeys(sp for sp in spans if sp not in self.cache))
        if not missing:
            return
        counts = self.count_tokens([self.text[a:b] for a, b in missing])
        if len(counts) != len(missing):
            raise ValueError(
                f"token counter returned {len(counts)} counts for {len(missing)} texts"
            )
        self.cache.update(zip(missing, (int(c) for c in counts), strict=True))

    def __getitem__(self, span: Span) -> int:
        return self.cache[span]


# --------------------------------------------------------------------------------------------
# Chunks
# --------------------------------------------------------------------------------------------

Unit = tuple[int, int, int]  # start, end, level


def _fit_units(
    text: str, sections_units: list[list[Unit]], counts: _Counts, limit: int, max_chars: int
) -> list[list[Unit]]:
    """Split every unit over `limit` tokens (or `max_chars` characters) at the next finer
    level until all fit; counting is batched per round."""
    while True:
        counts.ensure([(a, b) for units in sections_units for a, b, _ in units])
        changed = False
        result = []
        for units in sections_units:
            new: list[Unit] = []
            for a, b, lv in units:
                n = counts[(a, b)]
                if (n <= limit and b - a <= max_chars) or b - a <= 1:
                    new.append((a, b, lv))
                    continue
                changed = True
                pieces, plv = _finer(text, a, b, lv) if lv < CHAR else ([], CHAR)
                if plv == CHAR:  # hard cut, sized from the measured density
                    size = max(1, min(max_chars, int((b - a) * limit / max(n, 1) * 0.9)))
                    pieces = [
                        sp for c in range(a, b, size) if (sp := _strip(text, c, min(c + size, b)))
                    ]
                new.extend((pa, pb, plv) for pa, pb in pieces)
            result.append(new)
        sections_units = result
        if not changed:
            return sections_units


def _pack(
    units: list[Unit], counts: _Counts, limit: int, overlap: int, max_chars: int
) -> list[list[Unit]]:
    """Greedy cores: the first may fill `limit`, later ones leave room for their overlap."""
    cores: list[list[Unit]] = []
    cur: list[Unit] = []
    total = 0
    budget = limit
    for u in units:
        c = counts[(u[0], u[1])]
        if cur and (total + c > budget or u[1] - cur[0][0] > max_chars):
            cores.append(cur)
            cur, total, budget = [], 0, limit - overlap
        cur.append(u)
        total += c
    if cur:
        cores.append(cur)
    return cores


def _take_suffix(
    pieces: list[Span], counts: _Counts, budget: int, lo: int, min_start: int
) -> tuple[int | None, bool]:
    """Start of the longest run of whole trailing pieces[lo:] within budget (lo >= 1: a
    prefix never takes all of the previous core), starting at or after `min_start` (the
    character cap). Also says whether the walk hit a limit."""
    total = 0
    start = None
    for a, b in reversed(pieces[lo:]):
        total += counts[(a, b)]
        if total > budget or a < min_start:
            return start, True
        start = a
    return start, False


def _prefixes(
    text: str,
    cores: list[list[Unit]],
    first_of_section: list[bool],
    counts: _Counts,
    limit: int,
    overlap: int,
    max_chars: int,
) -> list[int | None]:
    """Overlap start for each core: up to `overlap` tokens of the previous core's end, cut at
    the coarsest boundary available (its units, then lines/sentences, then words)."""
    result: list[int | None] = [None] * len(cores)
    # (core index, pieces of the tail to cut, their level, budget, chars of the tail to count)
    pending: list[tuple[int, list[Span], int, int, int]] = []
    min_start = [core[-1][1] - max_chars for core in cores]
    for k, core in enumerate(cores):
        if first_of_section[k] or overlap <= 0:
            continue
        budget = min(overlap, limit - sum(counts[(a, b)] for a, b, _ in core))
        if budget <= 0:
            continue
        prev = cores[k - 1]
        if prev[-1][2] == CHAR:
            continue  # no overlap out of a blob cut inside a word
        lo = 1 + max((i for i, u in enumerate(prev) if u[2] == CHAR), default=0)
        start, _ = _take_suffix([(a, b) for a, b, _ in prev], counts, budget, lo, min_start[k])
        if start is not None:
            result[k] = start
        elif counts[prev[-1][:2]] > budget:  # the last unit alone is too long: cut inside it
            a, b, lv = prev[-1]
            pieces, plv = _finer(text, a, b, lv) if lv < WORD else ([], CHAR)
            if plv < CHAR:
                pending.append((k, pieces, plv, budget, 6 * budget + 32))
    while pending:
        # Count only a window of trailing pieces (a long unit may have thousands of words).
        windows = []
        for k, pieces, plv, budget, chars in pending:
            lo = len(pieces) - 1
            while lo > 1 and pieces[-1][1] - pieces[lo - 1][0] <= chars:
                lo -= 1
            windows.append(lo)
        counts.ensure([sp for (_, pieces, *_), lo in zip(pending, windows) for sp in pieces[lo:]])
        again = []
        for (k, pieces, plv, budget, chars), lo in zip(pending, windows, strict=True):
            start, hit = _take_suffix(pieces, counts, budget, lo, min_start[k])
            if not hit and lo > 1:  # the window was all within budget: widen it
                again.append((k, pieces, plv, budget, chars * 4))
            elif start is not None:
                result[k] = start
            elif plv < WORD:  # the last piece alone is too long: cut inside it
                a, b = pieces[-1]
                sub, slv = _finer(text, a, b, plv)
                if slv < CHAR:
                    again.append((k, sub, slv, budget, chars))
        pending = again
    return result


# A long document is chunked a segment at a time: sections (or pieces of one long section, cut at
# the coarsest boundary near each segment's end) grouped up to this many characters. Token counts,
# spans and pieces then live for one segment only, so memory stays bounded whatever the file's
# shape (a 50 MB single line took 8 GB and minutes at once). Chunks never cross a cut inside a
# section, and take no overlap across it: the only difference from one pass, for sections longer
# than a segment.
SEGMENT_CHARS = 1 << 19

_CUTS = ("\n\n", "\n", ". ", " ")


def _segments(text: str, sections: list[Section], size: int):
    """Batches of (section index, start, end) ranges, each batch at most `size` characters."""
    batch: list[tuple[int, int, int]] = []
    total = 0
    for si, sec in enumerate(sections):
        a = sec.start
        while a < sec.end:
            b = sec.end
            if b - a > size:
                lo, hi = a + size // 2, a + size
                b = next((c + len(sep) for sep in _CUTS if (c := text.rfind(sep, lo, hi)) >= 0), hi)
            if batch and total + (b - a) > size:
                yield batch
                batch, total = [], 0
            batch.append((si, a, b))
            total += b - a
            a = b
    if batch:
        yield batch


def _chunk_spans(
    text: str,
    ranges: list[tuple[int, int, int]],
    count_tokens: TokenCounter,
    limit: int,
    overlap: int,
    max_chars: int,
    fences: bool,
) -> list[tuple[int, int, int]]:
    """(start, end, section index) of the chunks of these ranges of `text`."""
    counts = _Counts(text, count_tokens)
    units = [[(a, b, BLOCK) for a, b in _blocks(text, s, e, fences)] for _, s, e in ranges]
    units = _fit_units(text, units, counts, limit, max_chars)

    cores: list[list[Unit]] = []
    core_section: list[int] = []
    first: list[bool] = []
    for (si, _, _), sec_units in zip(ranges, units, strict=True):
        packed = _pack(sec_units, counts, limit, overlap, max_chars)
        cores.extend(packed)
        core_section.extend([si] * len(packed))
        first.extend(i == 0 for i in range(len(packed)))
    prefix = _prefixes(text, cores, first, counts, limit, overlap, max_chars)

    # Check chunks with the real counter and fix the few found over the limit: all of them for
    # a counter not known to be additive, else only those holding a piece cut inside a word.
    additive = bool(getattr(count_tokens, "additive", False))
    done: list[tuple[int, int, int]] = []
    work = []
    for core, p, si in zip(cores, prefix, core_section, strict=True):
        if additive and all(lv != CHAR for _, _, lv in core):
            done.append((p if p is not None else core[0][0], core[-1][1], si))
        else:
            work.append((core, p, si))
    while work:
        spans = [(p if p is not None else core[0][0], core[-1][1]) for core, p, _ in work]
        counts.ensure(spans)
        again = []
        for (core, p, si), sp in zip(work, spans, strict=True):
            if counts[sp] <= limit or (p is None and len(core) == 1):
                done.append((sp[0], sp[1], si))
            elif p is not None:
                again.append((core, None, si))
            else:
                half = counts[(core[0][0], core[0][1])]
                total = sum(counts[(a, b)] for a, b, _ in core)
                cut = 1
                while (
                    cut < len(core) - 1 and half + counts[(core[cut][0], core[cut][1])] <= total / 2
                ):
                    half += counts[(core[cut][0], core[cut][1])]
                    cut += 1
                again.extend([(core[:cut], None, si), (core[cut:], None, si)])
        work = again
    return done


def chunk_document(
    doc: Document, count_tokens: TokenCounter, chunk_tokens: int, overlap: int
) -> tuple[list[Section], list[Chunk]]:
    """Sections of `doc` and its chunks of at most `chunk_tokens` tokens (by `count_tokens`).

    Each chunk after the first of a section starts up to `overlap` tokens earlier (overlap is
    clamped to chunk_tokens // 2). Chunks never cross sections; ids are deterministic.
    """
    if chunk_tokens < 1:
        raise ValueError("chunk_tokens must be >= 1")
    limit = chunk_tokens
    overlap = max(0, min(overlap, limit // 2))
    max_chars = MAX_CHARS_PER_TOKEN * limit
    text = doc.text
    sections = split_sections(doc)
    fences = (doc.file_type or "").lower() not in ("code", "rst")
    done: list[tuple[int, int, int]] = []  # start, end, section index
    for batch in _segments(text, sections, max(SEGMENT_CHARS, 8 * max_chars)):
        done.extend(_chunk_spans(text, batch, count_tokens, limit, overlap, max_chars, fences))
    done.sort()

    chunks = []
    for i, (a, b, si) in enumerate(done):
        sec = sections[si]
        body = text[a:b]
        chunks.append(
            Chunk(
                chunk_id=short_id(doc.doc_id, a, b, body),
                doc_id=doc.doc_id,
                source=doc.source,
                text=body,
                start=a,
                end=b,
                heading_path=list(sec.heading_path),
                parent_id=sec.section_id,
                index=i,
                file_type=doc.file_type,
                metadata=dict(doc.metadata),
            )
        )
    return sections, chunks
