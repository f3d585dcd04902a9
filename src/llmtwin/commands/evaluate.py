"""`twin eval judge|rag|generate|summarize`: LLM judges with measured trust, the RAG triad, test sets
from the user's documents, and summarisation prompts compared. Registered on cli.py's `eval` group.

Module top stays light (typer only): the library is imported inside each command.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer


def _fmt(v) -> str:
    return "–" if v is None or v != v else f"{v:.3f}"


def register(eval_app: typer.Typer) -> None:
    @eval_app.command("judge")
    def eval_judge(
        pairs: Path = typer.Option(..., "--pairs", help='JSONL of {"prompt", "chosen", "rejected"} (e.g. hhh_preferences.jsonl).'),
        limit: int | None = typer.Option(None, "--limit", help="Judge only the first N pairs."),
        scoring: str | None = typer.Option(None, "--scoring", help="evaluation.judge_scoring: auto, logprobs or text."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    ) -> None:
        """Measure the judge on labelled pairs, both orders each: accuracy, position consistency, ties.

        Cached as .twin/reports/judge-*.json; `twin eval rag` shows it next to the judge's scores."""
        from llmtwin.cli import _progress, _twin
        from llmtwin.errors import TwinError
        from llmtwin.evaluation.judge import (
            build_judge,
            judge_agreement,
            load_pairs,
            save_agreement,
        )
        from llmtwin.evaluation.runner import reports_dir

        twin = _twin({"evaluation.judge_scoring": scoring})
        rows_in, failures = load_pairs(pairs)
        rows_in = rows_in[:limit] if limit else rows_in
        if not rows_in:
            raise TwinError(f"{pairs}: no usable pair" + (f" ({failures[0]['error']} on line {failures[0]['line']})" if failures else ""))
        judge = build_judge(twin.config)
        rows: list[dict] = []
        with _progress("Judging") as progress:
            agreement = judge_agreement(judge, rows_in, dataset=str(pairs.resolve()), progress=progress, rows_out=rows)
        path = save_agreement(agreement, reports_dir(twin), rows)
        out = agreement.to_dict() | {"failed_lines": failures[:100], "file": str(path)}
        if as_json:
            print(json.dumps(out, indent=2))
            return
        a = agreement
        print(f"judge {judge.name} on {a.pairs} pairs ({len(failures)} unusable lines), both orders each, {a.seconds:.0f}s")
        print(f"  pairwise accuracy {a.accuracy:.3f} (ties as half {a.accuracy_ties_half:.3f}, order-averaged "
              f"{a.accuracy_debiased:.3f}) · position consistency "
              f"{a.position_consistency:.3f} · tie rate {a.tie_rate:.3f} · picks position A {_fmt(a.first_position_rate)} · "
              f"parse failures {a.parse_failures}")
        for cat, c in a.by_category.items():
            print(f"  {cat:<10} {c['pairs']:>4} pairs  accuracy {c['accuracy']:.3f}  consistency {c['position_consistency']:.3f}")
        print(f"saved: {path}")

    @eval_app.command("generate")
    def eval_generate(
        n: int = typer.Option(50, "--n", help="Question/answer pairs wanted."),
        out: Path | None = typer.Option(None, "--out", help="JSONL to write (default .twin/testsets/generated-<time>.jsonl)."),
        max_tries: int | None = typer.Option(None, "--max-tries", help="Chunks tried at most (default 3 × n)."),
        as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    ) -> None:
        """Write a QA test set from the store's chunks (LLM-written, filtered, deduplicated, gold chunk ids).

        Read it with `twin eval rag FILE` or `twin eval rag --generated`."""
        from llmtwin.cli import _progress, _twin
        from llmtwin.evaluation.testset import generate_testset

        twin = _twin()
        path = out or twin.project.state_dir / "testsets" / f"generated-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
        with _progress("Generating") as progress:
            items, report = generate_testset(twin, n, out=path, max_tries=max_tries, progress=progress)
        if as_json:
            print(json.dumps(report.to_dict(), indent=2))
            return
        rejected = ", ".join(f"{k} {v}" for k, v in sorted(report.rejected.items())) or "none"
        print(f"{report.kept} pairs kept of {report.tried} chunks tried (wanted {n}); rejected: {rejected}; {report.seconds:.0f}s")
        for item in items[:3]:
            print(f"  {item.id}: {item.question}  →  {item.answer}  [{item.chunk_ids[0]}]")
        print(f"written: {path}")

    @eval_app.command("rag")
    def eval_rag(
        dataset: Path | None = typer.Argument(None, help='JSONL: {"id", "question", "answer" (null: unanswerable), "relevant" | "passage_id"}.'),
        generated: bool = typer.Option(False, "--generated", help="Use the newest `twin eval generate` test set."),
        limit: int | None = typer.Option(None, "--limit", help="Evaluate only the first N questions."),
        triad: str | None = typer.Option(None, "--triad", help="evaluation.triad_method: llm (judge) or fallback (no LLM)."),
        run_id: str | None = typer.Option(None, "--run-id", help="Name of the run (default: time-stamped)."),
        as_json: bool = typer.Option(False, "--json", help="Print results.json."),
    ) -> None:
        """Run the RAG pipeline on a QA set: EM/F1, abstention, context hits, the triad; JSON + HTML report.

        The triad: context relevance, groundedness (claims checked against the context), answer relevance."""
        from llmtwin.cli import _progress, _twin
        from llmtwin.errors import TwinError
        from llmtwin.evaluation.rag_eval import evaluate_rag

        twin = _twin({"evaluation.triad_method": triad})
        if generated:
            sets = sorted((twin.project.state_dir / "testsets").glob("generated-*.jsonl"))
            if not sets:
                raise TwinError("no generated test set: run `twin eval generate` first")
            dataset = sets[-1]
        if dataset is None:
            raise TwinError("give a DATASET.jsonl or --generated")
        with _progress("Asking") as progress:
            s = evaluate_rag(twin, dataset, limit=limit, run_id=run_id, progress=progress)
        if as_json:
            print(json.dumps({k: v for k, v in s.items() if k not in ("worst", "distributions")}, indent=2, ensure_ascii=False))
            return
        ds = s["dataset"]
        print(f"{ds['questions']} questions ({ds['answerable']} answerable, {ds['unanswerable']} unanswerable, "
              f"{ds['failed_lines']} unusable lines); {s['abstained']} abstentions, {s['errors']} errors; triad by {s['triad_method']}")
        a = s.get("judge_agreement")
        if s["triad_method"] == "llm":
            trust = (f"accuracy {a['accuracy']:.3f}, position consistency {a['position_consistency']:.3f} on {a['pairs']} labelled pairs"
                     if a else "agreement with labelled pairs NOT measured (`twin eval judge --pairs FILE`)")
            print(f"judge {s['judge'].get('model')} ({s['judge'].get('method')}): {trust}")
        for name, m in s["metrics"].items():
            print(f"  {name:<18} {m['value']:.4f} [{m['low']:.3f}, {m['high']:.3f}]  n={m['n']}")
        for name, v in s["timings"]["per_question_ms"].items():
            print(f"  time {name:<10} p50 {v['p50']:.0f} ms  p95 {v['p95']:.0f} ms")
        print(f"report: {Path(s['dir']) / 'report.html'}")

    @eval_app.command("summarize")
    def eval_summarize(
        data: Path = typer.Option(..., "--data", help='JSONL of {"id", "document", "summary"} (e.g. xsum.jsonl).'),
        n: int = typer.Option(30, "--n", help="Articles summarised (the first N rows)."),
        prompts: str = typer.Option("zero,few,cot", "--prompts", help="Some of zero, few, cot (comma-separated)."),
        shots: int = typer.Option(2, "--shots", help="Few-shot examples, taken from the END of the file (disjoint)."),
        out: Path | None = typer.Option(None, "--out", help="JSON to write (default .twin/reports/summarize-<time>.json)."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    ) -> None:
        """Summaries with the configured LLM; ROUGE-1/2/L with CIs per prompt and paired tests between prompts."""
        from llmtwin.cli import _progress, _twin
        from llmtwin.evaluation.runner import reports_dir
        from llmtwin.evaluation.summarize import compare_prompts

        twin = _twin()
        names = tuple(p.strip() for p in prompts.split(",") if p.strip())
        with _progress("Summarising") as progress:
            result = compare_prompts(twin.llm, data, n=n, prompts=names, shots=shots,
                                     resamples=twin.config.evaluation.resamples, seed=twin.config.seed, progress=progress)
        path = out or reports_dir(twin) / f"summarize-{time.strftime('%Y%m%d-%H%M%S')}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")
        if as_json:
            print(json.dumps({k: v for k, v in result.items() if k != "outputs"}, indent=2))
            return
        print(f"{n} articles, model {result['model']}; {result['few_shot_note']}")
        print(f"  {'prompt':<6} {'ROUGE-1':<22} {'ROUGE-2':<22} {'ROUGE-L':<22} words  parse-fail")
        for p, r in result["prompts"].items():
            cells = "".join(f"{r['rouge'][t]['value']:.4f} [{r['rouge'][t]['low']:.3f},{r['rouge'][t]['high']:.3f}] "
                            for t in ("rouge1", "rouge2", "rougeL"))
            print(f"  {p:<6} {cells} {r['mean_words']:>5}  {r['parse_failures']}")
        for pair, tests in result["paired"].items():
            print(f"  {pair}: " + "  ".join(f"{t} {v['delta']:+.4f} (p={v['p_value']:.3f})" for t, v in tests.items()))
        print(f"saved: {path}")
