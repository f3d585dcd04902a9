"""feature.clean: unicode and whitespace normalisation, boilerplate removal, code left alone."""

from __future__ import annotations

import time

from llmtwin.feature.clean import clean_text


def test_prose_whitespace_and_unicode():
    raw = (
        "  Title\u00a0here  \r\n"
        "\r\n\r\n\r\n"
        "Tabs\t\tand   spaces\u2003inside.\x07\x00   \r"
        "zero\u200bwidth soft\u00adhyphen \ufb01ne \uff21\n\x0c"
        "\n\n\nEnd\u2028next\n\n"
    )
    assert clean_text(raw, "txt") == (
        "Title here\n\nTabs and spaces inside.\nzerowidth softhyphen fine A\n\nEnd\nnext"
    )


def test_markdown_list_indentation_kept():
    raw = "- item   one\n    - nested   item\n\n\n\n1. first"
    assert clean_text(raw, "md") == "- item one\n    - nested item\n\n1. first"


def test_code_is_not_altered_beyond_nfc():
    code = "def f(x):  \r\n\n\n\n    y  =  \ufb01(x)\t# keep   spacing\n\treturn  y\x00\n"
    assert clean_text(code, "code") == "def f(x):\n\n\n\n    y  =  \ufb01(x)\t# keep   spacing\n\treturn  y"
    assert clean_text("e\u0301", "code") == "\u00e9"  # NFC composes


def test_fenced_blocks_in_markdown_are_code():
    raw = (
        "Some   prose \ufb01\n\n"
        "```python\n"
        "x  =  '\ufb01'\n\n\n\n"
        "    indented  =  1\n"
        "```\n"
        "After   fence\n"
        "~~~\nunclosed   fence\n\n\n\nruns to the end"
    )
    assert clean_text(raw, "md") == (
        "Some prose fi\n\n"
        "```python\n"
        "x  =  '\ufb01'\n\n\n\n"
        "    indented  =  1\n"
        "```\n"
        "After fence\n"
        "~~~\nunclosed   fence\n\n\n\nruns to the end"
    )


def test_repeated_boilerplate_kept_once():
    page = "Annual Report 2023 — ACME Corp\n{body}\nSubscribe to our newsletter!\nPage end"
    raw = "\n\n".join(page.format(body=f"Body of page {i}.") for i in range(1, 5))
    assert clean_text(raw, "pdf") == (
        "Annual Report 2023 — ACME Corp\nBody of page 1.\nSubscribe to our newsletter!\nPage end\n\n"
        "Body of page 2.\nPage end\n\n"  # "Page end" is under 10 characters: kept
        "Body of page 3.\nPage end\n\n"
        "Body of page 4.\nPage end"
    )


def test_boilerplate_threshold_and_exemptions():
    line = "A line repeated twice"
    assert clean_text(f"{line}\n{line}", "txt") == f"{line}\n{line}"  # 2 < 3
    assert clean_text(f"{line}\n{line}", "txt", boilerplate_min_repeats=2) == line
    md = "\n".join(
        ["| a | b |", "|----|----|", "| 1 | 2 |"] * 3
        + ["## Parameters list"] * 3
        + ["- - - - - - - - - -"] * 3
    )
    assert clean_text(md, "md") == md  # table separators, headings and rules are structure
    code_line = "print('hello world')"
    fenced = "\n".join(["```", code_line, code_line, code_line, "```"])
    assert clean_text(fenced, "md") == fenced
    assert clean_text("\n".join([code_line] * 4), "code") == "\n".join([code_line] * 4)


def test_boilerplate_removal_does_not_leave_blank_runs():
    raw = "Keep me first\n\nSubscribe to our newsletter\n\nText one\n\nSubscribe to our newsletter\n\n" \
          "Text two\n\nSubscribe to our newsletter\n\nText three"  # fmt: skip
    assert clean_text(raw, "html") == (
        "Keep me first\n\nSubscribe to our newsletter\n\nText one\n\nText two\n\nText three"
    )


def test_empty_and_idempotent():
    assert clean_text(" \n\t\n\u200b ", "txt") == ""
    raw = "# T\n\nSome  text\u00a0here.\n\n\n- a\n\n```\ncode  here\n```"
    once = clean_text(raw, "md")
    assert clean_text(once, "md") == once


def test_one_megabyte_is_fast():
    para = "Lorem ipsum  dolor sit amet,\u00a0consectetur adipiscing elit {i}.\n"
    text = "".join(para.format(i=i) for i in range(16_000))  # ~1 MB
    text += "```\n" + "x = 1\n" * 2000 + "```\n"
    assert len(text) > 1_000_000
    start = time.perf_counter()
    out = clean_text(text, "md")
    assert time.perf_counter() - start < 1.0
    assert out.startswith("Lorem ipsum dolor sit amet, consectetur adipiscing elit 0.\n")
