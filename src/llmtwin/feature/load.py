"""Read files into Documents: find them (discover), then parse one file's bytes (load_bytes).

The text returned is raw (cleaning is `feature.clean`). A file that cannot be used gives a
LoadFailure with its reason; a bad JSONL line fails alone and the rest of the file still loads.
pypdf and BeautifulSoup are imported only by the functions that need them.
"""

from __future__ import annotations

import codecs
import datetime as dt
import fnmatch
import io
import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmtwin.errors import TwinError
from llmtwin.feature.hashing import bytes_hash
from llmtwin.types import Document, LoadFailure

LANGUAGES: dict[str, str] = {
    ".py": "python", ".js": "javascript", ".jsx": "javascript", ".ts": "typescript",
    ".tsx": "typescript", ".java": "java", ".go": "go", ".rs": "rust", ".c": "c", ".h": "c",
    ".cpp": "cpp", ".hpp": "cpp", ".cc": "cpp", ".cs": "csharp", ".rb": "ruby", ".php": "php",
    ".sh": "shell", ".swift": "swift", ".kt": "kotlin", ".scala": "scala", ".sql": "sql",
    ".r": "r", ".m": "objective-c", ".lua": "lua", ".pl": "perl", ".yaml": "yaml",
    ".yml": "yaml", ".toml": "toml", ".css": "css",
}  # fmt: skip

FILE_TYPES: dict[str, str] = {
    ".md": "md", ".markdown": "md", ".txt": "txt", ".rst": "rst", ".html": "html",
    ".htm": "html", ".pdf": "pdf", ".json": "json", ".jsonl": "jsonl",
    **{ext: "code" for ext in LANGUAGES},
}  # fmt: skip

SNIFF_BYTES = 8192


# ---------------------------------------------------------------- discovery


def sniff_text(data: bytes) -> bool:
    """True if these (leading) bytes look like UTF-8 text: no NUL, valid UTF-8 (a multi-byte
    character cut at the end of `data` is allowed)."""
    head = data[:SNIFF_BYTES]
    if b"\0" in head:
        return False
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return True


def file_type(path: Path) -> str | None:
    """The file_type for a path from its extension; None if the extension is unknown.
    A file without an extension is "txt" (load_bytes then rejects it if it is binary)."""
    if not path.suffix:
        return "txt"
    return FILE_TYPES.get(path.suffix.lower())


@dataclass
class Found:
    """What `discover` found: files to load, files of a type llmtwin does not read, entries it
    would not read (links out of the folders, special files) with the reason, and folders it
    could not list (their files are not gone: ingest keeps what it stored from them)."""

    files: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    ignored: list[tuple[Path, str]] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)


