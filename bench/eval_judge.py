"""Benchmark: the judge's agreement with labelled preferences (hhh_preferences), both orders per pair.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/eval_judge.py [--limit N] [--threads T] [--out DIR]

Pairs are judged in a seeded random order and each judged pair is appended to DIR/judge_rows.jsonl
at once, so an interrupted run resumes, and a partial run is a random sample of the file. The
summary (evaluation/judge.py: agreement_from_rows) is written to DIR/judge_summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hhh_preferences.jsonl"


def main() -> None:
    from llmtwin.config import LLMConfig
    from llmtwin.evaluation.judge import (
        Judge,
        agreement_from_rows,
        judge_pair,
        load_pairs,
    )
    from llmtwin.models.get import get_llm

    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--scoring", default="auto")
    ap.add_argument("--out", type=Path, default=Path("/tmp/h8_bench"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    pairs, _failures = load_pairs(args.data)
    random.Random(0).shuffle(pairs)
    pairs = pairs[: args.limit] if args.limit else pairs
    judge = Judge(get_llm(LLMConfig(threads=args.threads)), scoring=args.scoring)
    rows_path = args.out / f"judge_rows_{judge.method}.jsonl"
    rows = [json.loads(line) for line in rows_path.open()] if rows_path.exists() else []
    done = {r["id"] for r in rows}
    started = time.perf_counter()
    with rows_path.open("a") as f:
        for i, pair in enumerate(pairs):
            if pair["id"] in done:
                continue
            t = time.perf_counter()
            row = judge_pair(judge, pair, i)
            row["seconds"] = round(time.perf_counter() - t, 2)
            rows.append(row)
            f.write(json.dumps(row) + "\n")
            f.flush()
            print(f"{len(rows)}/{len(pairs)} {row['id']} {row['winner']} {row['seconds']}s", flush=True)
    agreement = agreement_from_rows(judge.describe(), rows, dataset=str(args.data), seconds=time.perf_counter() - started)
    out = agreement.to_dict()
    out["load_average_end"] = os.getloadavg()
    out["mean_seconds_per_pair"] = round(sum(r.get("seconds", 0) for r in rows) / max(len(rows), 1), 2)
    (args.out / f"judge_summary_{judge.method}.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
