"""The real `twin` console script as a subprocess: init, --help speed, exit codes, status."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest
import yaml


def test_help_is_fast_and_imports_nothing_heavy(twin_cli):
    best = min(_timed(twin_cli, "--help") for _ in range(3))
    print(f"twin --help: {best:.3f} s")
    assert best < 2.0  # target 0.5 s; loose for a loaded machine
    out = twin_cli("--help", check=True).stdout
    for command in ("init", "ingest", "search", "ask", "chat", "status"):
        assert re.search(rf"│ {command}\s", out), command
    code = "import sys, llmtwin.cli; print(sorted(m for m in ('torch', 'transformers', 'lancedb', 'pyarrow', 'sentence_transformers', 'llama_cpp') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def _timed(twin_cli, *args) -> float:
    t = time.perf_counter()
    twin_cli(*args, check=True)
    return time.perf_counter() - t


def test_init_creates_and_keeps_a_project(tmp_path, twin_cli):
    proc = twin_cli("init", "proj", cwd=tmp_path, check=True)
    root = tmp_path / "proj"
    assert proc.stdout.strip() == f"Initialised llmtwin project in {root} (twin.yaml, .twin/)"
    assert (root / ".twin" / "traces").is_dir() and (root / ".twin" / ".gitignore").is_file()
    config = yaml.safe_load((root / "twin.yaml").read_text())
    assert config["name"] == "proj" and config["retrieval"]["mode"] == "hybrid"
    (root / "twin.yaml").write_text((root / "twin.yaml").read_text().replace("name: proj", "name: mine"))
    proc = twin_cli("init", root, check=True)
    assert proc.stdout.startswith("Found existing")
    assert yaml.safe_load((root / "twin.yaml").read_text())["name"] == "mine"


def _one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout


def test_missing_project_is_exit_2_one_line(tmp_path, twin_cli):
    _one_line_error(twin_cli("--project", tmp_path / "nowhere", "status"), "no twin.yaml", "twin init")
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error(twin_cli("search", "anything", cwd=empty), "no twin.yaml", "--project")
    _one_line_error(twin_cli("-p", tmp_path / "nowhere", "ask", "why?"), "no twin.yaml")


def test_bad_set_and_empty_store_are_exit_2(tmp_path, twin_cli):
    twin_cli("init", tmp_path, check=True)
    _one_line_error(twin_cli("-p", tmp_path, "--set", "ingest.batch_chunks=0", "status"), "ingest.batch_chunks=0")
    _one_line_error(twin_cli("-p", tmp_path, "--set", "nosuch.field=1", "status"), "unknown config field")
    _one_line_error(twin_cli("-p", tmp_path, "search", "quokka"), "nothing ingested yet")


def test_unquoted_off_and_on_are_words_not_booleans():
    from llmtwin.config import TwinConfig, set_field
    from llmtwin.errors import TwinError

    # YAML reads `rerank: off` as False: a field choosing among words gets its word back
    config = TwinConfig.model_validate(yaml.safe_load("retrieval:\n  rerank: off\n  query_encoder: on\n  mmr: on\n"))
    assert (config.retrieval.rerank, config.retrieval.query_encoder, config.retrieval.mmr) == ("off", "on", True)
    assert set_field(config, "embedder.query_quantize", yaml.safe_load("off")).embedder.query_quantize == "off"
    with pytest.raises(TwinError, match="retrieval.adapter=True"):  # no "on" among its words
        set_field(config, "retrieval.adapter", True)


@pytest.mark.model
def test_ingest_strict_exit_codes_and_status(tmp_path, twin_cli):
    project = tmp_path / "proj"
    twin_cli("init", project, check=True)
    corpus = project / "corpus"
    corpus.mkdir()
    (corpus / "a.md").write_text("# Alpha\n\nThe alpha document talks about apples.\n", encoding="utf-8")
    (corpus / "b.txt").write_text("The beta document talks about bananas.\n", encoding="utf-8")

    ok = twin_cli("ingest", "corpus", "--strict", cwd=project)
    assert ok.returncode == 0, ok.stderr
    assert re.match(r"store version 1: 2 added, 0 updated, 0 unchanged, 0 deleted, 0 duplicates, 0 failed; "
                    r"2 chunks written in [\d.]+s$", ok.stdout.strip())

    (corpus / "c.txt").write_bytes("Caf\u00e9".encode("latin-1"))
    (corpus / "d.md").write_bytes(b"")
    bad = twin_cli("-p", project, "ingest", str(corpus), "--strict")
    assert bad.returncode == 1, bad.stderr
    assert "Traceback" not in bad.stderr
    assert "0 added, 0 updated, 2 unchanged, 0 deleted, 0 duplicates, 2 failed" in bad.stdout
    assert "  failed: corpus/c.txt: not UTF-8: invalid byte 0xe9 at offset 3" in bad.stdout
    assert "  failed: corpus/d.md: empty file" in bad.stdout

    # a path that does not exist: exit 2, and --rebuild has not dropped the store
    missing = twin_cli("-p", project, "ingest", "--rebuild", project / "nope")
    _one_line_error(missing, f"{project / 'nope'}: no such file or directory")

    status = twin_cli("-p", project, "status", check=True).stdout
    assert f"project   {project}" in status
    assert re.search(r"^documents 2 \(1 md, 1 txt\), duplicates 0$", status, re.M), status
    # one sentence each ("# Alpha" is a heading): their sentence rows hold the chunks' own vectors
    assert re.search(r"^chunks    2, 2 sentence vectors$", status, re.M) and re.search(r"^versions  2$", status, re.M)
    assert re.search(r"^  v1  \S+  \+2 ~0 -0  2 chunks$", status, re.M) and re.search(r"^  v2 ", status, re.M)
    info = json.loads(twin_cli("-p", project, "status", "--json", check=True).stdout)
    assert (info["documents"], info["chunks"], info["sentence_vectors"], len(info["versions"])) == (2, 2, 2, 2)
    assert [v["failed"] for v in info["versions"]] == [0, 2]
