"""`twin data build sft|preference` and `twin data decontaminate`: training datasets (docs/datasets.md).

Importable without heavy imports: the store and the LLM load inside the commands.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer

data_app = typer.Typer(help="Training datasets: SFT pairs from the store, preference pairs, decontamination.",
                       no_args_is_help=True)
build_app = typer.Typer(help="Build a dataset under .twin/datasets/<name>/ (train.jsonl, validation.jsonl, card.json).",
                        no_args_is_help=True)
data_app.add_typer(build_app, name="build")


def _twin():
    from llmtwin.cli import _twin as twin

    return twin()


def _progress(label: str):
    from llmtwin.cli import _progress as progress

    return progress(label)


def _print_card(card: dict, out_dir: Path) -> None:
    c = card["counts"]
    print(f"dataset {card['name']} ({card['kind']}): {c['train']} train, {c['validation']} validation "
          f"→ {out_dir}")
    print(f"  content hash {card['content_hash']}")


@build_app.command("sft")
def build_sft_cmd(
    name: str = typer.Option("sft", "--name", help="Dataset name: .twin/datasets/<name>/."),
    max_chunks: Optional[int] = typer.Option(None, "--max-chunks", help="Use a seeded sample of this many chunks."),
    per_chunk: Optional[int] = typer.Option(None, "--per-chunk", help="data.per_chunk: questions asked per chunk (0: voice pairs only)."),
    voice: bool = typer.Option(True, "--voice/--no-voice", help="Also make voice pairs (the chunk's own text as the answer)."),
    val_fraction: Optional[float] = typer.Option(None, "--val-fraction", help="data.val_fraction: share of chunks for validation."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Sampling and split seed (default: the config's seed)."),
    against: list[Path] = typer.Option([], "--against", help="Eval JSONL file or folder to decontaminate against (repeatable; adds to data.eval_sets)."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", help="Stop asking the LLM after this long and write what is there (run again to go on)."),
    as_json: bool = typer.Option(False, "--json", help="Print the card as JSON."),
) -> None:
    """Instruction pairs from the store's chunks: LLM questions with grounded answers, plus voice pairs.

    Filtered (length, language, answerability), deduplicated (exact + MinHash), decontaminated, split by
    source chunk. Interrupted? Run the same command again: cached LLM replies are reused.
    """
    from llmtwin.data.sft import SftOptions, build_sft

    twin = _twin()
    cfg = twin.config.data
    opts = SftOptions(
        name=name, max_chunks=max_chunks, per_chunk=cfg.per_chunk if per_chunk is None else per_chunk,
        voice=voice, qa=(cfg.per_chunk if per_chunk is None else per_chunk) > 0,
        val_fraction=cfg.val_fraction if val_fraction is None else val_fraction,
        seed=twin.config.seed if seed is None else seed, against=[str(p) for p in against], max_minutes=max_minutes,
    )
    if not 0.0 <= opts.val_fraction < 1.0:
        from llmtwin.errors import TwinError

        raise TwinError(f"--val-fraction {opts.val_fraction}: expected a number in [0, 1)")
    with _progress("Generating") as progress:
        card = build_sft(twin, opts, progress)
    out_dir = twin.project.state_dir / "datasets" / name
    if as_json:
        print(json.dumps(card, indent=2, ensure_ascii=False))
        return
    c = card["counts"]
    _print_card(card, out_dir)
    pending = f", {c['chunks_pending']} NOT generated yet: run again to go on" if c["chunks_pending"] else ""
    print(f"  {c['chunks']} chunks ({c['chunks_generated']} generated, {c['chunks_cached']} from cache{pending}, "
          f"{c['llm_errors']} LLM errors, {c['parse_failures']} parse failures); {c['qa_parsed']} QA parsed "
          f"({c['qa_extractive']} given extractive answers), "
          f"{c['voice_made']} voice; kept {c['kept']} of {c['candidates']} candidates {c['by_kind']}")
    if c["filtered"]:
        print("  filtered: " + ", ".join(f"{k} {v}" for k, v in c["filtered"].items()) + f" (details: {out_dir / 'filtered.jsonl'})")


@build_app.command("preference")
def build_preference_cmd(
    files: list[Path] = typer.Argument(..., help="Input JSONL file(s) of the --from kind."),
    from_: str = typer.Option(..., "--from", help="rankings, thumbs, corrections or reward."),
    name: str = typer.Option("preference", "--name", help="Dataset name: .twin/datasets/<name>/."),
    reward: str = typer.Option("support", "--reward", help="--from reward: length, brevity, support, regex:<p>, contains:<t> or module:function."),
    samples: Optional[int] = typer.Option(None, "--samples", help="data.reward_samples: completions sampled per prompt (--from reward)."),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="data.reward_temperature (--from reward)."),
    val_fraction: Optional[float] = typer.Option(None, "--val-fraction", help="data.val_fraction: share of prompts for validation."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Split seed (default: the config's seed)."),
    against: list[Path] = typer.Option([], "--against", help="Eval JSONL file or folder to decontaminate against (adds to data.eval_sets)."),
    as_json: bool = typer.Option(False, "--json", help="Print the card as JSON."),
) -> None:
    """Preference pairs (prompt, chosen, rejected) from rankings, thumbs, corrections or a reward function."""
    from llmtwin.data.jsonl import jsonl_files
    from llmtwin.data.preference import KINDS, build_preference
    from llmtwin.errors import TwinError

    if from_ not in KINDS:
        raise TwinError(f"--from {from_!r}: expected one of {', '.join(KINDS)}")
    twin = _twin()
    cfg = twin.config.data
    for f in files:
        if not f.is_file():
            raise TwinError(f"{f}: no such file")
    sample = reward_fn = generator = None
    n = cfg.reward_samples if samples is None else samples
    if from_ == "reward":
        from llmtwin.data.rewards import get_reward

        if n < 2:
            raise TwinError(f"--samples {n}: need at least 2 completions per prompt")
        reward_fn = get_reward(reward)
        temp = cfg.reward_temperature if temperature is None else temperature
        if temp <= 0:
            raise TwinError(f"--temperature {temp}: sampling needs a temperature > 0")
        llm = twin.llm
        generator = llm.name
        max_new = twin.config.llm.max_new_tokens
        penalty = twin.config.llm.repetition_penalty

        def sample(messages):
            return llm.complete(messages, max_new_tokens=max_new, temperature=temp, repetition_penalty=penalty)

    out_dir = twin.project.state_dir / "datasets" / name
    eval_paths = jsonl_files([*cfg.eval_sets, *map(str, against)], twin.project.root)
    with _progress("Pairing") as progress:
        card, stats = build_preference(
            from_, files, out_dir, val_fraction=cfg.val_fraction if val_fraction is None else val_fraction,
            seed=twin.config.seed if seed is None else seed, eval_paths=eval_paths,
            n=cfg.decontaminate_n, threshold=cfg.decontaminate_threshold, sample=sample, reward=reward_fn,
            reward_name=reward if from_ == "reward" else None, samples=n, generator=generator, progress=progress,
        )
    if as_json:
        print(json.dumps(card, indent=2, ensure_ascii=False))
        return
    _print_card(card, out_dir)
    c = card["counts"]
    print(f"  {c['records']} records → {c['pairs']} pairs; skipped: {c['ties']} ties, {c['identical']} identical, "
          f"{c['unpaired_prompts']} unpaired prompts, {c['duplicate_pairs']} duplicate pairs, "
          f"{c['contaminated']} contaminated, {c['bad_lines']} bad lines")
    for b in stats.bad[:20]:
        print(f"  bad line {b}")
    if len(stats.bad) > 20:
        print(f"  … {len(stats.bad) - 20} more bad lines (card.json lists them all)")


@data_app.command("decontaminate")
def decontaminate_cmd(
    train: Path = typer.Argument(..., help="Training JSONL to check."),
    against: list[Path] = typer.Option(..., "--against", help="Eval JSONL file or folder (every *.jsonl); repeatable."),
    n: int = typer.Option(8, "--n", help="Word n-gram size."),
    threshold: float = typer.Option(0.5, "--threshold", help="Overlap ratio (shared n-grams / the smaller side's) that removes an example; 0: any shared n-gram."),
    fields: list[str] = typer.Option([], "--field", help="Read only these top-level fields (both sides; default: every string value)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the clean examples here."),
    report: Optional[Path] = typer.Option(None, "--report", help="Write the JSON report here."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Report (and with --out remove) training examples whose n-gram overlap with an eval set passes --threshold."""
    from llmtwin.data.card import write_jsonl
    from llmtwin.data.decontaminate import build_index, decontaminate_file
    from llmtwin.data.jsonl import jsonl_files
    from llmtwin.errors import TwinError

    if n < 1:
        raise TwinError(f"--n {n}: expected a positive integer")
    if not 0.0 <= threshold <= 1.0:
        raise TwinError(f"--threshold {threshold}: expected a number in [0, 1]")
    started = time.perf_counter()
    index = build_index(jsonl_files(list(against)), n, fields or None)
    bad = list(index.bad)
    kept, found, total = decontaminate_file(train, index, threshold, bad)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(out, kept)
    result = {
        "train": str(train), "eval_sets": index.files, "eval_examples": len(index), "n": n, "threshold": threshold,
        "fields": fields or "all string values", "examples": total, "contaminated": len(found), "kept": len(kept),
        "out": str(out) if out else None, "seconds": round(time.perf_counter() - started, 3),
        "bad_lines": [b.to_dict() for b in bad], "found": [f.to_dict() for f in found],
    }
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if as_json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return
    print(f"{result['contaminated']} of {total} examples overlap the eval sets ({len(index)} eval examples, "
          f"{n}-grams, threshold {threshold}); {len(kept)} kept" + (f" → {out}" if out else " (use --out to write them)"))
    for f in found[:20]:
        print(f"  {f.where}: {f.overlap:.2f} ({f.shared_ngrams} n-grams) with {f.eval_where}: {f.eval_preview[:80]}")
    if len(found) > 20:
        print(f"  … {len(found) - 20} more" + (f" (see {report})" if report else " (use --report FILE for all)"))
    for b in bad[:10]:
        print(f"  bad line {b}")
