"""What an adversarial probe broke in ingest (issue 17), each reproduced on the real CLI, store and
embedder: two writers at once, damaged stores, symlinks and special files, huge one-line files,
bad front matter / JSON / names, unreadable folders, ids claimed across files, near-duplicates.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import ingest_in
from llmtwin import Twin
from llmtwin.store.lancedb_store import LanceStore
from llmtwin.store.lock import lock_path

TWIN = str(Path(sys.executable).parent / "twin")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "COLUMNS": "200"}


def store_counts(store_dir: Path) -> tuple[Counter, Counter]:
    """(chunk ids, document ids) with how often each is stored."""
    store = LanceStore(store_dir)
    return (
        Counter(store.chunks.to_arrow().column("chunk_id").to_pylist()),
        Counter(store.docs.to_arrow().column("doc_id").to_pylist()),
    )


def wait_for_lock(store_dir: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until `proc` holds the store's writer lock (the lock file names its pid)."""
    deadline = time.monotonic() + timeout
    path = lock_path(store_dir)
    while time.monotonic() < deadline:
        if path.exists() and f"pid {proc.pid}" in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise AssertionError(f"the first ingest ended before it was seen holding the lock: {proc.communicate()}")
        time.sleep(0.05)
    raise AssertionError("the first ingest never took the lock")


# ---------------------------------------------------------------- 1: two writers


