"""Ablation of the advanced-retrieval stages on disfl_qa (../shared/data): each technique alone on
top of hybrid, then combinations. nDCG@10, R@1, R@5, MRR@10 of the gold passage, p50/p95 latency of
the whole search path per query (query embedding included, one query at a time).

    .venv/bin/python bench/retrieval_ablation.py [--project DIR] [--queries 1000] [--configs a,b,...] [--out F]

The LLM configurations (rewrite, decompose, multi_query, hyde, hyde_fuse, step_back, llm_rerank_*)
call the configured LLM once or more per question: run them on a small --queries (the same prefix
of the fixed order as their hybrid baseline) and, since results are keyed `config@N`, in their own
--out file when another run writes the default one at the same time.

Evaluation only: the questions are read from ../shared/data and never trained on; `twin tune`
reads the project's chunks only. The project is ingested from disfl_qa_corpus.jsonl if it has no
store yet. Results are merged into --out per configuration (re-run one config without the others).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # busy machine: spinning OpenMP threads cost 20x (BENCHMARKS.md)

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"

OFF = {"rerank": "off", "adapter": "off", "sentences": False}
CONFIGS: dict[str, dict] = {  # retrieval.* overrides, each on top of plain hybrid
    "hybrid": {**OFF},  # the default fusion: min-max score fusion, equal weights
    "hybrid_rrf": {**OFF, "fusion": "rrf"},
    "hybrid_zscore": {**OFF, "fusion": "zscore"},
    # best-sentence dense scores (needs --sentence-vectors: the store's sentences embedded once)
    "sentences": {**OFF, "sentences": True},
    "zscore+sentences": {**OFF, "fusion": "zscore", "sentences": True},
    "dense_sentences": {**OFF, "mode": "dense", "sentences": True},
    # queries embedded by the project's latest distilled query encoder (`twin tune query-encoder`),
    # whether its own check passed or not
    "sentences+student": {**OFF, "sentences": True, "query_encoder": "on"},
    "zscore+sentences+student": {**OFF, "fusion": "zscore", "sentences": True, "query_encoder": "on"},
    "dense_sentences+student": {**OFF, "mode": "dense", "sentences": True, "query_encoder": "on"},
    "dense+student": {**OFF, "mode": "dense", "query_encoder": "on"},
    "bm25": {**OFF, "mode": "bm25"},
    "dense": {**OFF, "mode": "dense"},
    "merge": {**OFF, "merge": True},
    "mmr": {**OFF, "mmr": True},
    "adapter": {"rerank": "off", "adapter": "auto"},
    "dense_adapter": {"rerank": "off", "adapter": "auto", "mode": "dense"},
    "rerank": {"rerank": "on", "adapter": "off"},
    "rerank_top10": {"rerank": "on", "adapter": "off", "rerank_top_n": 10},
    "rerank_fused": {"rerank": "on", "adapter": "off", "rerank_weight": 0.5},
    "zscore+rerank_fused": {"rerank": "on", "adapter": "off", "rerank_weight": 0.5, "fusion": "zscore"},
    "zscore+adapter": {"rerank": "off", "adapter": "auto", "fusion": "zscore"},
    "zscore+adapter+rerank_fused": {"rerank": "on", "adapter": "auto", "rerank_weight": 0.5, "fusion": "zscore"},
    "merge+rerank": {"rerank": "on", "adapter": "off", "merge": True},
    "adapter+rerank": {"rerank": "on", "adapter": "auto"},
    # before retrieval, by rule (retrieval/disfluency.py: no model)
    "repair": {**OFF, "repair": True},
    "zscore+repair": {**OFF, "repair": True, "fusion": "zscore"},
    "dense_repair": {**OFF, "repair": True, "mode": "dense"},
    "bm25_repair": {**OFF, "repair": True, "mode": "bm25"},
    # before retrieval, with the configured LLM (the packaged SmolLM2-135M unless twin.yaml says otherwise)
    "rewrite": {**OFF, "transforms": ["rewrite"]},
    "decompose": {**OFF, "transforms": ["decompose"]},
    "multi_query": {**OFF, "transforms": ["multi_query"]},
    "hyde": {**OFF, "transforms": ["hyde"]},
    "hyde_fuse": {**OFF, "transforms": ["hyde"], "hyde_mode": "fuse"},
    "step_back": {**OFF, "transforms": ["step_back"]},
    # after retrieval, with the configured LLM
    "llm_rerank_point": {**OFF, "llm_rerank": "pointwise", "llm_rerank_top_n": 5},
    "llm_rerank_list": {**OFF, "llm_rerank": "listwise", "llm_rerank_top_n": 5},
    "rerank+llm_list": {"rerank": "on", "adapter": "off", "llm_rerank": "listwise", "llm_rerank_top_n": 5},
    "adapter+rerank+rewrite": {"rerank": "on", "adapter": "auto", "transforms": ["rewrite"]},
}
LLM_CONFIGS = {n for n, c in CONFIGS.items() if c.get("transforms") or c.get("llm_rerank")}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--project", type=Path, default=ROOT / "bench" / "results" / "ablation")
    parser.add_argument("--queries", type=int, default=1000,
                        help="the first N of one fixed random order (seed 0): 200 ⊂ 1000; 8000 = all")
    parser.add_argument("--configs", default="hybrid,merge,mmr,rerank")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "retrieval_ablation.json")
    parser.add_argument("--sentence-vectors", action="store_true",
                        help="embed the sentences of chunks that have none yet (ingest.sentence_vectors) before searching")
    args = parser.parse_args()

    from llmtwin import Twin
    from llmtwin.errors import TwinError
    from llmtwin.evaluation.retrieval import dedupe, mrr_at_k, ndcg_at_k, recall_at_k

    queries = [json.loads(line) for line in (DATA / "disfl_qa_queries.jsonl").open()]
    if args.queries < len(queries):  # one order, so that a smaller sample is a prefix of a larger one
        queries = random.Random(0).sample(queries, len(queries))[: args.queries]
    twin = Twin(args.project)
    twin.config.ingest.sentence_vectors = args.sentence_vectors
    if args.sentence_vectors or not (twin.project.store_dir / "meta.json").exists():
        twin.ingest([DATA / "disfl_qa_corpus.jsonl"])  # unchanged passages are skipped
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    twin.search("warm up", retrieval={"rerank": "auto"})
    if LLM_CONFIGS & set(args.configs.split(",")):
        twin.llm.complete([{"role": "user", "content": "Hello"}], max_new_tokens=2)  # load it before timing

    for name in args.configs.split(","):
        overrides = {"query_encoder": "off", **CONFIGS[name]}  # the student only where a config asks
        mode = overrides.pop("mode", None)
        rows: dict[str, list[float]] = {"R@1": [], "R@5": [], "MRR@10": [], "nDCG@10": []}
        latency: list[float] = []
        stages: dict[str, list[float]] = {}
        pipeline = None
        fallbacks: dict[str, int] = {}
        for i, q in enumerate(queries):
            t = time.perf_counter()
            try:
                result = twin.search_explain(q["question"], k=10, mode=mode, retrieval=overrides)
                hits, pipeline = result.hits, result.pipeline
                for record in result.transforms:
                    if record.get("fallback"):
                        fallbacks[record["name"]] = fallbacks.get(record["name"], 0) + 1
                for stage, seconds in result.timings.items():
                    stages.setdefault(stage, []).append(seconds)
            except TwinError:  # one question of the set is empty: a miss
                hits = []
            latency.append(time.perf_counter() - t)
            ranked = dedupe([h.chunk.doc_id for h in hits])[:10]
            qrels = {q["passage_id"]: 1}
            rows["R@1"].append(recall_at_k(ranked, qrels, 1))
            rows["R@5"].append(recall_at_k(ranked, qrels, 5))
            rows["MRR@10"].append(mrr_at_k(ranked, qrels, 10))
            rows["nDCG@10"].append(ndcg_at_k(ranked, qrels, 10))
            if (i + 1) % 200 == 0:
                print(f"  {name}: {i + 1}/{len(queries)} nDCG@10 so far {statistics.fmean(rows['nDCG@10']):.4f}",
                      file=sys.stderr, flush=True)
        key = f"{name}@{len(queries)}"
        results[key] = {
            "config": name,
            "overrides": CONFIGS[name],
            "pipeline": pipeline,
            "queries": len(queries),
            **{m: round(statistics.fmean(v), 4) for m, v in rows.items()},
            "p50_ms": round(percentile(latency, 0.5) * 1000, 1),
            "p95_ms": round(percentile(latency, 0.95) * 1000, 1),
            "stage_p50_ms": {s: round(percentile(v, 0.5) * 1000, 1) for s, v in stages.items()},
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "load_avg_1m": round(os.getloadavg()[0], 2),
            "fallbacks": fallbacks,  # LLM outputs judged junk: the question alone was searched
        }
        print(key, json.dumps(results[key]), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    print_table(results)


def print_table(results: dict) -> None:
    print("\n| config | queries | nDCG@10 | R@1 | R@5 | MRR@10 | p50 ms | p95 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['queries']} | {r['nDCG@10']:.4f} | {r['R@1']:.4f} | {r['R@5']:.4f} | "
              f"{r['MRR@10']:.4f} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} |")


if __name__ == "__main__":
    main()
