"""Answers on disfl_qa: does the answer hold the gold span, and does it abstain when it should?

    .venv/bin/python bench/answers.py [--answerable 1000 --unanswerable 500] [--tune] [--generative 60]

The 1,204 disfl_qa passages are ingested once into --project (a scratch folder). A fixed sample
(seed 0) of answerable and unanswerable questions is asked through `Twin.ask` in the extractive
mode: with the default selector, then (--tune) with one trained by `twin tune answers` on
pseudo-questions of the passages' own sentences (the questions and gold answers of the set are
never used to train or tune anything). --generative N asks the first N answerable and N/2
unanswerable questions of the same sample through the LLM path (the previous release's answers).

Reported per mode: the answer contains the gold span (normalised as SQuAD does), token F1 and
exact match against it, abstention on unanswerable questions and wrong abstention on answerable
ones at the default threshold, and over thresholds 0-1 (an answer abstains iff its answerability
is under the threshold: the whole curve comes from one run), p50/p95 seconds per answer (warm,
in-process), and the seconds of one cold `twin ask` from the shell. Results:
bench/results/answers.json and a markdown summary on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
sys.path.insert(0, str(HERE.parent / "src"))

from llmtwin import Twin  # noqa: E402
from llmtwin.evaluation.qa import exact_match, normalize_answer, token_f1  # noqa: E402

TWIN = str(Path(sys.executable).parent / "twin")


def build(project: Path) -> None:
    if (project / ".twin" / "store").exists():
        return
    corpus = project / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    with open(corpus / "disfl.jsonl", "w", encoding="utf-8") as out:
        for line in open(DATA / "disfl_qa_corpus.jsonl", encoding="utf-8"):
            r = json.loads(line)
            out.write(json.dumps({"id": r["id"], "text": r["text"]}) + "\n")
    subprocess.run([TWIN, "init", str(project)], check=True)
    subprocess.run([TWIN, "--project", str(project), "ingest", str(corpus)], check=True)


def sample(answerable: int, unanswerable: int) -> tuple[list[dict], list[dict]]:
    queries = [json.loads(line) for line in open(DATA / "disfl_qa_queries.jsonl", encoding="utf-8")]
    rng = random.Random(0)
    yes = rng.sample([q for q in queries if q["answer"] and q["question"].strip()], answerable)
    no = rng.sample([q for q in queries if not q["answer"] and q["question"].strip()], unanswerable)
    return yes, no


def strip_citations(text: str) -> str:
    import re

    return re.sub(r"\s*\[\d+(?:,\s*\d+)*\]", "", text).strip()


def run(twin: Twin, yes: list[dict], no: list[dict]) -> dict:
    """Ask every question with the threshold at 0 (the best sentence is always shown), then apply
    thresholds afterwards: an answer abstains iff its answerability is under the threshold."""
    threshold = twin.config.generation.answer_threshold
    extractive = twin.answer_mode() == "extractive"
    if extractive:
        twin.project.config.generation.answer_threshold = 0.0
    rows = []
    try:
        for q in yes + no:
            t = time.perf_counter()
            a = twin.ask(q["question"])
            seconds = time.perf_counter() - t
            text = strip_citations(a.answer)
            gold = q["answer"]
            shown = not a.abstained
            rows.append({
                "id": q["id"], "answerable": gold is not None, "seconds": seconds,
                "answerability": a.answerability if extractive else (0.0 if a.abstained else 1.0),
                "contains": float(gold is not None and shown and normalize_answer(gold) in normalize_answer(text)),
                "f1": token_f1(text, gold) if gold is not None and shown else 0.0,
                "em": exact_match(text, gold) if gold is not None and shown else 0.0,
            })
    finally:
        twin.project.config.generation.answer_threshold = threshold
    return summarise(rows, threshold if extractive else 0.5)


def summarise(rows: list[dict], threshold: float) -> dict:
    ans = [r for r in rows if r["answerable"]]
    una = [r for r in rows if not r["answerable"]]
    secs = sorted(r["seconds"] for r in rows)

    def at(t: float) -> dict:
        shown = [r for r in ans if r["answerability"] >= t]
        return {
            "threshold": round(t, 3),
            "contains": round(sum(r["contains"] for r in shown) / len(ans), 4),
            "f1": round(sum(r["f1"] for r in shown) / len(ans), 4),
            "em": round(sum(r["em"] for r in shown) / len(ans), 4),
            "abstain_unanswerable": round(sum(r["answerability"] < t for r in una) / max(len(una), 1), 4),
            "abstain_answerable": round(sum(r["answerability"] < t for r in ans) / len(ans), 4),
        }

    default = at(threshold)
    default.update({
        "p50_s": round(secs[len(secs) // 2], 3),
        "p95_s": round(secs[min(len(secs) - 1, int(len(secs) * 0.95))], 3),
        "answerable": len(ans), "unanswerable": len(una),
    })
    return {"at_default": default, "curve": [at(t / 20) for t in range(21)]}


def cold_ask(project: Path, question: str) -> float:
    t = time.perf_counter()
    subprocess.run([TWIN, "--project", str(project), "ask", question], check=True, capture_output=True)
    return round(time.perf_counter() - t, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--project", type=Path, default=Path("/tmp/llmtwin-answers"))
    ap.add_argument("--answerable", type=int, default=1000)
    ap.add_argument("--unanswerable", type=int, default=500)
    ap.add_argument("--tune", action="store_true", help="also train a selector on the passages and run again")
    ap.add_argument("--generative", type=int, default=0, help="also ask N answerable + N/2 unanswerable with the LLM")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "answers.json")
    args = ap.parse_args()
    build(args.project)
    yes, no = sample(args.answerable, args.unanswerable)
    results = {"date": time.strftime("%Y-%m-%d %H:%M"), "load_before": os.getloadavg()[0],
               "command": " ".join(sys.argv), "modes": {}}
    from llmtwin.config import GenerationConfig

    current = GenerationConfig()  # `twin init` wrote every setting of its day into twin.yaml: use today's
    twin = Twin(args.project)
    twin.project.config.generation = current.model_copy(update={"mode": "extractive"})
    models = twin.project.state_dir / "models" / "answer-selector"
    if models.exists():
        import shutil

        shutil.rmtree(models)  # the default selector first
    twin.ask("warm up")
    results["cold_ask_s"] = cold_ask(args.project, yes[0]["question"])
    results["modes"]["extractive (default selector)"] = run(twin, yes, no)
    print(json.dumps({k: v["at_default"] for k, v in results["modes"].items()}, indent=1), flush=True)
    if args.tune:
        t = time.perf_counter()
        proc = subprocess.run([TWIN, "--project", str(args.project), "tune", "answers", "--json"],
                              check=True, capture_output=True, text=True)
        card = json.loads(proc.stdout)
        results["tune"] = {"card": card, "seconds": round(time.perf_counter() - t, 1)}
        tuned = Twin(args.project)
        tuned.project.config.generation = current.model_copy(update={"mode": "extractive"})
        if card["use"]:
            results["modes"]["extractive (trained selector)"] = run(tuned, yes, no)
        else:  # measured all the same, with its weights forced in
            from llmtwin.generation.extractive import Selector

            trained = Selector.load(Path(card["path"]) / "selector.json")
            tuned.answer_selector = lambda: trained
            results["modes"]["extractive (trained selector, not used by default)"] = run(tuned, yes, no)
    if args.generative:
        gen = Twin(args.project)
        gen.project.config.generation = current.model_copy(update={"mode": "generative"})
        gen.ask("warm up")
        results["modes"]["generative (previous release)"] = run(gen, yes[: args.generative], no[: args.generative // 2])
    results["load_after"] = os.getloadavg()[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print("| mode | contains gold | token F1 | EM | abstains (unanswerable) | abstains (answerable) | p50 s | p95 s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results["modes"].items():
        d = r["at_default"]
        print(f"| {name} | {d['contains']:.3f} | {d['f1']:.3f} | {d['em']:.3f} | {d['abstain_unanswerable']} | "
              f"{d['abstain_answerable']:.3f} | {d['p50_s']} | {d['p95_s']} |")
    print(f"cold `twin ask`: {results['cold_ask_s']} s")


if __name__ == "__main__":
    main()