def test_two_concurrent_cli_ingests_never_corrupt_the_store(tmp_path, twin_cli, embedder, make_bulk_corpus):
    corpus = make_bulk_corpus(tmp_path / "corpus", 80)
    project = tmp_path / "proj"
    twin_cli("init", project, check=True)
    store_dir = project / ".twin" / "store"
    first = subprocess.Popen(
        [TWIN, "--project", str(project), "--set", "ingest.batch_chunks=8", "ingest", str(corpus), "--json"],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    wait_for_lock(store_dir, first)
    refused = twin_cli("--project", project, "ingest", corpus)
    waited = subprocess.Popen(
        [TWIN, "--project", str(project), "ingest", str(corpus), "--wait", "--json"],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    w_out, w_err = waited.communicate(timeout=600)

    # the second ingest was refused with one line naming the running one, no traceback
    assert refused.returncode == 2
    assert f"another ingest is running on this project (pid {first.pid}" in refused.stderr
    assert "Traceback" not in refused.stderr
    # the third queued behind the first, then found everything in place
    assert waited.returncode == 0, w_err
    assert "waiting for another ingest" in w_err
    report = json.loads(w_out)
    assert len(report["unchanged"]) == 80 and report["added"] == [] and report["repaired"] == []
    chunks, docs = store_counts(store_dir)
    assert len(docs) == 80 and max(docs.values()) == 1
    assert max(chunks.values()) == 1 and sum(chunks.values()) == json.loads(out)["chunks"]
    check = twin_cli("--project", project, "doctor", "--check", "--json")
    assert check.returncode == 0 and json.loads(check.stdout)["ok"]


def test_cli_ingest_during_a_server_upload_job_queues_the_job(tmp_path, twin_cli, embedder, make_bulk_corpus):
    from llmtwin.serve.jobs import IngestJobs

    corpus = make_bulk_corpus(tmp_path / "proj" / "corpus", 60)
    extra = tmp_path / "proj" / "uploads"
    extra.mkdir()
    (extra / "upload.md").write_text("# Upload\n\nThe upload job adds a note about tidal pools and crabs.\n")
    project = tmp_path / "proj"
    twin_cli("init", project, check=True)
    store_dir = project / ".twin" / "store"
    cli = subprocess.Popen(
        [TWIN, "--project", str(project), "--set", "ingest.batch_chunks=8", "ingest", str(corpus)],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    wait_for_lock(store_dir, cli)
    jobs = IngestJobs(Twin(project))
    job = jobs.submit([extra / "upload.md"])
    deadline = time.monotonic() + 60
    while job.status != "waiting" and time.monotonic() < deadline and cli.poll() is None:
        time.sleep(0.05)
    assert job.status == "waiting" and "waiting for another ingest" in job.error
    _, err = cli.communicate(timeout=600)
    assert cli.returncode == 0, err
    deadline = time.monotonic() + 300
    while job.status not in ("done", "failed") and time.monotonic() < deadline:
        time.sleep(0.1)
    jobs.stop()
    assert job.status == "done", job.error
    assert job.report["added"] == ["uploads/upload.md"]
    chunks, docs = store_counts(store_dir)
    assert len(docs) == 61 and max(docs.values()) == 1 and max(chunks.values()) == 1


# ---------------------------------------------------------------- 1: a damaged store is repaired


def _damage(store: LanceStore) -> None:
    """What two unlocked writers left: chunk, sentence and document rows stored twice."""
    store.chunks.add(store.chunks.to_arrow().slice(0, 3))
    store.sentences.add(store.sentences.to_arrow().slice(0, 2))
    store.docs.add(store.docs.to_arrow().slice(0, 2))
    store.after_write()


def test_damaged_store_is_found_and_repaired_by_doctor_and_by_ingest(tmp_path, twin_cli, embedder, make_bulk_corpus):
    project = tmp_path / "proj"
    corpus = make_bulk_corpus(project / "corpus", 12)
    twin = Twin(project)
    ingest_in(twin, "corpus")
    clean_rows = sorted(twin.store().chunks.to_arrow().select(["chunk_id", "text"]).to_pylist(), key=str)
    _damage(twin.store())
    store_dir = project / ".twin" / "store"
    chunks, docs = store_counts(store_dir)
    assert max(chunks.values()) == 2 and max(docs.values()) == 2
    # the damage shows: one chunk comes back twice from a search
    hits = [h.chunk.chunk_id for h in twin.search("note", k=50, mode="bm25")]
    assert len(hits) != len(set(hits))

    check = twin_cli("--project", project, "doctor", "--check", "--json")
    assert check.returncode == 1
    found = json.loads(check.stdout)
    assert not found["ok"] and found["duplicate_chunks"] == 3 and len(found["duplicate_records"]) == 2
    assert found["duplicate_sentences"] == 2 and found["repaired"] == []

    fixed = twin_cli("--project", project, "doctor")
    assert fixed.returncode == 0, fixed.stderr
    assert "repaired" in fixed.stdout
    chunks, docs = store_counts(store_dir)
    assert max(chunks.values()) == 1 and max(docs.values()) == 1 and len(docs) == 12
    after = sorted(LanceStore(store_dir).chunks.to_arrow().select(["chunk_id", "text"]).to_pylist(), key=str)
    assert after == clean_rows  # nothing lost
    again = twin_cli("--project", project, "doctor", "--check", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["ok"]

    # damage again; this time an ingest repairs it on its own, then edits apply (a damaged store
    # used to fail every later ingest with "Ambiguous merge inserts are prohibited")
    twin = Twin(project)
    _damage(twin.store())
    (corpus / "note000.md").write_text("# Note 0\n\nRewritten: the harbour ferry now runs at dawn.\n")
    report = twin_cli("--project", project, "ingest", corpus, "--json", check=True)
    result = json.loads(report.stdout)
    assert len(result["repaired"]) >= 2 and result["failed"] == []
    chunks, docs = store_counts(store_dir)
    assert max(chunks.values()) == 1 and max(docs.values()) == 1 and len(docs) == 12
    assert json.loads(twin_cli("--project", project, "doctor", "--check", "--json").stdout)["ok"]
    hits = [h.chunk.chunk_id for h in Twin(project).search("note", k=50, mode="bm25")]
    assert len(hits) == len(set(hits))


def test_torn_state_files_are_reported_or_skipped(tmp_path, twin_cli, embedder):
    project = tmp_path / "proj"
    (project / "docs").mkdir(parents=True)
    (project / "docs" / "a.md").write_text("# A\n\nAlpacas hum to each other in the high Andes.\n")
    twin = Twin(project)
    ingest_in(twin, "docs")
    store_dir = project / ".twin" / "store"
    with (store_dir / "versions.jsonl").open("a") as f:
        f.write('{"version": 2, "time": "2026-')  # a crash mid-append
    status = twin_cli("--project", project, "status", "--json")
    assert status.returncode == 0, status.stderr
    assert len(json.loads(status.stdout)["versions"]) == 1
    (project / "docs" / "b.md").write_text("# B\n\nBees dance to show where the flowers are.\n")
    twin_cli("--project", project, "ingest", project / "docs", check=True)
    lines = (store_dir / "versions.jsonl").read_text().splitlines()
    assert [json.loads(line)["version"] for line in lines] == [1, 2]  # the torn line is gone

    (store_dir / "meta.json").write_text("")
    broken = twin_cli("--project", project, "search", "bees")
    assert broken.returncode == 2 and "Traceback" not in broken.stderr
    assert "meta.json: unreadable store description" in broken.stderr


# ---------------------------------------------------------------- 2, 3: links, special files, sizes


def test_symlinks_and_special_files(tmp_path, twin_cli, embedder):
    project = tmp_path / "proj"
    docs = project / "docs"
    (docs / "sub").mkdir(parents=True)
    secret = tmp_path / "secret.txt"
    secret.write_text("The vault code is 4417-ZEBRA.\n")
    (docs / "real.md").write_text("# Real\n\nOtters hold hands while they sleep on the water.\n")
    (docs / "secret.txt").symlink_to(secret)
    (docs / "zero.md").symlink_to("/dev/zero")
    (docs / "alias.md").symlink_to(docs / "real.md")  # inside the folder: read once, as real.md
    (docs / "sub" / "loop").symlink_to(docs)  # a folder link back up
    (docs / "dangling.md").symlink_to(tmp_path / "nowhere.md")
    os.mkfifo(docs / "pipe.md")
    twin_cli("init", project, check=True)

    proc = subprocess.run([TWIN, "--project", str(project), "ingest", str(docs), "--json"],
                          env=ENV, capture_output=True, text=True, timeout=300)  # a FIFO used to hang here
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["added"] == ["docs/real.md"] and report["failed"] == []
    ignored = {i["path"]: i["error"] for i in report["ignored"]}
    assert "symlink to outside the ingested folders" in ignored["docs/secret.txt"]
    assert "symlink to outside the ingested folders" in ignored["docs/zero.md"]
    assert ignored["docs/dangling.md"] == "broken symlink"
    assert ignored["docs/pipe.md"] == "not a regular file (FIFO)"
    assert "docs/alias.md" not in ignored
    twin = Twin(project)
    assert all("4417" not in h.chunk.text for h in twin.search("vault code", k=10))
    assert Counter(twin.store().docs.to_arrow().column("doc_id").to_pylist()) == {"docs/real.md": 1}

    # editing the target of the inside link: still one document, no crash
    (docs / "real.md").write_text("# Real\n\nSea otters keep a favourite stone in a pouch of skin.\n")
    again = twin_cli("--project", project, "ingest", docs, "--json", check=True)
    assert json.loads(again.stdout)["updated"] == ["docs/real.md"]

    # --follow-symlinks reads the link out of the folder; /dev/zero is still refused
    follow = twin_cli("--project", project, "ingest", docs, "--follow-symlinks", "--json", check=True)
    report = json.loads(follow.stdout)
    assert report["added"] == [os.path.relpath(secret, project)]
    ignored = {i["path"]: i["error"] for i in report["ignored"]}
    assert ignored["docs/zero.md"] == "not a regular file (character device)"
    assert "symlink loop" in " ".join(ignored.values()) or not any("loop" in p for p in ignored)


def test_read_is_bounded_by_what_is_read(tmp_path):
    from llmtwin.feature.load import read_file

    big = tmp_path / "big.txt"
    big.write_bytes(b"x" * 2048)
    assert read_file(big, 4096) == (b"x" * 2048, None)
    data, error = read_file(big, 1000)
    assert data is None and error.startswith("file too large")
    data, error = read_file(Path("/dev/zero"), 1000)
    assert data is None and error == "not a regular file (character device)"


PEAK_RSS = r"""
import sys
from pathlib import Path
from llmtwin.config import EmbedderConfig
from llmtwin.feature.chunk import chunk_document
from llmtwin.feature.clean import clean_text
from llmtwin.feature.dedup import Deduplicator
from llmtwin.feature.load import load_bytes, read_file
from llmtwin.models.get import get_embedder

embedder = get_embedder(EmbedderConfig())
path = Path(sys.argv[1])
data, error = read_file(path, 60 * 2**20)
[doc], _ = load_bytes(data, path, path.name)
del data
doc.text = clean_text(doc.text, doc.file_type)
Deduplicator().check(doc)
sections, chunks = chunk_document(doc, embedder.count_tokens, 250, 32)
assert chunks and all(len(c.text) <= 32 * 250 for c in chunks)
covered = sum(len(c.text) for c in chunks)
# VmHWM, not ru_maxrss: Linux carries the high-water mark of the image before exec into ru_maxrss, so
# a child spawned by a pytest process of 3.8 GB reported 3.8 GB whatever it used itself.
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(len(chunks), covered, len(doc.text), hwm)
"""


@pytest.mark.slow
def test_a_one_line_file_is_chunked_in_bounded_memory(tmp_path, embedder):
    """A 20 MB single line of words (no newline, no sentence end) through load, clean, dedup and
    chunking with the real tokenizer: peak memory stays under 2 GB (it was ~0.33 GB per MB)."""
    words = "harbour lantern orchard falcon quartz meadow ember glacier saffron compass ".encode()
    path = tmp_path / "line.txt"
    with path.open("wb") as f:
        for _ in range(20 * 2**20 // len(words)):
            f.write(words)
    proc = subprocess.run([sys.executable, "-c", PEAK_RSS, str(path)], env=ENV, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr
    n, covered, length, peak = map(int, proc.stdout.split())
    assert n > 1000 and covered >= length * 0.99
    assert peak < 2 * 2**20, f"peak RSS {peak / 2**20:.2f} GB"  # VmHWM is in kB


# ---------------------------------------------------------------- 4, 6, 7: bad input, folders, ids


def test_bad_inputs_fail_alone_and_the_batch_goes_on(tmp_path, twin_cli, embedder):
    project = tmp_path / "proj"
    docs = project / "docs"
    docs.mkdir(parents=True)
    (docs / "good.md").write_text("# Good\n\nPuffins nest in burrows on grassy cliff tops.\n")
    (docs / "date.md").write_text("---\ndate: 2024-02-30\n---\n# Date\n\nA February that never was.\n")
    (docs / "int.md").write_text("---\nn: !!int abc\n---\n# Int\n\nA tag that cannot construct.\n")
    deep = {"text": "Deep metadata.", "id": "deep"}
    (docs / "deep.jsonl").write_text(
        '{"id": "deep", "text": "Deep metadata.", "metadata": ' + '{"a": ' * 50_000 + "1" + "}" * 50_000 + "}\n"
        + json.dumps({"id": "fine", "text": "A fine record beside a deep one."}) + "\n"
    )
    del deep
    (docs / "surrogate.jsonl").write_text('{"id": "s1", "text": "lone \\ud800 surrogate"}\n')
    (docs / "surrogate.json").write_text('{"text": "meta", "metadata": {"k": "\\udfff"}}')
    bad_name = os.fsencode(docs) + b"/caf\xe9.md"
    with open(bad_name, "wb") as f:
        f.write(b"# Latin-1 name\n\nA file whose name is not UTF-8.\n")
    twin_cli("init", project, check=True)
    proc = twin_cli("--project", project, "ingest", docs, "--json")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    report = json.loads(proc.stdout)
    assert set(report["added"]) == {"docs/good.md", "docs/date.md", "docs/int.md", "fine"}
    failed = {(f["path"], f.get("line")): f["error"] for f in report["failed"]}
    assert failed[("docs/deep.jsonl", 1)] in ("invalid JSON: nested too deeply",
                                               "field 'metadata' is nested deeper than 32 levels")
    assert "lone surrogate" in failed[("docs/surrogate.jsonl", 1)]
    assert "lone surrogate" in failed[("docs/surrogate.json", None)]
    assert failed[("docs/caf\\xe9.md", None)] == "file name is not valid UTF-8 (rename the file)"
    # front matter that does not construct stays in the text; the document is stored
    twin = Twin(project)
    hit = twin.search("February that never was", k=1)[0]
    assert hit.chunk.doc_id == "docs/date.md" and hit.chunk.metadata == {}
    # a strict run exits 1 on the same failures, still without a traceback
    strict = twin_cli("--project", project, "ingest", docs, "--strict")
    assert strict.returncode == 1 and "Traceback" not in strict.stderr


@pytest.mark.skipif(shutil.which("setpriv") is None or os.geteuid() != 0, reason="needs root and setpriv to run as nobody")
def test_an_unreadable_folder_is_a_failure_never_a_deletion(twin_cli, embedder):
    """`twin ingest` run by a non-root user (root reads every folder) over a folder with a
    subfolder it cannot list: a failure naming it, and nothing stored from it is deleted."""
    import tempfile

    from llmtwin.models.packaged import cache_root

    base = Path(tempfile.mkdtemp(prefix="llmtwin-nobody-", dir="/tmp"))
    try:
        project = base / "proj"
        (project / "docs" / "locked").mkdir(parents=True)
        (project / "docs" / "open.md").write_text("# Open\n\nGeckos climb glass with millions of tiny hairs.\n")
        (project / "docs" / "locked" / "inner.md").write_text("# Inner\n\nNewts regrow lost limbs.\n")
        twin_cli("init", project, check=True)
        twin_cli("--project", project, "ingest", project / "docs", check=True)
        if (cache_root() / "onnx").is_dir():  # the exported query encoder, so nobody need not export it again
            shutil.copytree(cache_root() / "onnx", base / "cache" / "onnx")
        subprocess.run(["chmod", "-R", "a+rwX", str(base)], check=True)
        (project / "docs" / "locked").chmod(0o000)
        env = ENV | {"HOME": str(base), "LLMTWIN_CACHE": str(base / "cache")}
        proc = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
             TWIN, "--project", str(project), "ingest", str(project / "docs"), "--json"],
            env=env, capture_output=True, text=True, timeout=600,
        )
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        assert report["deleted"] == []
        assert report["failed"] == [{"path": "docs/locked", "error": "cannot read folder: Permission denied"}]
        (project / "docs" / "locked").chmod(0o755)
        assert {r.doc_id for r in LanceStore(project / ".twin" / "store").documents()} == {
            "docs/open.md", "docs/locked/inner.md"
        }
    finally:
        (base / "proj" / "docs" / "locked").chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)


def test_a_record_id_never_replaces_another_files_document(tmp_path, embedder):
    project = tmp_path / "proj"
    (project / "xA").mkdir(parents=True)
    (project / "a0").mkdir()
    (project / "xA" / "a.md").write_text("# A\n\nThe lighthouse at Cape Wrath was built in 1828.\n")
    # sorts before xA/ and claims its id in the same run
    (project / "a0" / "claim.jsonl").write_text(json.dumps({"id": "xA/a.md", "text": "Planted text about pirates."}) + "\n")
    twin = Twin(project)
    report = ingest_in(twin, "a0", "xA")
    assert report.added == ["xA/a.md"]
    assert [(f.path, f.line) for f in report.failed] == [("a0/claim.jsonl", 1)]
    assert "duplicate id 'xA/a.md' (already the id of a document from xA/a.md)" in report.failed[0].error
    # in a later run, alone: still refused, the file's text stays
    (project / "a0" / "claim.jsonl").write_text(json.dumps({"id": "xA/a.md", "text": "Planted again, pirates."}) + "\n")
    later = ingest_in(twin, "a0")
    assert later.added == later.updated == [] and len(later.failed) == 1
    [record] = [r for r in twin.store().documents() if r.doc_id == "xA/a.md"]
    assert record.source == "xA/a.md"
    assert all("pirates" not in h.chunk.text for h in twin.search("pirates", k=5))
    assert not ingest_in(twin, "xA").updated  # re-ingesting the folder flips nothing back


# ---------------------------------------------------------------- 12: near-duplicate records


def test_near_duplicate_records_are_kept_and_findable(tmp_path, embedder):
    """Passages that differ in one name state different facts: each is stored (marked as the
    near-duplicate of the first) and found by a question about it; `drop` still drops them."""
    base = (
        "The annual regatta on the northern lake was won this year by {name}, who sailed a wooden "
        "sloop built by her grandfather and finished the twelve mile course in just under three hours, "
        "ahead of forty other boats from the surrounding villages and towns. The weather held fair all "
        "morning, with a steady westerly breeze that favoured the heavier boats, and the harbour master "
        "rang the old bronze bell as each crew crossed the line. In the evening the whole village "
        "gathered on the pier for grilled fish, fiddle music and the presentation of the silver cup."
    )
    names = ["Marta Olsen", "Ingrid Berg", "Sofia Lund", "Astrid Holm"]
    records = [{"id": f"regatta-{i}", "text": base.format(name=n)} for i, n in enumerate(names)]
    project = tmp_path / "proj"
    (project / "data").mkdir(parents=True)
    (project / "data" / "regatta.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    twin = Twin(project)
    report = ingest_in(twin, "data")
    assert sorted(report.added) == [r["id"] for r in records]
    assert {d.doc_id for d in report.duplicates} == {"regatta-1", "regatta-2", "regatta-3"}
    assert all(d.kind == "near" and d.duplicate_of == "regatta-0" for d in report.duplicates)
    docs = {r.doc_id: r for r in twin.store().documents()}
    assert all(docs[f"regatta-{i}"].status == "stored" and docs[f"regatta-{i}"].n_chunks == 1 for i in range(4))
    assert docs["regatta-2"].duplicate_of == "regatta-0"
    for i, name in enumerate(names):
        assert twin.search(f"Did {name} win the regatta?", k=1, mode="bm25")[0].chunk.doc_id == f"regatta-{i}"

    dropped = Twin(tmp_path / "drop")
    dropped.project.config.ingest.near_duplicates = "drop"
    shutil.copytree(project / "data", tmp_path / "drop" / "data")
    report = ingest_in(dropped, "data")
    assert report.added == ["regatta-0"] and dropped.store().count_chunks() == 1


def test_kept_near_duplicates_do_not_crowd_the_results(tmp_path, embedder):
    """Four near-identical records and two distinct ones: a search that reaches all four shows the
    best of them first and the distinct hits before the other three (which stay in the list)."""
    base = (
        "The annual regatta on the northern lake was won this year by {name}, who sailed a wooden sloop built "
        "by her grandfather and finished the twelve mile course in just under three hours, ahead of forty other "
        "boats from the surrounding villages and towns. The weather held fair all morning, with a steady westerly "
        "breeze that favoured the heavier boats, and the harbour master rang the old bronze bell as each crew "
        "crossed the line."
    )
    records = [{"id": f"r{i}", "text": base.format(name=n)} for i, n in enumerate(["Marta Olsen", "Ingrid Berg",
                                                                                   "Sofia Lund", "Astrid Holm"])]
    records += [{"id": "ferry", "text": "The lake ferry to the northern villages runs twice a day in summer."},
                {"id": "bell", "text": "The harbour master's bronze bell was cast in the old foundry by the lake."}]
    project = tmp_path / "proj"
    (project / "data").mkdir(parents=True)
    (project / "data" / "lake.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    twin = Twin(project)
    ingest_in(twin, "data")
    assert twin.store().near_duplicate_groups() == {"r0": "r0", "r1": "r0", "r2": "r0", "r3": "r0"}
    result = twin.search_explain("regatta on the northern lake harbour bell", k=6, mode="bm25")
    ids = [h.chunk.doc_id for h in result.hits]
    assert sorted(ids) == ["bell", "ferry", "r0", "r1", "r2", "r3"]  # nothing dropped
    assert ids[0].startswith("r") and set(ids[1:3]) == {"bell", "ferry"}  # distinct hits move up
    assert "near_duplicates(one per group first)" in result.pipeline
    top3 = [h.chunk.doc_id for h in twin.search("regatta on the northern lake harbour bell", k=3, mode="bm25")]
    assert sorted(top3[1:]) == ["bell", "ferry"]
    # a store without kept near duplicates runs no such stage
    other = Twin(tmp_path / "plain")
    (tmp_path / "plain" / "data").mkdir(parents=True)
    (tmp_path / "plain" / "data" / "x.jsonl").write_text(json.dumps(records[4]) + "\n")
    ingest_in(other, "data")
    assert other.store().near_duplicate_groups() == {}
    assert "near_duplicates" not in " ".join(other.search_explain("ferry", k=3).pipeline)
