"""feature.load: real files on disk, every failure reason, discover() walking a tree."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from llmtwin.errors import TwinError
from llmtwin.feature.hashing import bytes_hash
from llmtwin.feature.load import FILE_TYPES, discover, load_bytes, sniff_text
from llmtwin.types import LoadFailure

EXCLUDE = [".*", "node_modules", "__pycache__", ".venv", "venv"]


def make_pdf(pages: list[str]) -> bytes:
    """A minimal valid PDF with one Helvetica text object per page (one Tj per line)."""
    n = len(pages)
    font = 3 + 2 * n
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(n))
    objs = [b"<< /Type /Catalog /Pages 2 0 R >>", f"<< /Type /Pages /Kids [{kids}] /Count {n} >>".encode()]
    for i, text in enumerate(pages):
        ops = ["BT", "/F1 12 Tf", "14 TL", "72 720 Td"]
        for line in text.split("\n"):
            ops.append("(" + line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ") Tj T*")
        stream = "\n".join([*ops, "ET"]).encode("latin-1")
        objs.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            f"/Resources << /Font << /F1 {font} 0 R >> >> /Contents {4 + 2 * i} 0 R >>".encode()
        )
        objs.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
    objs.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for k, body in enumerate(objs, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (k, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    out += b"".join(b"%010d 00000 n \n" % off for off in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
    return bytes(out)


def load_file(path: Path, source: str | None = None):
    return load_bytes(path.read_bytes(), path, source or path.name)


def errors(failures) -> list[tuple[int | None, str]]:
    return [(f.line, f.error) for f in failures]


# ---------------------------------------------------------------- plain text, code, markdown


def test_text_file_is_raw_with_hash(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_bytes(b"Hello   world\r\n\r\nSecond  para\n")
    docs, failures = load_file(p, "sub/notes.txt")
    assert failures == []
    [doc] = docs
    assert (doc.doc_id, doc.source, doc.file_type, doc.line) == (
        "sub/notes.txt",
        "sub/notes.txt",
        "txt",
        None,
    )
    assert doc.text == "Hello   world\r\n\r\nSecond  para\n"  # raw: cleaning is not the loader's job
    assert doc.file_hash == bytes_hash(p.read_bytes())
    assert doc.metadata == {}


def test_utf8_bom_is_stripped(tmp_path):
    p = tmp_path / "bom.md"
    p.write_bytes(b"\xef\xbb\xbf# Title\n")
    [doc], _ = load_file(p)
    assert doc.text == "# Title\n"


def test_code_keeps_indentation_and_language(tmp_path):
    src = "def f(x):\n    if x:\n\treturn  x\n\n\n    return None\n"
    p = tmp_path / "m.py"
    p.write_text(src)
    [doc], failures = load_file(p)
    assert failures == []
    assert doc.text == src
    assert (doc.file_type, doc.metadata) == ("code", {"language": "python"})
    [ts], _ = load_bytes(b"let x = 1;", Path("a.TSX"), "a.TSX")
    assert (ts.file_type, ts.metadata) == ("code", {"language": "typescript"})


def test_markdown_front_matter_becomes_metadata(tmp_path):
    p = tmp_path / "post.md"
    p.write_text(
        "---\ntitle: Hello World\ntags: [a, b]\ndate: 2024-05-01\ndraft: false\n"
        "nested: {x: 1}\nnothing:\n---\n# Heading\n\nBody text.\n"
    )
    [doc], failures = load_file(p)
    assert failures == []
    assert doc.text == "# Heading\n\nBody text.\n"
    assert doc.metadata == {"title": "Hello World", "tags": ["a", "b"], "date": "2024-05-01", "draft": False}


def test_markdown_without_front_matter_is_untouched(tmp_path):
    p = tmp_path / "hr.md"
    p.write_text("---\nJust a rule above, then prose.\n---\nText\n")
    [doc], _ = load_file(p)
    assert doc.text == p.read_text()
    assert doc.metadata == {}


def test_file_without_extension_is_text(tmp_path):
    p = tmp_path / "README"
    p.write_text("Read me.\n")
    [doc], _ = load_file(p)
    assert (doc.file_type, doc.text) == ("txt", "Read me.\n")


# ---------------------------------------------------------------- failures of whole files


def test_binary_file_with_txt_extension_fails(tmp_path):
    p = tmp_path / "image.txt"
    p.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    assert load_file(p) == ([], [LoadFailure("image.txt", "binary file")])


def test_empty_and_whitespace_files_fail(tmp_path):
    for name, data in [("empty.md", b""), ("blank.txt", b" \n\t\n"), ("bom.txt", b"\xef\xbb\xbf\n  ")]:
        p = tmp_path / name
        p.write_bytes(data)
        docs, failures = load_file(p)
        assert docs == [] and errors(failures) == [(None, "empty file")], name


def test_latin1_file_names_the_bad_byte(tmp_path):
    p = tmp_path / "old.txt"
    p.write_bytes("Caf\u00e9 cr\u00e8me".encode("latin-1"))
    docs, failures = load_file(p)
    assert docs == []
    assert errors(failures) == [(None, "not UTF-8: invalid byte 0xe9 at offset 3")]


def test_utf16_is_reported_as_not_utf8(tmp_path):
    p = tmp_path / "u16.txt"
    p.write_bytes("hello".encode("utf-16"))
    _, failures = load_file(p)
    assert failures[0].error.startswith("not UTF-8: UTF-16")


# ---------------------------------------------------------------- PDF


def test_pdf_text_layer_pages_joined(tmp_path):
    p = tmp_path / "paper.pdf"
    p.write_bytes(make_pdf(["Hello PDF world\nSecond line", "Page two text"]))
    [doc], failures = load_file(p, "docs/paper.pdf")
    assert failures == []
    assert doc.text == "Hello PDF world\nSecond line\n\nPage two text"
    assert (doc.doc_id, doc.file_type, doc.metadata) == ("docs/paper.pdf", "pdf", {"pages": 2})
    assert doc.file_hash == bytes_hash(p.read_bytes())


def test_truncated_pdf_is_corrupt(tmp_path, caplog):
    data = make_pdf(["Some text here"])
    p = tmp_path / "broken.pdf"
    p.write_bytes(data[: len(data) // 2])
    docs, failures = load_file(p)
    assert docs == []
    assert failures[0].error.startswith("corrupt PDF: ")
    assert not [r for r in caplog.records if r.name.startswith("pypdf") and r.levelname == "WARNING"]


def test_not_a_pdf_at_all_is_corrupt(tmp_path):
    p = tmp_path / "fake.pdf"
    p.write_text("this is not a pdf")
    _, failures = load_file(p)
    assert failures[0].error.startswith("corrupt PDF: ")


def test_pdf_without_text_layer(tmp_path):
    from pypdf import PdfWriter

    writer = PdfWriter()
    writer.add_blank_page(200, 200)
    buf = io.BytesIO()
    writer.write(buf)
    p = tmp_path / "scan.pdf"
    p.write_bytes(buf.getvalue())
    assert errors(load_file(p)[1]) == [(None, "PDF has no text layer (scanned?)")]


def test_encrypted_pdf(tmp_path):
    from pypdf import PdfWriter

    def encrypted(user_password: str) -> bytes:
        writer = PdfWriter(clone_from=io.BytesIO(make_pdf(["Secret text"])))
        writer.encrypt(user_password=user_password, owner_password="owner", algorithm="RC4-128")
        buf = io.BytesIO()
        writer.write(buf)
        return buf.getvalue()

    locked = tmp_path / "locked.pdf"
    locked.write_bytes(encrypted("secret"))
    assert errors(load_file(locked)[1]) == [(None, "encrypted PDF")]
    open_ = tmp_path / "open.pdf"  # encrypted with an empty user password: readable
    open_.write_bytes(encrypted(""))
    [doc], _ = load_file(open_)
    assert doc.text == "Secret text"


# ---------------------------------------------------------------- HTML

PAGE = """<!DOCTYPE html>
<html><head><title> My   Page </title><style>.s { color: red }</style>
<script>var leaked = "SCRIPT_TEXT";</script></head>
<body>
<header>SITE_HEADER</header>
<nav><ul><li>NAV_LINK</li></ul></nav>
<main><article>
<header><h1>Article <em>Title</em></h1></header>
<!-- COMMENT_TEXT -->
<p>First   paragraph with <a href="#">a link</a> and <code>x = 1</code>.</p>
<h2>Sub heading</h2>
<p>Second paragraph.</p>
<ul><li>one</li><li>two</li></ul>
<pre>def f():
    return 1</pre>
