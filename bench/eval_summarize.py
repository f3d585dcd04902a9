"""Benchmark: zero-shot vs few-shot vs chain-of-thought summaries on xsum, ROUGE with CIs and paired tests.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/eval_summarize.py --n 30 [--threads T] [--out FILE]

Same code as `twin eval summarize` (evaluation/summarize.py), with the packaged LLM and no project.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "xsum.jsonl"


def main() -> None:
    from llmtwin.config import LLMConfig
    from llmtwin.evaluation.summarize import compare_prompts
    from llmtwin.models.get import get_llm

    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path("/tmp/h8_bench/summarize.json"))
    args = ap.parse_args()
    llm = get_llm(LLMConfig(threads=args.threads))

    def progress(i: int, n: int) -> None:
        print(f"{i}/{n} load {os.getloadavg()[0]:.1f}", flush=True)

    result = compare_prompts(llm, DATA, n=args.n, progress=progress)
    result["load_average_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "outputs"}, indent=2))


if __name__ == "__main__":
    main()
