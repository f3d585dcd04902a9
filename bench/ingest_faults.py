"""Fault injection for the store: concurrent writers killed at random, then `twin doctor`.

    .venv/bin/python bench/ingest_faults.py --rounds 50            # writers + kill -9
    .venv/bin/python bench/ingest_faults.py --rounds 0 --rss       # peak RSS on the probe's worst files

Each round changes the corpus (two files edited, one deleted, one added), then starts three
writers on one project at once: two `twin ingest corpus --wait` processes and an upload to a
running `twin serve --no-auth` (127.0.0.1, a free port; the upload becomes a background ingest
job). After a random delay each writer is SIGKILLed with probability 1/2 (the server with 1/4;
it is restarted for the next round). Then:

1. `twin doctor --check`: no duplicated row and no wrong chunk count may be found (orphan rows
   of a killed batch are allowed: the next ingest replaces or deletes them);
2. a completing `twin ingest` of the corpus and the uploads, then the store must hold exactly
   one record per file, each chunk once, each record's chunk count, and no orphan.

At the end the store's chunk ids are compared with a clean ingest of the final files into a new
project: equal means no chunk lost or left over. Everything runs on loopback and in bounded
time. Results: bench/results/ingest_faults.json and a summary on stdout.

`--rss` runs `twin ingest` on the probe's worst inputs one at a time and records each run's peak
RSS (ru_maxrss of the child): a 5 MB one-line file (embedded whole), and the 50 MB one-line file
through load, clean, dedup and chunking only (embedding its ~40,000 chunks would take most of an
hour on 2 cores; memory while embedding is bounded by the batch, not the file).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
TWIN = str(Path(sys.executable).parent / "twin")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
WORDS = (
    "river mountain copper violin harbour lantern orchard falcon quartz meadow ember glacier saffron "
    "compass thistle beacon canyon velvet marble cedar tundra pepper anchor willow cobalt prairie lagoon "
    "juniper granite harvest comet walnut sparrow citadel nectar monsoon basalt tulip ferry ivory"
).split()
ROUND_S = 240  # a round's writers are killed by then whatever happens


def note(rng: random.Random, title: str) -> str:
    paras = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(30, 120))) + "." for _ in range(rng.randint(1, 4))]
    return f"# {title}\n\n" + "\n\n".join(paras) + "\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, project: Path):
        self.project = project
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def ensure(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        self.port = free_port()
        self.proc = subprocess.Popen(
            [TWIN, "--project", str(self.project), "serve", "--no-auth", "--port", str(self.port)],
            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url("/healthz"), timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError("twin serve did not start in 120 s")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def twin(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([TWIN, *args], env=ENV, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise RuntimeError(f"twin {' '.join(args)} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return proc


def store_state(project: Path) -> dict:
    sys.path.insert(0, str(HERE.parent / "src"))
    from llmtwin.store.lancedb_store import LanceStore

    store = LanceStore(project / ".twin" / "store")
    chunks = store.chunks.to_arrow().select(["chunk_id", "doc_id"]).to_pylist()
    docs = store.docs.to_arrow().select(["doc_id", "n_chunks", "status"]).to_pylist()
    return {"chunks": chunks, "docs": docs}


def verify(project: Path, files: set[str]) -> list[str]:
    """What is wrong with a store after a completing ingest (empty: nothing)."""
    state = store_state(project)
    problems = []
    ids = Counter(c["chunk_id"] for c in state["chunks"])
    if max(ids.values(), default=1) > 1:
        problems.append(f"{sum(n - 1 for n in ids.values())} duplicated chunk rows")
    records = Counter(d["doc_id"] for d in state["docs"])
    if max(records.values(), default=1) > 1:
        problems.append(f"{sum(n - 1 for n in records.values())} duplicated records")
    if set(records) != files:
        problems.append(f"records {len(records)} vs files {len(files)}: missing {sorted(files - set(records))[:3]}, "
                        f"extra {sorted(set(records) - files)[:3]}")
    per_doc = Counter(c["doc_id"] for c in state["chunks"])
    wrong = [d["doc_id"] for d in state["docs"] if per_doc.get(d["doc_id"], 0) != (d["n_chunks"] if d["status"] == "stored" else 0)]
    if wrong:
        problems.append(f"{len(wrong)} records with a wrong chunk count")
    orphans = set(per_doc) - set(records)
    if orphans:
        problems.append(f"{len(orphans)} documents with orphan chunks")
    return problems


def fault_rounds(args: argparse.Namespace, work: Path) -> dict:
    rng = random.Random(args.seed)
    project = work / "proj"
    corpus = project / "corpus"
    corpus.mkdir(parents=True)
    for i in range(args.files):
        (corpus / f"n{i:03d}.md").write_text(note(rng, f"Note {i}"))
    twin("init", str(project))
    twin("--project", str(project), "ingest", str(corpus))
    server = Server(project)
    rounds = []
    next_file = args.files
    started = time.monotonic()
    try:
        for r in range(args.rounds):
            existing = sorted(corpus.iterdir())
            for path in rng.sample(existing, 2):
                path.write_text(path.read_text() + "\n" + note(rng, "Edit")[2:])
            rng.choice(existing).unlink()
            (corpus / f"n{next_file:03d}.md").write_text(note(rng, f"Note {next_file}"))
            next_file += 1
            server.ensure()

            writers = [
                subprocess.Popen([TWIN, "--project", str(project), "--set", "ingest.batch_chunks=4", "ingest",
                                  str(corpus), "--wait"], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 text=True)
                for _ in range(2)
            ]
            upload = httpx.post(server.url("/v1/ingest"), timeout=60,
                                files={"files": (f"u{r:03d}.md", note(rng, f"Upload {r}").encode())})
            job = upload.json().get("id") if upload.status_code == 202 else None
            delay = rng.uniform(0, args.max_delay)
            time.sleep(delay)
            killed = []
            for i, w in enumerate(writers):
                if rng.random() < 0.5 and w.poll() is None:
                    w.send_signal(signal.SIGKILL)
                    killed.append(f"cli{i}")
            if rng.random() < 0.25 and server.proc.poll() is None:
                server.proc.send_signal(signal.SIGKILL)
                server.proc.wait()
                killed.append("server")
            deadline = time.monotonic() + ROUND_S
            errors = []
            for i, w in enumerate(writers):
                try:
                    _, err = w.communicate(timeout=max(1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    w.kill()
                    _, err = w.communicate()
                    errors.append(f"cli{i} timed out")
                if w.returncode not in (0, -signal.SIGKILL):
                    errors.append(f"cli{i} exited {w.returncode}: {err.strip().splitlines()[-1:]}")
                elif "Traceback" in (err or ""):
                    errors.append(f"cli{i} printed a traceback")
            job_status = None
            if job and "server" not in killed:
                while time.monotonic() < deadline:
                    job_status = httpx.get(server.url(f"/v1/ingest/{job}"), timeout=10).json()["status"]
                    if job_status in ("done", "failed"):
                        break
                    time.sleep(0.3)
                if job_status != "done":
                    errors.append(f"upload job {job_status}")
            check = json.loads(twin("--project", str(project), "doctor", "--check", "--json", "--wait", check=False).stdout)
            damaged = check["duplicate_chunks"] + check["duplicate_sections"] + check["duplicate_sentences"] + len(
                check["duplicate_records"]) + len(check["count_mismatch"])
            twin("--project", str(project), "ingest", str(corpus), str(project / "uploads"), "--wait")
            files = {f"corpus/{p.name}" for p in corpus.iterdir()} | {f"uploads/{p.name}" for p in (project / "uploads").iterdir()}
            problems = verify(project, files)
            rounds.append({"round": r, "delay_s": round(delay, 2), "killed": killed, "errors": errors,
                           "damaged_rows_found": damaged, "orphans_found": check["orphan_chunks"],
                           "problems_after_ingest": problems})
            print(f"round {r}: killed {killed or '-'} after {delay:.1f}s; damaged {damaged}, orphans "
                  f"{check['orphan_chunks']}; {problems or 'store ok'}{'; ' + '; '.join(errors) if errors else ''}",
                  file=sys.stderr)
            if time.monotonic() - started > args.deadline_s:
                print("deadline reached", file=sys.stderr)
                break
    finally:
        server.stop()

    clean = work / "clean"
    (clean / "corpus").mkdir(parents=True)
    (clean / "uploads").mkdir()
    for sub in ("corpus", "uploads"):
        for p in (project / sub).iterdir():
            (clean / sub / p.name).write_bytes(p.read_bytes())
    twin("init", str(clean))
    twin("--project", str(clean), "ingest", str(clean / "corpus"), str(clean / "uploads"))
    a = sorted(c["chunk_id"] for c in store_state(project)["chunks"])
    b = sorted(c["chunk_id"] for c in store_state(clean)["chunks"])
    return {
        "rounds": len(rounds),
        "kills": sum(len(r["killed"]) for r in rounds),
        "rounds_with_damage_found": sum(r["damaged_rows_found"] > 0 for r in rounds),
        "rounds_with_problems": sum(bool(r["problems_after_ingest"]) for r in rounds),
        "writer_errors": sum(len(r["errors"]) for r in rounds),
        "final_chunks": len(a),
        "final_equals_clean_ingest": a == b,
        "detail": rounds,
    }


PIPELINE_ONLY = r"""
import resource, sys
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
print(len(chunks))
"""


def run_measured(cmd: list[str]) -> dict:
    """Run one child and read its own peak RSS (wait4's rusage, not the sum over children). Linux
    carries the pre-exec image's high-water mark into it: this process is ~100 MB, far under
    what is measured; a large parent (pytest) would need the child's own VmHWM instead."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} exited {proc.returncode}: {err.decode(errors='replace')[-1500:]}")
    return {"peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "seconds": round(time.perf_counter() - t, 1),
            "stdout": out.decode(errors="replace")[-300:]}


def one_line_file(path: Path, mb: int) -> None:
    words = " ".join(WORDS).encode() + b" "
    with path.open("wb") as f:
        for _ in range(mb * 2**20 // len(words)):
            f.write(words)


def rss(work: Path) -> dict:
    results = {}
    project = work / "rss"
    (project / "docs").mkdir(parents=True)
    twin("init", str(project))
    one_line_file(project / "docs" / "line5.txt", 5)
    results["twin ingest: 5 MB one-line .txt (embedded whole)"] = run_measured(
        [TWIN, "--project", str(project), "ingest", str(project / "docs"), "--json"])
    big = work / "line50.txt"
    one_line_file(big, 50)
    results["load + clean + dedup + chunk: 50 MB one-line .txt"] = run_measured([sys.executable, "-c", PIPELINE_ONLY, str(big)])
    for r in results.values():
        r.pop("stdout", None)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--files", type=int, default=40)
    ap.add_argument("--max-delay", type=float, default=12.0, help="kill after a uniform delay in [0, this] s")
    ap.add_argument("--seed", type=int, default=17)
    ap.add_argument("--deadline-s", type=float, default=5400)
    ap.add_argument("--rss", action="store_true", help="also measure peak RSS on the worst files")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "ingest_faults.json")
    args = ap.parse_args()
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "load_before": os.getloadavg()[0], "args": {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    with tempfile.TemporaryDirectory(prefix="llmtwin-faults-") as tmp:
        if args.rounds:
            result["faults"] = fault_rounds(args, Path(tmp))
        if args.rss:
            result["rss"] = rss(Path(tmp))
    result["load_after"] = os.getloadavg()[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    previous.update({k: v for k, v in result.items()})
    args.out.write_text(json.dumps(previous, indent=1) + "\n")
    summary = {k: v for k, v in result.get("faults", {}).items() if k != "detail"}
    print(json.dumps({"faults": summary, "rss": result.get("rss")}, indent=1))


if __name__ == "__main__":
    main()
