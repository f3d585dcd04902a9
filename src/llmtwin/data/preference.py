"""Preference pairs (TRL conversational: prompt, chosen, rejected) from four kinds of input JSONL.

- rankings:    {"prompt", "completions": [best, ..., worst]}  → all k·(k−1)/2 (better, worse) pairs;
               with "scores": [..] (higher is better, any order) the completions are ranked by score and
               pairs of equal score are skipped as ties.
- thumbs:      {"prompt", "completion", "thumb": "up"|"down"} → grouped by prompt, each up × each down.
- corrections: {"prompt", "original", "corrected"}          → chosen = corrected, rejected = original.
- reward:      {"prompt", "context"?}                        → N completions sampled from the configured
               LLM, scored by a reward function (rewards.py); best vs worst, all-equal groups skipped.

A prompt is a string (one user message) or a list of chat messages; an optional "system" string is put
first. A completion is a string or a list of assistant messages. A bad line (not JSON, a missing or
mistyped field) is reported as file:line and skipped; the rest goes on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from llmtwin.data.jsonl import BadLine, read_jsonl
from llmtwin.feature.hashing import short_id

Kind = Literal["rankings", "thumbs", "corrections", "reward"]
KINDS: tuple[str, ...] = ("rankings", "thumbs", "corrections", "reward")
Messages = list[dict[str, str]]
_UP = {"up", "+1", "1", "true", "yes", "good", "👍"}
_DOWN = {"down", "-1", "0", "false", "no", "bad", "👎"}


class RecordError(ValueError):
    """A record that cannot be used; the message names the field."""


@dataclass
class PreferenceStats:
    records: int = 0
    pairs: int = 0
    ties: int = 0  # pairs skipped: equal score (rankings with scores, reward)
    identical: int = 0  # pairs skipped: chosen text == rejected text
    unpaired_prompts: int = 0  # thumbs: a prompt with only ups or only downs
    samples: int = 0  # reward: completions generated
    bad: list[BadLine] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "records": self.records, "pairs": self.pairs, "ties": self.ties, "identical": self.identical,
            "unpaired_prompts": self.unpaired_prompts, "samples": self.samples, "bad_lines": len(self.bad),
        }


def prompt_messages(record: dict[str, Any]) -> Messages:
    """The record's prompt as chat messages (system first if given); RecordError if unusable."""
    if "prompt" not in record:
        raise RecordError("missing field 'prompt'")
    p = record["prompt"]
    if isinstance(p, str):
        if not p.strip():
            raise RecordError("field 'prompt' is empty")
        msgs = [{"role": "user", "content": p}]
    elif isinstance(p, list) and p:
        msgs = []
        for i, m in enumerate(p):
            if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                raise RecordError(f"prompt[{i}]: expected {{'role': str, 'content': str}}")
            msgs.append({"role": m["role"], "content": m["content"]})
        if msgs[-1]["role"] != "user":
            raise RecordError("prompt: the last message must be the user's")
    else:
        raise RecordError("field 'prompt': expected a string or a non-empty list of messages")
    system = record.get("system")
    if system is not None:
        if not isinstance(system, str):
            raise RecordError("field 'system': expected a string")
        if msgs[0]["role"] != "system":
            msgs = [{"role": "system", "content": system}, *msgs]
    return msgs


