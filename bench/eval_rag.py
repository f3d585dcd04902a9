"""Benchmark: `twin eval rag` (the RAG triad, EM/F1, abstention) on a disfl_qa sample with the default pipeline.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/eval_rag.py --project /tmp/h8/disfl --answerable 40 --unanswerable 20 [--triad llm]

The project must hold the disfl_qa corpus (1,204 passages; `twin ingest disfl_qa_corpus.jsonl`).
The sample: the first N answerable and first M unanswerable questions of disfl_qa_queries.jsonl
(file order), written to the project as sample.jsonl; the run lands in the project's .twin/reports/.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "disfl_qa_queries.jsonl"


def main() -> None:
    from llmtwin.api import Twin
    from llmtwin.evaluation.rag_eval import evaluate_rag

    ap = argparse.ArgumentParser()
    ap.add_argument("--project", type=Path, required=True)
    ap.add_argument("--answerable", type=int, default=40)
    ap.add_argument("--unanswerable", type=int, default=20)
    ap.add_argument("--triad", default="llm")
    ap.add_argument("--run-id", default=None)
    args = ap.parse_args()
    answerable, unanswerable = [], []
    with DATA.open() as f:
        for line in f:
            row = json.loads(line)
            (answerable if row["answer"] is not None else unanswerable).append(row)
    sample = answerable[: args.answerable] + unanswerable[: args.unanswerable]
    path = args.project / f"sample-{args.answerable}-{args.unanswerable}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in sample))
    twin = Twin(args.project)
    done = [0]

    def progress(i: int, n: int) -> None:
        print(f"{i}/{n} load {os.getloadavg()[0]:.1f}", flush=True)

    summary = evaluate_rag(twin, path, triad=args.triad, run_id=args.run_id, progress=progress)
    summary["load_average_end"] = os.getloadavg()
    print(json.dumps({k: v for k, v in summary.items() if k not in ("worst", "distributions")}, indent=2))
    del done


if __name__ == "__main__":
    main()