<form><label>FORM_TEXT</label></form>
<noscript>NOSCRIPT_TEXT</noscript>
<script>alert("INLINE_SCRIPT")</script>
</article><aside>ASIDE_TEXT</aside></main>
<footer>Copyright FOOTER_TEXT</footer>
</body></html>
"""


def test_html_main_text_as_markdown(tmp_path):
    p = tmp_path / "page.html"
    p.write_text(PAGE)
    [doc], failures = load_file(p)
    assert failures == []
    assert doc.file_type == "html"
    assert doc.metadata == {"title": "My Page"}
    assert doc.text == (
        "# Article Title\n\n"
        "First paragraph with a link and `x = 1`.\n\n"
        "## Sub heading\n\n"
        "Second paragraph.\n\n"
        "- one\n\n- two\n\n"
        "```\ndef f():\n    return 1\n```"
    )
    for junk in (
        "SCRIPT",
        "color",
        "SITE_HEADER",
        "NAV_LINK",
        "COMMENT",
        "FORM",
        "NOSCRIPT",
        "ASIDE",
        "FOOTER",
    ):
        assert junk not in doc.text


def test_html_without_main_uses_body(tmp_path):
    p = tmp_path / "simple.htm"
    p.write_text("<html><body><nav>menu</nav><h3>Deep</h3><div>Some <b>bold</b> text</div>"
                 "<footer>foot</footer></body></html>")  # fmt: skip
    [doc], _ = load_file(p)
    assert doc.text == "### Deep\n\nSome bold text"


def test_html_with_only_scripts_has_no_text(tmp_path):
    p = tmp_path / "app.html"
    p.write_text("<html><body><script>render()</script><nav>menu</nav></body></html>")
    assert errors(load_file(p)[1]) == [(None, "no text in HTML")]


# ---------------------------------------------------------------- JSONL and JSON


def test_jsonl_bad_lines_fail_alone(tmp_path):
    lines = [
        json.dumps({"id": "a", "text": "Alpha", "metadata": {"lang": "en", "n": 1}}),
        json.dumps({"id": 7, "text": "Seven"}),
        "",
        '{"id": "broken", "text": ',  # line 4
        json.dumps({"text": "No id here"}),
        json.dumps({"id": "m", "text": "x", "metadata": ["not", "an", "object"]}),
        json.dumps({"id": "t"}),
        json.dumps({"id": "a", "text": "Alpha again"}),
        json.dumps(["a", "list"]),
        json.dumps({"id": "e", "text": "   "}),
        json.dumps({"id": "last", "text": "Still loaded"}),
    ]
    p = tmp_path / "data.jsonl"
    p.write_text("\n".join(lines) + "\n")
    docs, failures = load_file(p, "data/data.jsonl")
    assert [(d.doc_id, d.line, d.text) for d in docs] == [
        ("a", 1, "Alpha"),
        ("7", 2, "Seven"),
        ("data/data.jsonl:5", 5, "No id here"),
        ("last", 11, "Still loaded"),
    ]
    assert docs[0].metadata == {"lang": "en", "n": 1}
    assert all(d.source == "data/data.jsonl" and d.file_type == "jsonl" for d in docs)
    assert {d.file_hash for d in docs} == {bytes_hash(p.read_bytes())}
    assert errors(failures) == [
        (4, "invalid JSON: Expecting value at column 26"),
        (6, "field 'metadata' must be an object, got a list"),
        (7, "missing field 'text'"),
        (8, "duplicate id 'a' (first on line 1)"),
        (9, "expected a JSON object, got a list"),
        (10, "field 'text' is empty"),
    ]
    assert all(f.path == "data/data.jsonl" for f in failures)


def test_jsonl_non_utf8_line_fails_alone(tmp_path):
    p = tmp_path / "mixed.jsonl"
    p.write_bytes(b'{"text": "caf\xe9"}\n{"text": "ok"}\n')
    docs, failures = load_file(p)
    assert [d.text for d in docs] == ["ok"]
    assert errors(failures) == [(1, "not UTF-8: invalid byte 0xe9 at offset 13")]


def test_json_single_object(tmp_path):
    p = tmp_path / "one.json"
    p.write_text(json.dumps({"text": "Only one", "metadata": {"k": "v"}}))
    [doc], failures = load_file(p, "one.json")
    assert failures == []
    assert (doc.doc_id, doc.text, doc.metadata, doc.file_type, doc.line) == (
        "one.json",
        "Only one",
        {"k": "v"},
        "json",
        None,
    )


def test_json_list_reports_items(tmp_path):
    p = tmp_path / "many.json"
    p.write_text(
        json.dumps([{"id": "x", "text": "X"}, {"text": "no id"}, {"id": "y"}, {"id": "x", "text": "X2"}, 5])
    )
    docs, failures = load_file(p, "many.json")
    assert [(d.doc_id, d.text, d.line) for d in docs] == [("x", "X", None), ("many.json:2", "no id", None)]
    assert errors(failures) == [
        (None, "item 3: missing field 'text'"),
        (None, "item 4: duplicate id 'x' (first at item 1)"),
        (None, "item 5: expected a JSON object, got a number"),
    ]


def test_json_of_the_wrong_shape(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('"just a string"')
    assert errors(load_file(p)[1]) == [(None, "expected a JSON object or a list of objects, got a string")]
    p.write_text("{nope")
    assert load_file(p)[1][0].error.startswith("invalid JSON: ")


# ---------------------------------------------------------------- discover


def test_discover_honours_excludes_and_skips_unknown(tmp_path):
    files = [
        "README", "a.md", "b.TXT", "logo.png", "blob", "src/x.py", "src/deep/y.rs",
        ".git/config.md", "node_modules/pkg/index.js", "src/__pycache__/x.py",
        ".hidden.md", "docs/page.html", "docs/data.jsonl",
    ]  # fmt: skip
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"\x00\x01binary" if name == "blob" else b"text\n")
    found = discover([tmp_path], EXCLUDE)
    candidates, skipped = found.files, found.skipped
    rel = lambda ps: [p.relative_to(tmp_path).as_posix() for p in ps]  # noqa: E731
    assert rel(candidates) == [
        "README", "a.md", "b.TXT", "docs/data.jsonl", "docs/page.html", "src/deep/y.rs", "src/x.py",
    ]  # fmt: skip
    assert rel(skipped) == ["blob", "logo.png"]
    # an explicit file is always a candidate; duplicates collapse
    explicit = tmp_path / "logo.png"
    found = discover([explicit, tmp_path / "a.md", tmp_path / "a.md"], EXCLUDE)
    candidates, skipped = found.files, found.skipped
    assert candidates == [tmp_path / "a.md", explicit] and skipped == []
    # no excludes: hidden files are found
    assert tmp_path / ".git/config.md" in discover([tmp_path], []).files


def test_discover_missing_path_is_an_error(tmp_path):
    with pytest.raises(TwinError, match="nope: no such file or directory"):
        discover([tmp_path / "nope"], EXCLUDE)


def test_sniff_and_file_types():
    assert sniff_text(b"plain text")
    assert sniff_text("caf\u00e9".encode()[:-1])  # a character cut at the end is fine
    assert not sniff_text(b"abc\x00def")
    assert not sniff_text(b"caf\xe9 latin-1")
    assert FILE_TYPES[".markdown"] == "md" and FILE_TYPES[".htm"] == "html" and FILE_TYPES[".yml"] == "code"