def completion_text(value: Any, name: str) -> str:
    """A completion given as a string or as assistant messages, as text."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in value):
        return "\n".join(m["content"] for m in value)
    raise RecordError(f"field '{name}': expected a string or a list of assistant messages")


def _key(msgs: Messages) -> str:
    return "\x1e".join(f"{m['role']}\x1f{m['content']}" for m in msgs)


def make_pair(prompt: Messages, chosen: str, rejected: str, source: str, where: str, **meta: Any) -> dict[str, Any]:
    return {
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "id": short_id(_key(prompt), chosen, rejected),
        "source": source,
        "origin": where,
        **meta,
    }


def ranking_pairs(prompt: Messages, completions: list[str], scores: list[float] | None, where: str,
                  stats: PreferenceStats, source: str = "ranking") -> list[dict[str, Any]]:
    """All (better, worse) pairs of a ranked list: k·(k−1)/2 of them, best-first order (pairs of the
    best with each worse one first). With scores, completions are ranked by score (stable) and
    equal-score pairs are skipped as ties."""
    order = list(range(len(completions)))
    if scores is not None:
        order.sort(key=lambda i: -scores[i])
    out = []
    for a in range(len(order)):
        for b in range(a + 1, len(order)):
            i, j = order[a], order[b]
            if scores is not None and scores[i] == scores[j]:
                stats.ties += 1
                continue
            if completions[i].strip() == completions[j].strip():
                stats.identical += 1
                continue
            meta = {"score_chosen": scores[i], "score_rejected": scores[j]} if scores is not None else {}
            out.append(make_pair(prompt, completions[i], completions[j], source, where, **meta))
    return out


def _rankings(record: dict[str, Any], where: str, stats: PreferenceStats) -> list[dict[str, Any]]:
    prompt = prompt_messages(record)
    comps = record.get("completions")
    if not isinstance(comps, list) or len(comps) < 2:
        raise RecordError("field 'completions': expected a list of two completions or more (best first)")
    texts = [completion_text(c, f"completions[{i}]") for i, c in enumerate(comps)]
    scores = record.get("scores")
    if scores is not None:
        if not (isinstance(scores, list) and len(scores) == len(texts)
                and all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in scores)):
            raise RecordError("field 'scores': expected one number per completion")
        scores = [float(s) for s in scores]
    return ranking_pairs(prompt, texts, scores, where, stats)


def _thumb(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    key = str(value).strip().lower()
    if key in _UP:
        return True
    if key in _DOWN:
        return False
    raise RecordError(f"field 'thumb': expected 'up' or 'down', got {value!r}")


def thumbs_pairs(records: list[tuple[str, dict[str, Any]]], stats: PreferenceStats) -> list[dict[str, Any]]:
    """Group by prompt (first-seen order); each up × each down (ups and downs in file order)."""
    groups: dict[str, tuple[Messages, list[tuple[str, str]], list[tuple[str, str]]]] = {}
    for where, record in records:
        try:
            prompt = prompt_messages(record)
            if "completion" not in record:
                raise RecordError("missing field 'completion'")
            text = completion_text(record["completion"], "completion")
            if "thumb" not in record:
                raise RecordError("missing field 'thumb'")
            up = _thumb(record["thumb"])
        except RecordError as e:
            path, _, line = where.rpartition(":")
            stats.bad.append(BadLine(path, int(line), str(e)))
            continue
        stats.records += 1
        group = groups.setdefault(_key(prompt), (prompt, [], []))
        (group[1] if up else group[2]).append((where, text))
    out = []
    for prompt, ups, downs in groups.values():
        if not ups or not downs:
            stats.unpaired_prompts += 1
            continue
        for where_up, good in ups:
            for where_down, bad in downs:
                if good.strip() == bad.strip():
                    stats.identical += 1
                    continue
                out.append(make_pair(prompt, good, bad, "thumbs", f"{where_up}+{where_down.rpartition(':')[2]}"))
    return out


def _corrections(record: dict[str, Any], where: str, stats: PreferenceStats) -> list[dict[str, Any]]:
    prompt = prompt_messages(record)
    for name in ("original", "corrected"):
        if name not in record:
            raise RecordError(f"missing field '{name}'")
    original = completion_text(record["original"], "original")
    corrected = completion_text(record["corrected"], "corrected")
    if original.strip() == corrected.strip():
        stats.identical += 1
        return []
    return [make_pair(prompt, corrected, original, "correction", where)]


def reward_pairs(
    record: dict[str, Any], where: str, stats: PreferenceStats, sample: Callable[[Messages], str],
    reward: Callable[[str, str, dict[str, Any]], float], n: int,
) -> list[dict[str, Any]]:
    """Sample `n` completions, score each; the best vs the worst (none when all scores are equal)."""
    prompt = prompt_messages(record)
    try:
        texts = [sample(prompt) for _ in range(n)]
    except Exception as e:  # an LLM error on one prompt must not stop the batch
        raise RecordError(f"sampling failed: {e}") from e
    stats.samples += len(texts)
    question = prompt[-1]["content"]
    try:
        scores = [float(reward(question, t, record)) for t in texts]
    except RecordError:
        raise
    except Exception as e:  # a user's reward function failing on one record
        raise RecordError(f"reward function failed: {type(e).__name__}: {e}") from e
    best = max(range(n), key=lambda i: scores[i])
    worst = min(range(n), key=lambda i: scores[i])
    if scores[best] == scores[worst]:
        stats.ties += 1
        return []
    if texts[best].strip() == texts[worst].strip():
        stats.identical += 1
        return []
    return [make_pair(prompt, texts[best], texts[worst], "reward", where,
                      score_chosen=scores[best], score_rejected=scores[worst])]


def read_pairs(
    kind: str,
    paths: list[Path],
    stats: PreferenceStats,
    *,
    sample: Callable[[Messages], str] | None = None,
    reward: Callable[[str, str, dict[str, Any]], float] | None = None,
    n: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Every pair from the files of one kind; bad lines land in `stats.bad`."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}")
    lines = [(f"{p}:{line}", obj) for p in paths for line, obj in read_jsonl(p, stats.bad)]
    if kind == "thumbs":
        out = thumbs_pairs(lines, stats)
        stats.bad.sort(key=lambda b: (b.path, b.line))
        return out
    out = []
    for i, (where, record) in enumerate(lines):
        try:
            if kind == "rankings":
                pairs = _rankings(record, where, stats)
            elif kind == "corrections":
                pairs = _corrections(record, where, stats)
            else:
                assert sample is not None and reward is not None
                pairs = reward_pairs(record, where, stats, sample, reward, n)
        except RecordError as e:
            path, _, line = where.rpartition(":")
            stats.bad.append(BadLine(path, int(line), str(e)))
            continue
        stats.records += 1
        out.extend(pairs)
        if progress:
            progress(i + 1, len(lines))
    stats.bad.sort(key=lambda b: (b.path, b.line))
    return out


def build_preference(
    kind: str,
    paths: list[Path],
    out_dir: Path,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    eval_paths: list[Path] | None = None,
    n: int = 8,
    threshold: float = 0.5,
    sample: Callable[[Messages], str] | None = None,
    reward: Callable[[str, str, dict[str, Any]], float] | None = None,
    reward_name: str | None = None,
    samples: int = 4,
    generator: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, Any], PreferenceStats]:
    """Read, pair, drop exact duplicate pairs, decontaminate, split by prompt, write; (card, stats)."""
    from llmtwin.data.card import split, write_dataset
    from llmtwin.data.decontaminate import build_index, decontaminate

    stats = PreferenceStats()
    pairs = read_pairs(kind, paths, stats, sample=sample, reward=reward, n=samples, progress=progress)
    seen: set[str] = set()
    unique = []
    for p in pairs:
        if p["id"] not in seen:
            seen.add(p["id"])
            unique.append(p)
    duplicates = len(pairs) - len(unique)
    contaminated = []
    if eval_paths:
        index = build_index(eval_paths, n)
        unique, found = decontaminate(unique, index, threshold, where="pair")
        contaminated = [c.to_dict() for c in found]
    for p in unique:
        p["prompt_key"] = short_id(_key(p["prompt"]))
    train, validation = split(unique, "prompt_key", val_fraction, seed)
    for p in unique:
        del p["prompt_key"]
    stats.pairs = len(unique)
    card = {
        "name": out_dir.name,
        "kind": "preference",
        "source": kind,
        "inputs": [str(p) for p in paths],
        "store_version": None,
        "generator": generator,
        "counts": {**stats.to_dict(), "duplicate_pairs": duplicates, "contaminated": len(contaminated)},
        "filters": {"reward": reward_name, "samples": samples if kind == "reward" else None,
                    "decontaminate": {"n": n, "threshold": threshold, "eval_sets": [str(p) for p in eval_paths or []]}},
        "bad_lines": [b.to_dict() for b in stats.bad],
        "contaminated": contaminated,
        "split": {"by": "prompt", "val_fraction": val_fraction, "seed": seed},
    }
    return write_dataset(out_dir, train, validation, card), stats
