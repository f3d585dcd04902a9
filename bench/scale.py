"""Scale benchmark: re-ingesting 1,000 unchanged files, hybrid search latency at ≥ 10,000 chunks,
and `twin --help` start-up time.

    .venv/bin/python bench/scale.py

The files are made from ../shared/data passages (evaluation data: used here to measure speed,
never trained on, written only under bench/results/ which git ignores).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
WORK = ROOT / "bench" / "results" / "scale"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    from llmtwin import Twin

    results: dict = {"date": time.strftime("%Y-%m-%d"), "command": "python bench/scale.py"}
    if WORK.exists():
        shutil.rmtree(WORK)
    WORK.mkdir(parents=True)

    # twin --help, five runs, best and median
    twin_bin = Path(sys.executable).parent / "twin"
    runs = []
    for _ in range(5):
        t = time.perf_counter()
        subprocess.run([str(twin_bin), "--help"], check=True, capture_output=True)
        runs.append(time.perf_counter() - t)
    results["help_seconds"] = {"median": round(statistics.median(runs), 3), "min": round(min(runs), 3)}
    print("twin --help", results["help_seconds"], flush=True)

    # 1,000 files: first ingest, then an unchanged re-ingest
    passages = [json.loads(line)["text"] for line in (DATA / "disfl_qa_corpus.jsonl").open()][:1000]
    files = WORK / "files"
    for i, text in enumerate(passages):
        sub = files / f"part{i % 10}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"doc{i:04d}.txt").write_text(text, encoding="utf-8")
    twin = Twin(WORK / "files_project")
    t = time.perf_counter()
    first = twin.ingest([files])
    first_s = time.perf_counter() - t
    t = time.perf_counter()
    again = twin.ingest([files])
    again_s = time.perf_counter() - t
    results["files_1000"] = {
        "first_ingest_seconds": round(first_s, 2),
        "documents": len(first.added),
        "duplicates": len(first.duplicates),
        "reingest_unchanged_seconds": round(again_s, 3),
        "reingest_chunks_written": again.chunks,
        "reingest_unchanged_docs": len(again.unchanged),
    }
    print("1000 files", results["files_1000"], flush=True)

    # ≥ 10,000 chunks: xsum articles in small chunks, then hybrid search latency
    articles = [json.loads(line) for line in (DATA / "xsum.jsonl").open()]
    corpus = WORK / "xsum_docs.jsonl"
    with corpus.open("w", encoding="utf-8") as f:
        for a in articles:
            f.write(json.dumps({"id": a["id"], "text": a["document"]}) + "\n")
    big = Twin(WORK / "big_project")
    big.project.config.ingest.chunk_tokens = 48
    big.project.config.ingest.chunk_overlap = 8
    t = time.perf_counter()
    report = big.ingest([corpus])
    chunks = big.store().count_chunks()
    results["big"] = {"chunks": chunks, "documents": len(report.added), "ingest_seconds": round(time.perf_counter() - t, 1)}
    print("big store", results["big"], flush=True)
    questions = [json.loads(line)["question"] for line in (DATA / "disfl_qa_queries.jsonl").open()]
    sample = [q for q in random.Random(0).sample(questions, 300) if q.strip()]
    big.search("warm up")
    for mode in ("hybrid", "dense", "bm25"):
        totals, stages = [], {}
        for q in sample:
            t = time.perf_counter()
            res = big.search_explain(q, k=10, mode=mode)
            totals.append(time.perf_counter() - t)
            for name, seconds in res.timings.items():
                stages.setdefault(name, []).append(seconds)
        results["big"][mode] = {
            "p50_ms": round(percentile(totals, 0.5) * 1000, 2),
            "p95_ms": round(percentile(totals, 0.95) * 1000, 2),
            "stages_p50_ms": {n: round(percentile(v, 0.5) * 1000, 2) for n, v in stages.items()},
        }
        print(mode, results["big"][mode], flush=True)

    out = ROOT / "bench" / "results" / "scale.json"
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
