"""Foundation benchmark on disfl_qa (../shared/data): retrieval quality per mode, ingest throughput
against the raw encoder, search latency per stage, and answers (EM/F1, abstention).

    .venv/bin/python bench/retrieval.py [--queries 8000] [--answers 40] [--unanswerable 20]

Evaluation only: the data is read from ../shared/data and never copied or trained on.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
REFERENCE = {  # ../shared/data/README.md, all 8,000 questions, top 10
    "bm25": {"R@1": 0.815, "R@5": 0.932, "R@10": 0.953, "MRR@10": 0.866, "nDCG@10": 0.888},
    "dense": {"R@1": 0.682, "R@5": 0.896, "R@10": 0.939, "MRR@10": 0.773, "nDCG@10": 0.814},
    "hybrid-rrf": {"R@1": 0.806, "R@5": 0.953, "R@10": 0.973, "MRR@10": 0.869, "nDCG@10": 0.895},
}
# name → (mode, retrieval overrides); "hybrid" is the default fusion (min-max score fusion, equal weights)
CONFIGS = {
    "bm25": ("bm25", None),
    "dense": ("dense", None),
    "hybrid": ("hybrid", None),
    "hybrid-zscore": ("hybrid", {"fusion": "zscore"}),
    "hybrid-rrf": ("hybrid", {"fusion": "rrf"}),
}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queries", type=int, default=8000)
    parser.add_argument("--latency-queries", type=int, default=300)
    parser.add_argument("--answers", type=int, default=40)
    parser.add_argument("--unanswerable", type=int, default=20)
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / "results" / "disfl")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "retrieval.json")
    args = parser.parse_args()

    from llmtwin import Twin
    from llmtwin.errors import TwinError
    from llmtwin.evaluation.qa import exact_match, token_f1
    from llmtwin.evaluation.retrieval import dedupe, mrr_at_k, ndcg_at_k, recall_at_k

    corpus_path = DATA / "disfl_qa_corpus.jsonl"
    corpus = [json.loads(line) for line in corpus_path.open()]
    queries = [json.loads(line) for line in (DATA / "disfl_qa_queries.jsonl").open()][: args.queries]
    results: dict = {"date": time.strftime("%Y-%m-%d"), "command": " ".join(["python"] + sys.argv)}

    if args.workdir.exists():
        shutil.rmtree(args.workdir)
    twin = Twin(args.workdir)
    embedder = twin.embedder

    # Raw encoder throughput on the same passages (the ceiling for ingest).
    from sentence_transformers import SentenceTransformer

    from llmtwin.models.packaged import minilm_dir

    raw = SentenceTransformer(str(minilm_dir()), device="cpu")
    texts = [c["text"] for c in corpus]
    t = time.perf_counter()
    raw.encode(texts, batch_size=32, normalize_embeddings=True, show_progress_bar=False)
    raw_s = time.perf_counter() - t
    del raw

    t = time.perf_counter()
    report = twin.ingest([corpus_path])
    ingest_s = time.perf_counter() - t
    results["ingest"] = {
        "passages": len(corpus),
        "chunks": twin.store().count_chunks(),
        "duplicates": len(report.duplicates),
        "failed": len(report.failed),
        "seconds": round(ingest_s, 2),
        "passages_per_s": round(len(corpus) / ingest_s, 2),
        "raw_encoder_seconds": round(raw_s, 2),
        "raw_encoder_passages_per_s": round(len(corpus) / raw_s, 2),
        "ratio": round(raw_s / ingest_s, 3),
    }
    t = time.perf_counter()
    again = twin.ingest([corpus_path])
    results["ingest"]["reingest_unchanged_seconds"] = round(time.perf_counter() - t, 3)
    assert again.chunks == 0, "re-ingest of an unchanged file wrote chunks"
    print("ingest", results["ingest"], flush=True)

    # Quality: all questions, query vectors embedded in one batch (same model, same normalisation).
    vectors = embedder.embed_passages([q["question"] for q in queries]) if not embedder_has_prefix(twin) else None
    quality = {}
    for name, (mode, fusion) in CONFIGS.items():
        rows = {"R@1": [], "R@5": [], "R@10": [], "MRR@10": [], "nDCG@10": []}
        for i, q in enumerate(queries):
            vector = vectors[i] if vectors is not None and mode != "bm25" else None
            try:
                hits = twin.search(q["question"], k=30, mode=mode, query_vector=vector, retrieval=fusion)
            except TwinError:  # one question of the set is empty: it counts as a miss
                hits = []
            ranked = dedupe([h.chunk.doc_id for h in hits])[:10]
            qrels = {q["passage_id"]: 1}
            rows["R@1"].append(recall_at_k(ranked, qrels, 1))
            rows["R@5"].append(recall_at_k(ranked, qrels, 5))
            rows["R@10"].append(recall_at_k(ranked, qrels, 10))
            rows["MRR@10"].append(mrr_at_k(ranked, qrels, 10))
            rows["nDCG@10"].append(ndcg_at_k(ranked, qrels, 10))
        quality[name] = {metric: round(statistics.fmean(v), 4) for metric, v in rows.items()}
        print(name, quality[name], "reference", REFERENCE.get(name), flush=True)
    results["quality"] = quality

    # Latency through the whole path (query embedding included), per stage.
    latency = {}
    sample = random.Random(0).sample(queries, min(args.latency_queries, len(queries)))
    twin.search("warm up")
    for mode in ("bm25", "dense", "hybrid"):
        stages: dict[str, list[float]] = {}
        totals = []
        for q in sample:
            t = time.perf_counter()
            res = twin.search_explain(q["question"], k=10, mode=mode)
            totals.append(time.perf_counter() - t)
            for name, seconds in res.timings.items():
                stages.setdefault(name, []).append(seconds)
        latency[mode] = {
            "total_ms": {"p50": round(percentile(totals, 0.5) * 1000, 2), "p95": round(percentile(totals, 0.95) * 1000, 2)},
            **{
                f"{name}_ms": {"p50": round(percentile(v, 0.5) * 1000, 2), "p95": round(percentile(v, 0.95) * 1000, 2)}
                for name, v in stages.items()
            },
        }
        print(mode, "latency", latency[mode], flush=True)
    results["latency"] = latency

    # Answers with the packaged LLM: a fixed sample of answerable and unanswerable questions.
    rng = random.Random(1)
    answerable = rng.sample([q for q in queries if q["answer"]], min(args.answers, len(queries)))
    unanswerable = rng.sample([q for q in queries if not q["answer"]], min(args.unanswerable, len(queries)))
    em, f1, contains, times = [], [], [], []
    for q in answerable:
        ans = twin.ask(q["question"])
        em.append(exact_match(ans.answer, q["answer"]))
        f1.append(token_f1(ans.answer, q["answer"]))
        contains.append(float(q["answer"].lower() in ans.answer.lower()))
        times.append(ans.timings["total"])
    abstained = [float(twin.ask(q["question"]).abstained) for q in unanswerable]
    results["answers"] = {
        "llm": twin.llm.name,
        "answerable": len(answerable),
        "exact_match": round(statistics.fmean(em), 4) if em else None,
        "token_f1": round(statistics.fmean(f1), 4) if f1 else None,
        "answer_contained": round(statistics.fmean(contains), 4) if contains else None,
        "unanswerable": len(unanswerable),
        "abstention_rate": round(statistics.fmean(abstained), 4) if abstained else None,
        "seconds_per_answer_p50": round(percentile(times, 0.5), 2) if times else None,
    }
    print("answers", results["answers"], flush=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print_markdown(results)


def embedder_has_prefix(twin) -> bool:
    return bool(twin.config.embedder.query_prefix or twin.config.embedder.passage_prefix)


def print_markdown(results: dict) -> None:
    print("\n| mode | R@1 | R@5 | R@10 | MRR@10 | nDCG@10 | reference nDCG@10 |")
    print("|---|---|---|---|---|---|---|")
    for mode, row in results["quality"].items():
        print(f"| {mode} | " + " | ".join(f"{row[m]:.3f}" for m in ("R@1", "R@5", "R@10", "MRR@10", "nDCG@10"))
              + (f" | {REFERENCE[mode]['nDCG@10']:.3f} |" if mode in REFERENCE else " | |"))


if __name__ == "__main__":
    main()
