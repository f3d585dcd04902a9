"""The feature pipeline end to end: real files, the packaged embedder, a real LanceDB store.

A mixed corpus (good, broken, binary, empty, latin-1, JSONL with a bad line, duplicates, a
skipped .png) is ingested once per module; incremental re-ingest runs on a project of its own;
crash safety SIGKILLs a real `twin ingest` mid-way and compares the resumed store with a clean one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ESSAY, MIXED_FAILED, ingest_in
from llmtwin import Twin
from llmtwin.store.lancedb_store import LanceStore

STORED = {
    "corpus/essay.md", "corpus/guide.md", "corpus/notes.txt", "corpus/page.html",
    "corpus/report.pdf", "rec-alpha", "rec-beta", "rec-gamma",
}  # fmt: skip
DUPLICATES = {"corpus/guide_copy.md": ("corpus/guide.md", "exact"), "corpus/essay_v2.md": ("corpus/essay.md", "near")}


def chunk_rows(store: LanceStore) -> list[dict]:
    return sorted(store.chunks.to_arrow().to_pylist(), key=lambda r: r["chunk_id"])


def failed_map(report) -> dict[tuple[str, int | None], str]:
    return {(f.path, f.line): f.error for f in report.failed}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, embedder, make_mixed_corpus):
    root = tmp_path_factory.mktemp("mixed")
    twin = Twin(root)
    twin.project.config.ingest.near_duplicates = "drop"  # these tests hold the dropping mode
    make_mixed_corpus(root / "corpus")
    report = ingest_in(twin, "corpus")
    return twin, report


# ---------------------------------------------------------------- 1, 2: a mixed corpus


def test_mixed_corpus_report(mixed):
    twin, report = mixed
    failed = failed_map(report)
    for path, reason in MIXED_FAILED.items():
        assert reason in failed.pop((path, None)), path
    [(where, error)] = failed.items()  # only the JSONL line is left
    assert where == ("corpus/records.jsonl", 3)
    assert error.startswith("invalid JSON")
    assert set(report.added) == STORED
    assert report.updated == report.unchanged == report.deleted == []
    assert report.skipped == ["corpus/logo.png"]
    assert report.store_version == 1


def test_duplicates_reported_not_stored(mixed):
    twin, report = mixed
    dups = {d.doc_id: d for d in report.duplicates}
    assert set(dups) == set(DUPLICATES)
    for doc_id, (original, kind) in DUPLICATES.items():
        assert (dups[doc_id].duplicate_of, dups[doc_id].kind) == (original, kind)
    assert dups["corpus/guide_copy.md"].similarity == 1.0
    assert 0.8 <= dups["corpus/essay_v2.md"].similarity < 1.0
    store = twin.store()
    rows = chunk_rows(store)
    assert {r["doc_id"] for r in rows} == STORED  # no chunk of a duplicate
    assert len(rows) == report.chunks == store.count_chunks()
    records = {r.doc_id: r for r in store.documents()}
    assert set(records) == STORED | set(DUPLICATES)
    for doc_id, (original, _) in DUPLICATES.items():
        assert (records[doc_id].status, records[doc_id].duplicate_of, records[doc_id].n_chunks) == (
            "duplicate", original, 0
        )
    assert all(records[d].status == "stored" and records[d].n_chunks > 0 for d in STORED)
    # the near duplicate's changed sentence is nowhere in the store
    assert not any("relied on the light" in r["text"] for r in rows)


def test_chunks_of_each_file_type(mixed):
    twin, _ = mixed
    rows = chunk_rows(twin.store())
    by_doc: dict[str, list[dict]] = {}
    for r in rows:
        by_doc.setdefault(r["doc_id"], []).append(r)
    # HTML: the main text, none of the script or nav
    html = " ".join(r["text"] for r in by_doc["corpus/page.html"])
    assert "chanoyu" in html and "tatami" in html
    assert not any("XSCRIPTX" in r["text"] or "NAVLINKS" in r["text"] for r in rows)
    # markdown: heading-delimited chunks carry their heading path
    paths = {tuple(r["heading_path"]) for r in by_doc["corpus/guide.md"]}
    assert ("Quokka Field Guide", "Diet") in paths and ("Quokka Field Guide", "Behaviour") in paths
    assert "Aletsch glacier" in " ".join(r["text"] for r in by_doc["corpus/report.pdf"])
    assert "rye flour" in by_doc["corpus/notes.txt"][0]["text"]
    assert " ".join(r["text"] for r in by_doc["corpus/essay.md"]).split() == ESSAY.split()
    for r in rows:
        assert r["file_type"] == {"rec": "jsonl"}.get(r["doc_id"][:3], Path(r["doc_id"]).suffix.lstrip("."))
        assert 0 <= r["start"] < r["end"]
        assert abs(float(np.linalg.norm(r["vector"])) - 1.0) < 1e-3


def test_jsonl_ids_and_metadata_searchable(mixed):
    twin, _ = mixed
    hits = twin.search("billing service PostgreSQL migration", filters=["team=red"])
    assert hits and hits[0].chunk.doc_id == "rec-alpha"
    assert {h.chunk.doc_id for h in hits} <= {"rec-alpha", "rec-gamma"}
    assert hits[0].chunk.source == "corpus/records.jsonl"
    assert hits[0].chunk.metadata == {"team": "red", "year": 2023}
    assert {h.chunk.doc_id for h in twin.search("project", k=10, filters={"year": "2024"})} == {
        "rec-beta", "rec-gamma"
    }
    [hit] = twin.search("passkeys login", filters=["doc_id=rec-beta"])
    assert hit.chunk.doc_id == "rec-beta"
    status = twin.status()
    assert status["documents"] == len(STORED) and status["duplicates"] == len(DUPLICATES)
    assert status["chunks"] == twin.store().count_chunks()
    assert len(status["versions"]) == 1


# ---------------------------------------------------------------- 3: incremental re-ingest


def test_incremental_reingest(tmp_path, embedder, make_mixed_corpus):
    twin = Twin(tmp_path / "proj")
    twin.project.config.ingest.near_duplicates = "drop"
    corpus = make_mixed_corpus(tmp_path / "proj" / "corpus")
    store = twin.store
    first = ingest_in(twin, "corpus")
    before = chunk_rows(store())

    # unchanged: nothing embedded or written, every record unchanged, the same failures reported
    again = ingest_in(twin, "corpus")
    assert again.chunks == 0
    assert set(again.unchanged) == STORED | set(DUPLICATES)
    assert again.added == again.updated == again.deleted == again.duplicates == []
    assert failed_map(again) == failed_map(first)
    assert chunk_rows(store()) == before

    # one file modified: only it is updated, its old text is gone from the store and from search
    (corpus / "notes.txt").write_text(
        "Sourdough starter notes.\n\nFeed the starter with spelt flour and warm water every "
        "eight hours; it is ready to bake with when it smells of green apples.\n",
        encoding="utf-8",
    )
    mod = ingest_in(twin, "corpus")
    assert mod.updated == ["corpus/notes.txt"]
    assert mod.added == mod.deleted == []
    assert set(mod.unchanged) == (STORED | set(DUPLICATES)) - {"corpus/notes.txt"}
    assert mod.chunks == 1
    rows = chunk_rows(store())
    assert not any("rye flour" in r["text"] for r in rows)
    assert [r["text"] for r in rows if r["doc_id"] == "corpus/notes.txt"][0].count("spelt flour") == 1
    assert [r for r in rows if r["doc_id"] != "corpus/notes.txt"] == [
        r for r in before if r["doc_id"] != "corpus/notes.txt"
    ]
    for mode in ("bm25", "dense", "hybrid"):
        for hit in twin.search("rye flour twelve hours", mode=mode, k=10):
            assert "rye" not in hit.chunk.text
    assert twin.search("spelt flour", mode="bm25")[0].chunk.doc_id == "corpus/notes.txt"

    # a file deleted: its record and chunks go
    (corpus / "page.html").unlink()
    gone = ingest_in(twin, "corpus")
    assert gone.deleted == ["corpus/page.html"] and gone.chunks == 0
    assert gone.added == gone.updated == []
    assert "corpus/page.html" not in {r.doc_id for r in store().documents()}
    assert not any(r["doc_id"] == "corpus/page.html" for r in chunk_rows(store()))
    assert all(h.chunk.doc_id != "corpus/page.html" for h in twin.search("matcha tea ceremony", k=10))

    # a record removed from the JSONL (its malformed line stays): only that record goes
    lines = (corpus / "records.jsonl").read_text(encoding="utf-8").splitlines()
    (corpus / "records.jsonl").write_text(
        "\n".join(line for line in lines if '"rec-beta"' not in line) + "\n", encoding="utf-8"
    )
    rec = ingest_in(twin, "corpus")
    assert rec.deleted == ["rec-beta"] and rec.chunks == 0
    assert {"rec-alpha", "rec-gamma"} <= set(rec.unchanged)
    assert ("corpus/records.jsonl", 2) in failed_map(rec)  # the bad line moved up
    records = {r.doc_id: r for r in store().documents()}
    assert "rec-beta" not in records and records["rec-gamma"].line == 3
    assert not any(r["doc_id"] == "rec-beta" for r in chunk_rows(store()))
    assert twin.search("project", k=10, filters=["team=blue"]) == []

    # the original of a near duplicate deleted: the duplicate is stored in its place
    (corpus / "essay.md").unlink()
    promo = ingest_in(twin, "corpus")
    assert promo.deleted == ["corpus/essay.md"] and promo.added + promo.updated == ["corpus/essay_v2.md"]
    records = {r.doc_id: r for r in store().documents()}
    assert records["corpus/essay_v2.md"].status == "stored" and records["corpus/essay_v2.md"].n_chunks > 0

    # one store version per ingest, each summarising its run
    versions = twin.status()["versions"]
    assert [v["version"] for v in versions] == [1, 2, 3, 4, 5, 6]
    assert [(v["added"], v["updated"], v["deleted"], v["chunks_written"]) for v in versions] == [
        (len(STORED), 0, 0, first.chunks), (0, 0, 0, 0), (0, 1, 0, 1), (0, 0, 1, 0), (0, 0, 1, 0),
        (len(promo.added), len(promo.updated), 1, promo.chunks),
    ]
    assert versions[-1]["chunks_total"] == store().count_chunks()


def test_search_of_a_store_emptied_by_reingest_finds_nothing(tmp_path, embedder):
    """Every file gone from the folder: its chunks go, and a search finds nothing (it used to fail
    building the in-memory copy of an empty table)."""
    twin = Twin(tmp_path / "proj")
    corpus = tmp_path / "proj" / "corpus"
    corpus.mkdir(parents=True)
    (corpus / "lava.md").write_text("Lava cools into basalt on the slopes of the volcano.\n", encoding="utf-8")
    ingest_in(twin, "corpus")
    assert twin.search("basalt", k=3)[0].chunk.doc_id == "corpus/lava.md"
    (corpus / "lava.md").unlink()
    assert ingest_in(twin, "corpus").deleted == ["corpus/lava.md"]
    assert twin.store().count_chunks() == 0
    for mode in ("hybrid", "dense", "bm25"):
        assert twin.search("basalt", k=3, mode=mode) == []


# ---------------------------------------------------------------- 4: crash safety


def _manifests(store_dir: Path) -> int:
    return len(list((store_dir / "documents.lance" / "_versions").glob("*.manifest")))


def _start_and_kill(project: Path, corpus: Path) -> tuple[bool, str]:
    """Start `twin ingest`, SIGKILL it once its first batch has committed.
    Returns (killed mid-way, stderr)."""
    twin = Path(sys.executable).parent / "twin"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen(
        [str(twin), "--project", str(project), "--set", "ingest.batch_chunks=4", "ingest", str(corpus)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    store_dir = project / ".twin" / "store"
    deadline = time.monotonic() + 240
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            # documents table: version 1 is its creation, version 2 the first committed batch
            if store_dir.exists() and _manifests(store_dir) >= 2:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
        else:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
                raise AssertionError("twin ingest made no batch in 240 s")
        proc.wait()
        return proc.returncode == -signal.SIGKILL, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigkill_mid_ingest_then_resume_matches_clean_run(tmp_path, twin_cli, embedder, make_bulk_corpus):
    killed_project = None
    for attempt, n in enumerate((48, 120, 300)):
        corpus = make_bulk_corpus(tmp_path / f"corpus{attempt}", n)
        project = tmp_path / f"killed{attempt}"
        twin_cli("init", project, check=True)
        killed, stderr = _start_and_kill(project, corpus)
        assert "Traceback" not in stderr, stderr
        if not killed:
            continue  # finished before the kill: try a bigger corpus
        partial = LanceStore(project / ".twin" / "store")
        stored = len(partial.documents())
        if 0 < stored < n and not partial.versions():
            killed_project = project
            break
    assert killed_project is not None, "could not kill twin ingest mid-way"
    print(f"killed at attempt {attempt} with {stored}/{n} documents stored")

    resumed = twin_cli("--project", killed_project, "--set", "ingest.batch_chunks=4", "ingest", corpus, "--json",
                       check=True)
    report = json.loads(resumed.stdout)
    all_ids = {f"../{corpus.name}/note{i:03d}.md" for i in range(n)}
    assert set(report["unchanged"]) | set(report["added"]) == all_ids
    assert len(report["unchanged"]) >= stored  # what the killed run committed is kept, not redone
    assert report["added"] and report["failed"] == [] and report["duplicates"] == []
    assert report["store_version"] == 1

    clean = Twin(tmp_path / "clean")
    clean.project.config.ingest.batch_chunks = 4
    clean.ingest([corpus])
    a, b = LanceStore(killed_project / ".twin" / "store"), clean.store()
    ra, rb = chunk_rows(a), chunk_rows(b)
    assert len(ra) == len(rb) == b.count_chunks() >= n
    for x, y in zip(ra, rb):
        assert {k: x[k] for k in ("chunk_id", "doc_id", "text", "start", "end", "heading_path", "parent_id", "idx")} == {
            k: y[k] for k in ("chunk_id", "doc_id", "text", "start", "end", "heading_path", "parent_id", "idx")
        }
        np.testing.assert_allclose(np.asarray(x["vector"]), np.asarray(y["vector"]), rtol=0, atol=1e-6)
    key = lambda r: r.doc_id  # noqa: E731
    assert sorted(a.documents(), key=key) == sorted(b.documents(), key=key)
    sections = lambda s: sorted(s.sections.to_arrow().to_pylist(), key=lambda r: r["section_id"])  # noqa: E731
    assert sections(a) == sections(b)
    # the BM25 index was made by the resumed run
    assert a.text_search("harbour lantern", 5) != []
