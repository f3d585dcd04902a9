"""`twin data build sft`: instruction pairs from the store's chunks, filtered, deduplicated,
decontaminated and split by source chunk; written per the dataset contract with a card.

Resumable: each chunk's LLM reply is appended to `<dataset>/generations.jsonl` as soon as it is
made (keyed by chunk id, generator, prompt version and questions per chunk); a build run again reads
the replies it has and asks the LLM only for the rest. Everything after generation (parsing,
filters, dedup, split) is cheap and redone from the cache each time. A chunk whose generation fails
is counted and left out; the batch goes on.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmtwin.config import DataConfig
from llmtwin.data.card import dumps, split, write_dataset
from llmtwin.data.decontaminate import build_index
from llmtwin.data.filters import answerability_reason, extractive_answer, language_reason, length_reason, stems
from llmtwin.data.generate import (
    EXAMPLE_MARKERS,
    PROMPT_VERSION,
    parse_qa,
    qa_messages,
    voice_instruction,
    voice_text,
)
from llmtwin.data.jsonl import jsonl_files
from llmtwin.errors import TwinError
from llmtwin.feature.hashing import short_id
from llmtwin.types import Chunk, Document

if TYPE_CHECKING:
    from llmtwin.api import Twin

CACHE = "generations.jsonl"
# a generated answer failing for these reasons may be replaced by the best-matching chunk sentence
_REPLACEABLE = ("unanswerable: answer support", "unanswerable: the answer refuses", "answer too long", "trivial")
DROPPED = "filtered.jsonl"


@dataclass
class SftOptions:
    name: str = "sft"
    max_chunks: int | None = None
    per_chunk: int = 3
    voice: bool = True
    qa: bool = True
    val_fraction: float = 0.1
    seed: int = 0
    against: list[str] = field(default_factory=list)  # eval JSONL files/folders (besides data.eval_sets)
    max_minutes: float | None = None  # stop asking the LLM after this long; write what is there (resume later)


def select_chunks(chunks: list[Chunk], max_chunks: int | None, seed: int) -> list[Chunk]:
    """All chunks in (source, index) order, or a seeded sample of `max_chunks` of them in that order."""
    ordered = sorted(chunks, key=lambda c: (c.source, c.index, c.chunk_id))
    if max_chunks is not None and max_chunks < len(ordered):
        picked = set(random.Random(seed).sample(range(len(ordered)), max_chunks))
        ordered = [c for i, c in enumerate(ordered) if i in picked]
    return ordered


def _cache_key(chunk_id: str, generator: str, per_chunk: int) -> str:
    return f"{chunk_id}|{generator}|{PROMPT_VERSION}|{per_chunk}"


def read_cache(path: Path) -> dict[str, dict[str, Any]]:
    """Cached replies by key; a torn last line (an interrupted write) is ignored."""
    out: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
            out[rec["key"]] = rec
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return out


def _sft_record(chunk: Chunk, instruction: str, response: str, kind: str, n: int) -> dict[str, Any]:
    return {
        "prompt": [{"role": "user", "content": instruction}],
        "completion": [{"role": "assistant", "content": response}],
        "id": short_id(chunk.chunk_id, kind, n, instruction),
        "chunk_id": chunk.chunk_id,
        "kind": kind,
        "source": chunk.source,
    }


def build_sft(
    twin: Twin,
    opts: SftOptions,
    progress: Callable[[int, int], None] | None = None,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Build (or resume) the dataset `opts.name`; returns its card. `stop_after` generates at most that
    many new chunks and then stops without writing the splits (a controlled interruption, for tests).
    With `opts.max_minutes`, generation stops after that long and the dataset is written from the replies
    made so far (`chunks_pending` in the card; the same command later generates the rest)."""
    from llmtwin.feature.dedup import Deduplicator
    from llmtwin.training.pseudo_queries import load_chunks

    cfg: DataConfig = twin.config.data
    started = time.perf_counter()
    out_dir = twin.project.state_dir / "datasets" / opts.name
    store = twin.store()
    store_version = store.current_version()
    chunks = select_chunks(load_chunks(store), opts.max_chunks, opts.seed)
    if not chunks:
        raise TwinError("the store has no chunks: run `twin ingest PATH...` first")
    eval_paths = jsonl_files([*cfg.eval_sets, *opts.against], twin.project.root)
    index = build_index(eval_paths, cfg.decontaminate_n) if eval_paths else None

    counts: Counter[str] = Counter()
    filtered: Counter[str] = Counter()
    dropped: list[dict[str, Any]] = []
    candidates: list[dict[str, Any]] = []
    generator = "none"
    gen_seconds = 0.0
    llm_seconds_all = 0.0  # LLM time of every reply used, this run's and cached ones
    if opts.qa and opts.per_chunk > 0:
        llm = twin.llm
        generator = llm.name
        out_dir.mkdir(parents=True, exist_ok=True)
        cache_path = out_dir / CACHE
        cache = read_cache(cache_path)
        todo = [c for c in chunks if _cache_key(c.chunk_id, generator, opts.per_chunk) not in cache]
        counts["chunks_cached"] = len(chunks) - len(todo)
        done = counts["chunks_cached"]
        if progress:
            progress(done, len(chunks))
        with cache_path.open("a", encoding="utf-8") as fh:
            for n_new, chunk in enumerate(todo):
                if stop_after is not None and n_new >= stop_after:
                    return {"interrupted": True, "generated": n_new, "cache": str(cache_path)}
                if opts.max_minutes is not None and time.perf_counter() - started > opts.max_minutes * 60:
                    counts["chunks_pending"] = len(todo) - n_new
                    break
                key = _cache_key(chunk.chunk_id, generator, opts.per_chunk)
                t = time.perf_counter()
                try:
                    reply = llm.complete(
                        qa_messages(chunk, opts.per_chunk), max_new_tokens=cfg.max_new_tokens,
                        temperature=0.0, repetition_penalty=twin.config.llm.repetition_penalty,
                    )
                    rec = {"key": key, "chunk_id": chunk.chunk_id, "reply": reply}
                except Exception as e:  # one failing chunk never stops the batch (not cached: retried next run)
                    counts["llm_errors"] += 1
                    dropped.append({"chunk_id": chunk.chunk_id, "reason": f"llm error: {type(e).__name__}: {e}"})
                    continue
                finally:
                    gen_seconds += time.perf_counter() - t
                rec["seconds"] = round(time.perf_counter() - t, 2)
                fh.write(dumps(rec) + "\n")
                fh.flush()
                cache[key] = rec
                counts["chunks_generated"] += 1
                done += 1
                if progress:
                    progress(done, len(chunks))

        for chunk in chunks:
            rec = cache.get(_cache_key(chunk.chunk_id, generator, opts.per_chunk))
            if rec is None:
                continue
            llm_seconds_all += float(rec.get("seconds", 0.0))
            pairs = parse_qa(rec["reply"])
            if not pairs:
                counts["parse_failures"] += 1
                dropped.append({"chunk_id": chunk.chunk_id, "reason": "parse failure", "reply": rec["reply"][:400]})
                continue
            counts["qa_parsed"] += len(pairs)
            for n, qa in enumerate(pairs[: opts.per_chunk]):
                record = _sft_record(chunk, qa.question, qa.answer, "qa", n)
                reason = (
                    length_reason(qa.question, cfg.min_question_words, cfg.max_question_words, "question")
                    or length_reason(qa.answer, cfg.min_answer_words, cfg.max_answer_words, "answer")
                    or language_reason(qa.question + "\n" + qa.answer, cfg.language)
                    or answerability_reason(qa.question, qa.answer, chunk.text, cfg.min_support)
                )
                leaked = (stems(qa.question + " " + qa.answer) & EXAMPLE_MARKERS) - stems(chunk.text)
                if leaked:
                    _drop(f"example leak: {', '.join(sorted(leaked))} from the worked example", record, filtered, dropped)
                    continue
                if reason and cfg.extractive_answers and reason.startswith(_REPLACEABLE):
                    sentence = extractive_answer(qa.question, chunk.text)
                    if sentence is not None and not (
                        length_reason(sentence, cfg.min_answer_words, cfg.max_answer_words, "answer")
                        or language_reason(qa.question + "\n" + sentence, cfg.language)
                        or answerability_reason(qa.question, sentence, chunk.text, cfg.min_support)
                    ):
                        _drop(reason + " (replaced by an extractive answer)", record, None, dropped)
                        record = _sft_record(chunk, qa.question, sentence, "qa", n)
                        record["answer_source"] = "extractive"
                        counts["qa_extractive"] += 1
                        candidates.append(record)
                        continue
                if reason:
                    _drop(reason, record, filtered, dropped)
                else:
                    record["answer_source"] = "generated"
                    candidates.append(record)

    if opts.voice:
        for chunk in chunks:
            response = voice_text(chunk)
            record = _sft_record(chunk, voice_instruction(chunk), response, "voice", 0)
            counts["voice_made"] += 1
            reason = length_reason(response, cfg.min_voice_words, cfg.max_voice_words, "voice text") or language_reason(
                response, cfg.language
            )
            if reason:
                _drop(reason, record, filtered, dropped)
            else:
                candidates.append(record)

    # exact (normalised question/instruction + response) and MinHash near-duplicates; first kept
    dedup = Deduplicator(cfg.minhash_threshold, twin.config.ingest.minhash_perm, twin.config.ingest.shingle_words)
    seen_questions: set[str] = set()
    kept: list[dict[str, Any]] = []
    for r in candidates:
        question = " ".join(r["prompt"][-1]["content"].lower().split())
        if r["kind"] == "qa" and (r["chunk_id"], question) in seen_questions:
            _drop("duplicate: same question for the chunk", r, filtered, dropped)
            continue
        text = r["prompt"][-1]["content"] + "\n" + r["completion"][0]["content"]
        dup = dedup.check(Document(r["id"], r["chunk_id"], text, "jsonl"))
        if dup is not None:
            _drop(f"duplicate ({dup.kind}, {dup.similarity:.2f}) of {dup.duplicate_of}", r, filtered, dropped)
            continue
        seen_questions.add((r["chunk_id"], question))
        kept.append(r)

    contaminated = []
    if index is not None:
        clean = []
        for r in kept:
            hit = index.match(r, r["id"], cfg.decontaminate_threshold, id=r["id"])
            if hit is None:
                clean.append(r)
            else:
                contaminated.append(hit.to_dict())
                _drop(f"contaminated: {hit.overlap:.2f} overlap with {hit.eval_where}", r, filtered, dropped)
        kept = clean

    train, validation = split(kept, "chunk_id", opts.val_fraction, opts.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / DROPPED).open("w", encoding="utf-8") as fh:
        for d in dropped:
            fh.write(dumps(d) + "\n")
    card = {
        "name": opts.name,
        "kind": "sft",
        "store_version": store_version,
        "generator": generator,
        "prompt_version": PROMPT_VERSION if generator != "none" else None,
        "counts": {
            "chunks": len(chunks),
            **{k: counts[k] for k in ("chunks_generated", "chunks_cached", "chunks_pending", "llm_errors",
                                      "parse_failures", "qa_parsed", "qa_extractive", "voice_made")},
            "candidates": len(candidates),
            "kept": len(kept),
            "by_kind": dict(Counter(r["kind"] for r in kept)),
            "filtered": dict(sorted(filtered.items())),
        },
        "filters": {
            "language": cfg.language,
            "question_words": [cfg.min_question_words, cfg.max_question_words],
            "answer_words": [cfg.min_answer_words, cfg.max_answer_words],
            "voice_words": [cfg.min_voice_words, cfg.max_voice_words],
            "min_support": cfg.min_support,
            "extractive_answers": cfg.extractive_answers,
            "minhash_threshold": cfg.minhash_threshold,
            "decontaminate": {"n": cfg.decontaminate_n, "threshold": cfg.decontaminate_threshold,
                              "eval_sets": [str(p) for p in eval_paths],
                              "eval_examples": len(index) if index is not None else 0},
        },
        "contaminated": contaminated,
        "split": {"by": "chunk_id", "val_fraction": opts.val_fraction, "seed": opts.seed},
        "options": {"per_chunk": opts.per_chunk, "voice": opts.voice, "qa": opts.qa, "max_chunks": opts.max_chunks},
        "seconds": {"generate": round(gen_seconds, 1), "total": round(time.perf_counter() - started, 1),
                    "llm_all_replies": round(llm_seconds_all, 1)},
    }
    return write_dataset(out_dir, train, validation, card)


def _drop(reason: str, record: dict[str, Any], filtered: Counter[str] | None, dropped: list[dict[str, Any]]) -> None:
    """Log a dropped record; count it (unless `filtered` is None) under its reason's family (the text
    before ':' or ' (')."""
    family = reason.split(":")[0].split(" (")[0].strip()
    if family.endswith(("too short", "too long")):
        family = "length"
    if filtered is not None:
        filtered[family] += 1
    dropped.append({"id": record["id"], "chunk_id": record.get("chunk_id"), "kind": record.get("kind"),
                    "reason": reason, "prompt": record["prompt"][-1]["content"][:200],
                    "completion": record["completion"][0]["content"][:200]})
