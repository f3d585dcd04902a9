"""Summarisation with the configured LLM, three ways of prompting, scored by ROUGE against references.

Data: JSONL with {"id", "document", "summary"} (the xsum shape). The first `n` usable rows are
summarised; the few-shot examples are the LAST `shots` usable rows of the file, so they never overlap
the evaluated articles (a file with fewer than n + shots rows is refused).

Prompts:
- `zero`: an instruction to write a one-sentence summary;
- `few`: the same instruction after `shots` worked examples (article → reference summary) given as
  earlier chat turns, each article cut to `shot_words` words so that the prompt fits the context;
- `cot`: asks to list the key facts first, then write "Summary:" and the one-sentence summary; the
  text after the last "Summary:" is scored (without it: the last sentence, and the row is counted
  as a parse failure).
Articles are cut to `doc_words` words (stated in the results). ROUGE-1/2/L F with bootstrap CIs
(evaluation/text.py) and paired tests between every two prompts on the same articles.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmtwin.errors import TwinError
from llmtwin.evaluation.text import rouge, split_sentences

PROMPTS = ("zero", "few", "cot")
INSTRUCTION = "Summarise the article in one sentence."
SYSTEM = "You are a news editor who writes short, factual one-sentence summaries."
COT_INSTRUCTION = (
    "First list the three most important facts of the article as short notes. "
    "Then write 'Summary:' followed by a one-sentence summary of the article."
)
_SUMMARY = re.compile(r"summary(?:\s+is)?\s*:\s*", re.IGNORECASE)  # "Summary:", "The summary is:"


def _cut(text: str, words: int) -> str:
    parts = text.split()
    return " ".join(parts[:words]) + (" …" if len(parts) > words else "")


def load_articles(path: Path) -> tuple[list[dict[str, str]], list[dict[str, Any]]]:
    if not path.is_file():
        raise TwinError(f"{path}: no such file")
    rows, failures = [], []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict) or not isinstance(row.get("document"), str) or not isinstance(row.get("summary"), str):
                    raise ValueError("expected an object with string 'document' and 'summary'")
                if not row["document"].strip():
                    raise ValueError("empty 'document'")
            except ValueError as e:
                failures.append({"line": line_no, "error": str(e)})
                continue
            rows.append({"id": str(row.get("id", f"line{line_no}")), "document": row["document"], "summary": row["summary"]})
    return rows, failures


def build_messages(prompt: str, document: str, shots: list[dict[str, str]], doc_words: int, shot_words: int) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": SYSTEM}]
    if prompt == "few":
        for shot in shots:
            messages.append({"role": "user", "content": f"Article:\n{_cut(shot['document'], shot_words)}\n\n{INSTRUCTION}"})
            messages.append({"role": "assistant", "content": shot["summary"].strip()})
    instruction = COT_INSTRUCTION if prompt == "cot" else INSTRUCTION
    messages.append({"role": "user", "content": f"Article:\n{_cut(document, doc_words)}\n\n{instruction}"})
    return messages


def extract_summary(prompt: str, reply: str) -> tuple[str, bool]:
    """The summary to score and whether it was parsed as asked (cot: after 'Summary:')."""
    text = reply.strip()
    if prompt != "cot":
        sentences = split_sentences(text)
        return (sentences[0] if sentences else ""), True
    parts = _SUMMARY.split(text)
    if len(parts) > 1 and parts[-1].strip():
        last = parts[-1].strip().strip('"“”*').strip()
        sentences = split_sentences(last)
        return (sentences[0] if sentences else last), True
    sentences = split_sentences(text)
    return (sentences[-1] if sentences else ""), False


def compare_prompts(
    llm,
    data: Path,
    *,
    n: int = 30,
    prompts: tuple[str, ...] = PROMPTS,
    shots: int = 2,
    doc_words: int = 350,
    shot_words: int = 150,
    resamples: int = 1000,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Summaries for the first n articles with every prompt; ROUGE with CIs; paired tests."""
    from llmtwin.evaluation.stats import paired_tests

    unknown = [p for p in prompts if p not in PROMPTS]
    if unknown:
        raise TwinError(f"--prompts: unknown prompt(s) {', '.join(unknown)}; expected some of {', '.join(PROMPTS)}")
    rows, failures = load_articles(Path(data))
    if len(rows) < n + shots:
        raise TwinError(f"{data}: {len(rows)} usable rows; need n + shots = {n + shots} (few-shot examples are taken from the end)")
    evaluated, examples = rows[:n], rows[len(rows) - shots:]
    results: dict[str, Any] = {}
    per_prompt_scores: dict[str, dict[str, list[float]]] = {}
    outputs: dict[str, list[dict[str, Any]]] = {}
    done, total = 0, n * len(prompts)
    for prompt in prompts:
        started = time.perf_counter()
        predictions, parse_failures, outs = [], 0, []
        for row in evaluated:
            messages = build_messages(prompt, row["document"], examples, doc_words, shot_words)
            t = time.perf_counter()
            reply = llm.complete(messages, max_new_tokens=160 if prompt == "cot" else 60, temperature=0.0,
                                 repetition_penalty=1.15)
            summary, parsed = extract_summary(prompt, reply)
            parse_failures += not parsed
            predictions.append(summary)
            outs.append({"id": row["id"], "summary": summary, "reply": reply, "parsed": parsed,
                         "seconds": round(time.perf_counter() - t, 3)})
            done += 1
            if progress:
                progress(done, total)
        scores = rouge(predictions, [r["summary"] for r in evaluated], types=("rouge1", "rouge2", "rougeL"),
                       resamples=resamples, seed=seed)
        per_prompt_scores[prompt] = {t: [ex[t]["fmeasure"] for ex in scores["per_example"]] for t in ("rouge1", "rouge2", "rougeL")}
        for o, ex in zip(outs, scores["per_example"]):
            o["rouge"] = {t: round(ex[t]["fmeasure"], 4) for t in ex}
        outputs[prompt] = outs
        results[prompt] = {
            "rouge": {t: iv.to_dict() for t, iv in scores["fmeasure"].items()},
            "parse_failures": parse_failures,
            "mean_words": round(sum(len(p.split()) for p in predictions) / max(len(predictions), 1), 2),
            "seconds": round(time.perf_counter() - started, 2),
        }
    comparisons = {}
    for i, a in enumerate(prompts):
        for b in prompts[i + 1:]:
            tests = paired_tests(per_prompt_scores[a], per_prompt_scores[b], resamples=max(resamples, 1000), seed=seed)
            comparisons[f"{b} - {a}"] = {t: v.to_dict() for t, v in tests.items()}
    return {
        "kind": "summarize",
        "data": str(Path(data).resolve()),
        "model": llm.name,
        "n": n,
        "few_shot_examples": [r["id"] for r in examples],
        "few_shot_note": f"few-shot examples are the last {shots} rows of the file, disjoint from the {n} evaluated rows",
        "doc_words": doc_words,
        "shot_words": shot_words,
        "failed_lines": len(failures),
        "prompts": results,
        "paired": comparisons,
        "outputs": outputs,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