def discover(paths: list[Path], exclude: list[str], follow_symlinks: bool = False) -> Found:
    """Expand files and directories into the regular files to read.

    Directories are walked recursively; a file or directory whose name matches one of the
    `exclude` globs is left out (an excluded directory is not descended). A path given
    explicitly is always a candidate if it is a regular file (a link given explicitly is
    followed). Files without an extension are candidates when their first bytes are UTF-8 text.

    Inside the walk, a symbolic link is read only where it resolves inside the folders given
    (then its target is read once, under the target's own name); a link out of them, a broken
    link, a link loop and anything that is not a regular file or folder (FIFO, socket, device)
    is ignored with its reason. `follow_symlinks` follows links out of the folders too (loops
    are still detected). Files are returned resolved, sorted, each once.
    """
    found = Found()
    roots: list[Path] = []
    for path in paths:
        if not os.path.lexists(path):
            raise TwinError(f"{path}: no such file or directory")
        roots.append(Path(os.path.realpath(path)))
    candidates: set[Path] = set()
    skipped: set[Path] = set()

    def inside(real: Path) -> bool:
        return any(real == r or real.is_relative_to(r) for r in roots if r.is_dir())

    def consider(path: Path, real: Path, explicit: bool) -> None:
        try:
            mode = os.stat(real).st_mode
        except OSError as e:
            found.ignored.append((path, f"cannot stat: {e.strerror or e}"))
            return
        if not stat.S_ISREG(mode):
            found.ignored.append((path, f"not a regular file ({_kind(mode)})"))
        elif explicit or _is_candidate(real):
            candidates.add(real)
        else:
            skipped.add(real)

    visited: set[Path] = set()

    def walk(folder: Path, real_folder: Path) -> None:
        if real_folder in visited:
            found.ignored.append((folder, "symlink loop (folder already walked)"))
            return
        visited.add(real_folder)
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            found.unreadable.append((folder, f"cannot read folder: {e.strerror or e}"))
            return
        for entry in entries:
            if any(fnmatch.fnmatchcase(entry.name, pattern) for pattern in exclude):
                continue
            path = Path(entry.path)
            try:
                link = entry.is_symlink()
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError as e:
                found.ignored.append((path, f"cannot stat: {e.strerror or e}"))
                continue
            if link:
                real = Path(os.path.realpath(path))
                if not os.path.exists(real):
                    found.ignored.append((path, "broken symlink"))
                    continue
                if not (follow_symlinks or inside(real)):
                    found.ignored.append(
                        (path, "symlink to outside the ingested folders (not followed; --follow-symlinks reads it)")
                    )
                    continue
                if os.path.isdir(real):
                    if inside(real) and not follow_symlinks:
                        continue  # a folder already walked under its own name
                    walk(path, real)
                else:
                    consider(path, real, explicit=False)
            elif is_dir:
                walk(path, Path(os.path.realpath(path)))
            else:
                consider(path, Path(os.path.realpath(path)), explicit=False)

    for path, real in zip(paths, roots):
        if os.path.isdir(real):
            walk(Path(path), real)
        else:
            consider(Path(path), real, explicit=True)
    found.files = sorted(candidates)
    found.skipped = sorted(skipped - candidates)
    return found


def _kind(mode: int) -> str:
    kinds = [(stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
             (stat.S_ISBLK, "block device"), (stat.S_ISDIR, "folder")]  # fmt: skip
    return next((name for test, name in kinds if test(mode)), "special file")


def _is_candidate(path: Path) -> bool:
    if path.suffix:
        return path.suffix.lower() in FILE_TYPES
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            return sniff_text(os.read(fd, SNIFF_BYTES))
        finally:
            os.close(fd)
    except OSError:
        return True  # unreadable: let the loader report why


def read_file(path: Path, max_bytes: int) -> tuple[bytes | None, str | None]:
    """The bytes of a regular file, or why not: never more than `max_bytes` read (a size is
    checked on what is read, not on what `stat` says: /proc files say 0), never blocking on a
    FIFO swapped in after `discover`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        return None, f"unreadable: {e.strerror or e}"
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            return None, f"not a regular file ({_kind(mode)})"
        parts: list[bytes] = []
        size = 0
        while size <= max_bytes:
            part = os.read(fd, min(1 << 20, max_bytes + 1 - size))
            if not part:
                break
            parts.append(part)
            size += len(part)
        if size > max_bytes:
            return None, (
                f"file too large: over the limit of {max_bytes / 1e6:.1f} MB (ingest.max_file_mb)"
            )
        return b"".join(parts), None
    except OSError as e:
        return None, f"unreadable: {e.strerror or e}"
    finally:
        os.close(fd)


# ---------------------------------------------------------------- loading


def load_bytes(data: bytes, path: Path, source: str) -> tuple[list[Document], list[LoadFailure]]:
    """Parse the raw bytes of one file into Documents (raw text) and LoadFailures.

    `path` gives the type (by extension); `source` is stored as Document.source and is the
    doc_id of every non-JSONL/JSON-record document. A document whose text, id or metadata
    cannot be stored as UTF-8 (a lone surrogate from a JSON or YAML escape) is a failure.
    """
    docs, failures = _load_bytes(data, path, source)
    good = []
    for doc in docs:
        problem = _unstorable(doc)
        if problem:
            failures.append(LoadFailure(source, problem, doc.line))
        else:
            good.append(doc)
    return good, failures


def _unstorable(doc: Document) -> str | None:
    for name, value in (("text", doc.text), ("id", doc.doc_id)):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            return f"field {name!r} holds a lone surrogate ({value[e.start]!r}) at character {e.start}"
    try:
        json.dumps(doc.metadata, ensure_ascii=False, default=str).encode("utf-8")
    except UnicodeEncodeError:
        return "field 'metadata' holds a lone surrogate"
    except (ValueError, TypeError, RecursionError) as e:
        return f"field 'metadata' cannot be stored: {type(e).__name__}"
    return None


def _load_bytes(data: bytes, path: Path, source: str) -> tuple[list[Document], list[LoadFailure]]:
    ftype = file_type(path) or "txt"
    file_hash = bytes_hash(data)

    def fail(error: str, line: int | None = None) -> tuple[list[Document], list[LoadFailure]]:
        return [], [LoadFailure(path=source, error=error, line=line)]

    if not data.strip():
        return fail("empty file")
    if ftype == "pdf":
        text, metadata, error = _read_pdf(data)
        if error:
            return fail(error)
        return [Document(source, source, text, "pdf", metadata, file_hash)], []
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return fail("not UTF-8: UTF-16 text (convert the file to UTF-8)")
    if b"\0" in data[:SNIFF_BYTES]:
        return fail("binary file")
    if ftype == "jsonl":
        docs, failures = _read_jsonl(data, source)
        for doc in docs:
            doc.file_hash = file_hash
        return docs, failures

    text, error = _decode(data)
    if error:
        return fail(error)
    if not text.strip():
        return fail("empty file")

    if ftype == "json":
        docs, failures = _read_json(text, source)
        for doc in docs:
            doc.file_hash = file_hash
        return docs, failures

    metadata: dict[str, Any] = {}
    if ftype == "code":
        metadata["language"] = LANGUAGES[path.suffix.lower()]
    elif ftype == "md":
        text, metadata = _split_front_matter(text)
    elif ftype == "html":
        try:
            text, metadata = _html_to_text(text)
        except Exception as e:  # a broken page must not stop the batch
            return fail(f"cannot parse HTML: {e or type(e).__name__}")
    if not text.strip():
        return fail("no text in HTML" if ftype == "html" else "empty file")
    return [Document(source, source, text, ftype, metadata, file_hash)], []


def _decode(data: bytes) -> tuple[str, str | None]:
    """UTF-8 (a BOM is accepted and stripped) or an error naming the first bad byte."""
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError as e:
        return "", f"not UTF-8: invalid byte 0x{data[e.start]:02x} at offset {e.start}"


# ---------------------------------------------------------------- markdown front matter

_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)^(?:---|\.\.\.)[ \t]*(?:\r?\n|\Z)", re.S | re.M)


def _split_front_matter(text: str) -> tuple[str, dict[str, Any]]:
    """Take a leading YAML block (--- ... ---) off a markdown text; keep its scalar and list
    values as metadata. Text that does not parse as a YAML mapping is left untouched."""
    m = _FRONT_MATTER.match(text)
    if not m:
        return text, {}
    import yaml

    try:
        data = yaml.safe_load(m.group(1))
    except (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError):
        return text, {}  # e.g. `date: 2024-02-30`, `n: !!int abc`: kept as text, not metadata
    if not isinstance(data, dict):
        return text, {}
    metadata: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, list):
            items = [_scalar(v) for v in value]
            metadata[str(key)] = [v for v in items if v is not None]
        elif (v := _scalar(value)) is not None:
            metadata[str(key)] = v
    return text[m.end() :], metadata


def _scalar(value: Any) -> str | int | float | bool | None:
    if isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, dt.date):  # YAML dates and datetimes
        return value.isoformat()
    return None


# ---------------------------------------------------------------- HTML

_DROP = ["script", "style", "noscript", "nav", "aside", "form", "template", "svg", "head"]
_HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
_BLOCKS = {
    "address", "article", "blockquote", "body", "caption", "dd", "details", "dialog", "div",
    "dl", "dt", "fieldset", "figcaption", "figure", "footer", "header", "hr", "html", "main",
    "p", "section", "summary", "table", "tbody", "tfoot", "thead",
}  # fmt: skip


def _html_to_text(html: str) -> tuple[str, dict[str, Any]]:
    """The main text of a page as markdown-ish lines: headings as '# ...', one paragraph or list
    item per line with blank lines between, <pre> as fenced code. Page chrome is dropped
    (header/footer only outside <article>/<main>, where they belong to the content)."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "lxml")
    metadata: dict[str, Any] = {}
    if soup.title and (title := " ".join(soup.title.get_text().split())):
        metadata["title"] = title
    for tag in soup.find_all(_DROP):
        tag.extract()
    for tag in soup.find_all(["header", "footer"]):
        if tag.find_parent(["article", "main"]) is None:
            tag.extract()

    main = soup.find("main") or soup.find(attrs={"role": "main"})
    articles = [a for a in soup.find_all("article") if a.find_parent("article") is None]
    roots = [main] if main else articles or [soup.body or soup]
    writer = _HtmlWriter()
    for root in roots:
        writer.block(root)
    return "\n\n".join(writer.blocks), metadata


def _collapse(text: str) -> str:
    return " ".join(text.split())


class _HtmlWriter:
    """Walks a tree, gathering inline text and emitting one string per block."""

    def __init__(self) -> None:
        self.blocks: list[str] = []
        self.inline: list[str] = []
        self.prefix = ""  # list marker for the next emitted line
        self.lists: list[list[Any]] = []  # stack of [tag name, items seen]

    def flush(self) -> None:
        text = _collapse("".join(self.inline))
        if text:
            self.blocks.append(self.prefix + text)
            self.prefix = ""
        self.inline.clear()

    def block(self, node) -> None:
        self.flush()
        self.walk(node)
        self.flush()

    def walk(self, node) -> None:
        from bs4.element import NavigableString, PreformattedString

        for child in node.children:
            if isinstance(child, NavigableString):
                if not isinstance(child, PreformattedString):  # comments, doctype, CDATA
                    self.inline.append(str(child))
                continue
            name = child.name
            if name in _HEADINGS:
                self.flush()
                if text := _collapse(child.get_text()):
                    self.blocks.append("#" * _HEADINGS[name] + " " + text)
            elif name == "pre":
                self.flush()
                code = child.get_text().strip("\n")
                if code.strip():
                    self.blocks.append(f"```\n{code}\n```")
            elif name == "code":
                if text := _collapse(child.get_text()):
                    self.inline.append(f"`{text}`")
            elif name in ("ul", "ol"):
                self.lists.append([name, 0])
                self.block(child)
                self.lists.pop()
            elif name == "li":
                self.flush()
                self.prefix = self._marker()
                self.walk(child)
                self.flush()
                self.prefix = ""
            elif name == "tr":
                self.flush()
                cells = [_collapse(c.get_text()) for c in child.find_all(["td", "th"], recursive=False)]
                if any(cells):
                    self.blocks.append(" | ".join(cells))
            elif name == "br":
                self.flush()
            elif name in _BLOCKS:
                self.block(child)
            else:
                self.walk(child)

    def _marker(self) -> str:
        if not self.lists:
            return "- "
        self.lists[-1][1] += 1
        kind, n = self.lists[-1]
        indent = "  " * (len(self.lists) - 1)
        return f"{indent}{n}. " if kind == "ol" else f"{indent}- "


# ---------------------------------------------------------------- PDF


def _read_pdf(data: bytes) -> tuple[str, dict[str, Any], str | None]:
    """The text layer of a PDF, pages joined by a blank line; or an error."""
    import logging
    import warnings

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # broken files log many warnings
    from pypdf import PdfReader

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            reader = PdfReader(io.BytesIO(data))
            if reader.is_encrypted:
                try:
                    if not reader.decrypt(""):
                        return "", {}, "encrypted PDF"
                except Exception as e:  # e.g. AES without the cryptography package
                    return "", {}, f"encrypted PDF: {e}"
            pages = [page.extract_text() or "" for page in reader.pages]
            title = reader.metadata.title if reader.metadata else None
        except Exception as e:  # pypdf raises many kinds on broken files
            return "", {}, f"corrupt PDF: {e or type(e).__name__}"
    if not any(p.strip() for p in pages):
        return "", {}, "PDF has no text layer (scanned?)"
    metadata: dict[str, Any] = {"pages": len(pages)}
    if isinstance(title, str) and title.strip():
        metadata["title"] = title.strip()
    return "\n\n".join(p.rstrip() for p in pages), metadata, None


# ---------------------------------------------------------------- JSON and JSONL records


def _record(obj: Any, source: str, default_id: str) -> Document | str:
    """A Document from one record {text, id?, metadata?}, or the reason it is not one."""
    if not isinstance(obj, dict):
        return f"expected a JSON object, got {_json_kind(obj)}"
    if "text" not in obj:
        return "missing field 'text'"
    text = obj["text"]
    if not isinstance(text, str):
        return f"field 'text' must be a string, got {_json_kind(text)}"
    if not text.strip():
        return "field 'text' is empty"
    doc_id = obj.get("id", default_id)
    if isinstance(doc_id, bool) or not isinstance(doc_id, str | int):
        return f"field 'id' must be a string or an integer, got {_json_kind(doc_id)}"
    doc_id = str(doc_id)
    if not doc_id.strip():
        return "field 'id' is empty"
    metadata = obj.get("metadata", {})
    if not isinstance(metadata, dict):
        return f"field 'metadata' must be an object, got {_json_kind(metadata)}"
    if _depth(metadata) > MAX_METADATA_DEPTH:
        return f"field 'metadata' is nested deeper than {MAX_METADATA_DEPTH} levels"
    return Document(doc_id=doc_id, source=source, text=text, file_type="", metadata=metadata)


MAX_METADATA_DEPTH = 32


def _depth(value: Any, limit: int = MAX_METADATA_DEPTH + 1) -> int:
    """How deeply `value` nests (objects and lists), counted up to `limit`, without recursion."""
    depth, level = 0, [value]
    while level and depth < limit:
        level = [v for x in level for v in (x.values() if isinstance(x, dict) else x if isinstance(x, list) else ())]
        level = [v for v in level if isinstance(v, (dict, list))]
        depth += 1
    return depth


def _json_kind(value: Any) -> str:
    kinds = [(bool, "a boolean"), (dict, "an object"), (list, "a list"), (str, "a string"),
             (int, "a number"), (float, "a number"), (type(None), "null")]  # fmt: skip
    return next((name for t, name in kinds if isinstance(value, t)), type(value).__name__)


def _read_jsonl(data: bytes, source: str) -> tuple[list[Document], list[LoadFailure]]:
    docs: list[Document] = []
    failures: list[LoadFailure] = []
    first_line: dict[str, int] = {}
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    for n, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        line, error = _decode(raw)
        if not error:
            try:
                result = _record(json.loads(line), source, f"{source}:{n}")
            except json.JSONDecodeError as e:
                result = f"invalid JSON: {e.msg} at column {e.colno}"
            except RecursionError:
                result = "invalid JSON: nested too deeply"
            if isinstance(result, Document) and result.doc_id in first_line:
                result = f"duplicate id {result.doc_id!r} (first on line {first_line[result.doc_id]})"
            if isinstance(result, Document):
                result.file_type, result.line = "jsonl", n
                first_line[result.doc_id] = n
                docs.append(result)
                continue
            error = result
        failures.append(LoadFailure(path=source, error=error, line=n))
    return docs, failures


def _read_json(text: str, source: str) -> tuple[list[Document], list[LoadFailure]]:
    """One record, or a list of records (errors name the 1-based item)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        return [], [LoadFailure(source, f"invalid JSON: {e.msg} at line {e.lineno} column {e.colno}")]
    except RecursionError:
        return [], [LoadFailure(source, "invalid JSON: nested too deeply")]
    if isinstance(data, dict):
        result = _record(data, source, source)
        if isinstance(result, str):
            return [], [LoadFailure(source, result)]
        result.file_type = "json"
        return [result], []
    if not isinstance(data, list):
        return [], [
            LoadFailure(source, f"expected a JSON object or a list of objects, got {_json_kind(data)}")
        ]
    if not data:
        return [], [LoadFailure(source, "empty list: no records")]
    docs: list[Document] = []
    failures: list[LoadFailure] = []
    first_item: dict[str, int] = {}
    for i, obj in enumerate(data, start=1):
        result = _record(obj, source, f"{source}:{i}")
        if isinstance(result, Document) and result.doc_id in first_item:
            result = f"duplicate id {result.doc_id!r} (first at item {first_item[result.doc_id]})"
        if isinstance(result, str):
            failures.append(LoadFailure(source, f"item {i}: {result}"))
            continue
        result.file_type = "json"
        first_item[result.doc_id] = i
        docs.append(result)
    return docs, failures
