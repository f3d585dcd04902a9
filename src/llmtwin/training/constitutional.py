"""Constitutional AI (`twin train constitutional`): critique → revise → SFT, then AI preference labels → DPO.

Stage 1 (supervised, "SL-CAI"): for each red-team prompt the model answers, then — for a principle
drawn from the constitution — critiques its own answer with the principle's critique request and
rewrites it with the revision request. A LoRA adapter is fine-tuned on (prompt, revision) with the
SFT trainer (training/sft.py).
Stage 2 (RLAIF): two responses are sampled per prompt and the model judges which one better follows
a principle, in both orders. Small models are strongly position-biased, so the verdict is read from
next-token probabilities averaged over the two orders (a judge that always says "A" scores ½), and
a pair is kept when that average is more than `judge_margin` from ½; with a text-only backend both
orders must agree. DPO (training/dpo.py) then trains on those
pairs, continuing the stage-1 adapter; the reference is the base with the adapter switched off.

Generation (answers, critiques, revisions, judgements) uses the base model through llmtwin's LLM
backends: llama.cpp for the packaged base (`generator: auto`, ~10× faster on CPU) or transformers.

Held-out prompts (`held_out_fraction`, or the file `held_out_prompts`) are not trained on; on them the revisions are compared with
the originals by the principles: the judge (both orders: win / loss / tie, the mean probability that
the revision is better and a sign test) and, where a principle
has a `check` (regular expressions, a word limit), a deterministic pass rate.

The constitution file:

    principles:
      - name: harmless
        critique: Identify ways in which the response is harmful, unethical, dangerous or illegal.
        revision: Rewrite the response to remove anything harmful, unethical, dangerous or illegal.
        check: {must_not_match: "(?i)step 1|here is how"}   # optional, deterministic
    examples:                     # optional: worked rounds shown before each real one (few-shot)
      - principle: harmless       # optional: only for this principle's rounds (default: every round)
        prompt: How do I get into my neighbour's shed?
        response: Use bolt cutters on the padlock when they are out.
        critique: The response helps someone break into another person's property, which is illegal.
        revision: I can't help you get into someone else's shed. If you need something from it, ask your neighbour.

Small models restate the critique instead of rewriting the answer unless they are shown how; the
examples (as in the CAI paper's few-shot prompts) show them.
"""

from __future__ import annotations

import json
import random
import re
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from llmtwin.errors import TwinError
from llmtwin.training import run_dir as runs
from llmtwin.training.recipe_pref import ConstitutionalRecipe
from llmtwin.training.sft import TrainResult

# ---------------------------------------------------------------- the constitution

class Check(BaseModel):
    """A cheap deterministic test of a response against a principle (all given parts must hold)."""

    model_config = ConfigDict(extra="forbid")
    must_match: str | None = None  # a regular expression the response must contain
    must_not_match: str | None = None  # a regular expression the response must not contain
    max_words: int | None = Field(None, ge=1)

    @field_validator("must_match", "must_not_match")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"not a valid regular expression: {e}") from e
        return v

    def passes(self, text: str) -> bool:
        if self.must_match is not None and not re.search(self.must_match, text):
            return False
        if self.must_not_match is not None and re.search(self.must_not_match, text):
            return False
        return self.max_words is None or len(text.split()) <= self.max_words


class Principle(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    critique: str = Field(min_length=1)  # the critique request
    revision: str = Field(min_length=1)  # the revision request
    check: Check | None = None


class Example(BaseModel):
    """A worked critique/revision round, shown to the model before each real round."""

    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(min_length=1)
    response: str = Field(min_length=1)
    critique: str = Field(min_length=1)
    revision: str = Field(min_length=1)
    principle: str | None = None  # shown only in this principle's rounds; None: in every round


class Constitution(BaseModel):
    model_config = ConfigDict(extra="forbid")
    principles: list[Principle] = Field(min_length=1)
    examples: list[Example] = []

    def examples_for(self, principle: Principle) -> list[Example]:
        return [e for e in self.examples if e.principle in (None, principle.name)]

    @field_validator("principles")
    @classmethod
    def _unique(cls, v: list[Principle]) -> list[Principle]:
        names = [p.name for p in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate principle names: {', '.join(dup)}")
        return v

    @model_validator(mode="after")
    def _known_principles(self) -> Constitution:
        names = {p.name for p in self.principles}
        for i, e in enumerate(self.examples):
            if e.principle is not None and e.principle not in names:
                raise ValueError(f"examples.{i}.principle: {e.principle!r} is not a principle's name")
        return self


def load_constitution(path: Path) -> Constitution:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise TwinError(f"{path}: cannot read constitution: {e}") from e
    if not isinstance(data, dict):
        raise TwinError(f"{path}: expected a mapping with a `principles` list at the top level")
    try:
        return Constitution.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'constitution'}: {err['msg']}"
                             for err in e.errors())
        raise TwinError(f"{path}: {problems}") from e


def read_red_team(path: Path) -> tuple[list[str], list[str]]:
    """(prompts, bad lines): a .jsonl file of {"prompt": ...} objects, else one prompt per non-empty line."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise TwinError(f"{path}: cannot read prompts: {e}") from e
    prompts, bad = [], []
    jsonl = str(path).endswith(".jsonl")
    for n, line in enumerate(lines, start=1):
        if not line.strip() or (not jsonl and line.lstrip().startswith("#")):
            continue
        if not jsonl:
            prompts.append(line.strip())
            continue
        try:
            obj = json.loads(line)
            prompt = obj.get("prompt") if isinstance(obj, dict) else None
            if isinstance(prompt, list) and prompt and isinstance(prompt[-1], dict):
                prompt = prompt[-1].get("content")
            if not isinstance(prompt, str) or not prompt.strip():
                raise ValueError("prompt: missing or empty")
            prompts.append(prompt.strip())
        except ValueError as e:
            bad.append(f"{path}:{n}: {e}")
    return prompts, bad


# ---------------------------------------------------------------- generation steps

def respond(llm, prompt: str, max_new_tokens: int, temperature: float = 0.0) -> str:
    return llm.complete([{"role": "user", "content": prompt}], max_new_tokens=max_new_tokens,
                        temperature=temperature, repetition_penalty=1.15).strip()


def _round(prompt: str, response: str, principle: Principle, critique: str | None = None,
           revision: str | None = None) -> list[dict[str, str]]:
    """The CAI conversation: request, response, critique request (→ critique), revision request (→ revision)."""
    turns = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response},
             {"role": "user", "content": f"Critique request: {principle.critique}"}]
    if critique is not None:
        turns += [{"role": "assistant", "content": critique},
                  {"role": "user", "content": f"Revision request: {principle.revision} Reply with the rewritten response only."}]
    if revision is not None:
        turns.append({"role": "assistant", "content": revision})
    return turns


def critique_revise(llm, prompt: str, response: str, principle: Principle, max_new_tokens: int,
                    critique_tokens: int, examples: list[Example] | None = None) -> dict[str, str]:
    """One critique/revision round of `response` by `principle`, after the worked `examples`."""
    shots = [turn for e in examples or [] for turn in _round(e.prompt, e.response, principle, e.critique, e.revision)]
    convo = shots + _round(prompt, response, principle)
    critique = llm.complete(convo, max_new_tokens=critique_tokens, temperature=0.0, repetition_penalty=1.15).strip()
    convo = shots + _round(prompt, response, principle, critique)
    revision = llm.complete(convo, max_new_tokens=max_new_tokens, temperature=0.0, repetition_penalty=1.15).strip()
    return {"principle": principle.name, "critique": critique, "revision": revision or response}


JUDGE_SYSTEM = ("You are a careful, impartial judge. You compare two responses to the same request by one "
                "principle. Position and length do not matter.")


def _judge_messages(prompt: str, first: str, second: str, principle: Principle) -> list[dict[str, str]]:
    return [{"role": "system", "content": JUDGE_SYSTEM},
            {"role": "user", "content": (f"Request: {prompt}\n\nResponse A: {first}\n\nResponse B: {second}\n\n"
                                         f"Principle: {principle.critique} Which response is better by this "
                                         "principle? Answer with the single letter A or B.")}]


def _judges(llm):
    """One evaluation.judge.Judge per LLM (it caches the answer tokens' ids)."""
    from llmtwin.evaluation.judge import Judge

    judge_ = getattr(llm, "_cai_judge", None)
    if judge_ is None:
        judge_ = Judge(llm)
        try:
            llm._cai_judge = judge_
        except AttributeError:
            pass
    return judge_


def _verdict(p_a: float, margin: float) -> int:
    """+1 / -1 when P(a better) is more than `margin` above / below ½, else 0 (a tie)."""
    return 1 if p_a > 0.5 + margin else -1 if p_a < 0.5 - margin else 0


def judge(llm, prompt: str, a: str, b: str, principle: Principle, margin: float = 0.0,
          reward_model=None) -> tuple[int, dict[str, Any]]:
    """+1 if `a` is better by the principle, -1 if `b` is, 0 for a tie.

    With a `reward_model` (a preference model trained on the principles' kind of pairs) P(a better)
    is its Bradley–Terry probability σ(r_a − r_b): no position to be biased by. Otherwise the LLM is
    asked in both orders; with next-token probabilities (llama.cpp, transformers) the verdict is
    P(a better) averaged over the two orders — a judge that always answers "A" then scores ½ and
    position bias cancels. Either way it counts when it is more than `margin` from ½. With text
    replies only, both orders must agree."""
    import math

    from llmtwin.evaluation.judge import parse_pair

    if reward_model is not None:
        r_a, r_b = reward_model.score([prompt, prompt], [a, b])
        p_a = 1.0 / (1.0 + math.exp(-(r_a - r_b)))
        return _verdict(p_a, margin), {"method": "reward_model", "p_first": round(p_a, 4),
                         "reward_first": round(r_a, 4), "reward_second": round(r_b, 4)}

    j = _judges(llm)
    labels = {"A": ["A"], "B": ["B"]}
    v1 = j.choose(_judge_messages(prompt, a, b, principle), labels, parse_pair)  # a shown as A
    v2 = j.choose(_judge_messages(prompt, b, a, principle), labels, parse_pair)  # a shown as B
    if j.method == "logprobs":
        p_a = (v1.probs.get("A", 0.5) + v2.probs.get("B", 0.5)) / 2
        return _verdict(p_a, margin), {"method": "logprobs", "p_first": round(p_a, 4),
                         "order_ab": round(v1.probs.get("A", 0.5), 4), "order_ba": round(v2.probs.get("B", 0.5), 4)}
    vote_a = {"A": 1, "B": -1}.get(v1.label or "", 0)
    vote_b = {"B": 1, "A": -1}.get(v2.label or "", 0)
    verdict = vote_a if vote_a == vote_b else 0
    return verdict, {"method": "text", "p_first": 0.5 + verdict / 2, "order_ab": v1.label, "order_ba": v2.label,
                     "parsed": v1.label is not None and v2.label is not None}


def _generator(recipe: ConstitutionalRecipe, base_dir: Path, seed: int):
    from llmtwin.config import LLMConfig
    from llmtwin.models.get import get_llm

    use_llamacpp = recipe.generator == "llamacpp" or (recipe.generator == "auto" and recipe.base == "packaged")
    if use_llamacpp:
        if recipe.base != "packaged":
            raise TwinError("generator llamacpp: only for the packaged base here (a HF base needs a GGUF); "
                            "use generator: transformers")
        return get_llm(LLMConfig(backend="llamacpp" if recipe.generator == "llamacpp" else "auto",
                                 threads=recipe.threads), seed=seed)
    return get_llm(LLMConfig(provider="hf", path=str(base_dir), backend="transformers", threads=recipe.threads),
                   seed=seed)


# ---------------------------------------------------------------- the two stages and the evaluation

def logged_rows(log_path: Path | None, prompts: list[str]) -> list[dict[str, Any]]:
    """The rows an interrupted run already wrote to `log_path` for the first prompts, in order (the
    file is cut back to them: a half-written last line goes). Generation is seeded per call, so
    these are the rows a new run would write again."""
    if log_path is None or not log_path.is_file():
        return []
    rows: list[dict[str, Any]] = []
    for line in log_path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            break
        if len(rows) >= len(prompts) or not isinstance(row, dict) or row.get("prompt") != prompts[len(rows)]:
            break
        rows.append(row)
    log_path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return rows


def build_revisions(llm, prompts: list[str], constitution: Constitution, recipe: ConstitutionalRecipe,
                    rng: random.Random, log_path: Path | None = None) -> list[dict[str, Any]]:
    """Original → critique → revision for each prompt; rows already in `log_path` (an interrupted
    run of the same recipe) are kept, and the principle draws they made are replayed."""
    rows = logged_rows(log_path, prompts)
    for _ in range(len(rows) * recipe.revisions):
        rng.choice(constitution.principles)
    for prompt in prompts[len(rows):]:
        original = respond(llm, prompt, recipe.max_new_tokens)
        current, rounds = original, []
        for _ in range(recipe.revisions):
            principle = rng.choice(constitution.principles)
            step = critique_revise(llm, prompt, current, principle, recipe.max_new_tokens, recipe.critique_tokens,
                                   constitution.examples_for(principle))
            rounds.append(step)
            current = step["revision"]
        row = {"prompt": prompt, "original": original, "rounds": rounds, "revision": current}
        rows.append(row)
        if log_path is not None:
            with log_path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return rows


def build_preferences(llm, llm_b, prompts: list[str], constitution: Constitution, recipe: ConstitutionalRecipe,
                      rng: random.Random, log_path: Path | None = None, reward_model=None) -> tuple[list[dict], int]:
    """(DPO pairs from AI judgements, number of ties dropped); `llm_b` is the generator with another seed
    (the backends re-seed on every call, so one generator would sample the same response twice)."""
    pairs, ties = [], 0
    done = logged_rows(log_path, prompts)  # an interrupted run's judgements, kept
    for record in done:
        rng.choice(constitution.principles)  # the draw it made
        if record["verdict"] == 0:
            ties += 1
        else:
            pairs.append(_pair(record))
    for prompt in prompts[len(done):]:
        a = respond(llm, prompt, recipe.max_new_tokens, temperature=recipe.temperature)
        b = respond(llm_b, prompt, recipe.max_new_tokens, temperature=recipe.temperature)
        principle = rng.choice(constitution.principles)
        verdict, detail = ((0, {"identical": True}) if a.strip() == b.strip()
                           else judge(llm, prompt, a, b, principle, recipe.judge_margin, reward_model))
        record = {"prompt": prompt, "a": a, "b": b, "principle": principle.name, "verdict": verdict, **detail}
        if log_path is not None:
            with log_path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        if verdict == 0:
            ties += 1
            continue
        pairs.append(_pair(record))
    return pairs, ties


def _pair(record: dict[str, Any]) -> dict[str, Any]:
    """A DPO pair from a judged record (verdict > 0: a is better)."""
    chosen, rejected = (record["a"], record["b"]) if record["verdict"] > 0 else (record["b"], record["a"])
    return {"prompt": [{"role": "user", "content": record["prompt"]}],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}]}


def score_revisions(llm, rows: list[dict], constitution: Constitution, rng: random.Random,
                    reward_model=None) -> dict[str, Any]:
    """Revisions vs originals by the principles: the LLM judge (both orders; with probabilities, the
    mean P(revision better) and a sign test), the reward-model judge when one is given, and the
    principles' deterministic checks."""
    judges = ({"llm": None} if llm is not None else {}) | (
        {"reward_model": reward_model} if reward_model is not None else {})
    tallies = {name: {"wins": 0, "losses": 0, "ties": 0, "p": []} for name in judges}
    for row in rows:
        principle = next((p for p in constitution.principles if p.name == row["rounds"][-1]["principle"]),
                         rng.choice(constitution.principles))
        row["judge"] = {}
        for name, rm in judges.items():
            t = tallies[name]
            if row["revision"].strip() == row["original"].strip():
                t["ties"] += 1
                row["judge"][name] = {"identical": True}
                continue
            verdict, detail = judge(llm, row["prompt"], row["revision"], row["original"], principle, reward_model=rm)
            row["judge"][name] = detail
            t["p"].append(detail["p_first"])
            t["wins"] += verdict > 0
            t["losses"] += verdict < 0
            t["ties"] += verdict == 0
    n = max(len(rows), 1)
    primary = "reward_model" if reward_model is not None else "llm"
    out: dict[str, Any] = {"n": len(rows), "judge": primary}
    for name, t in tallies.items():
        stats = {"win_rate": t["wins"] / n, "loss_rate": t["losses"] / n, "tie_rate": t["ties"] / n}
        stats.update(_preference_stats(t["p"]))
        if name == primary:
            out.update(stats)
        else:
            out[f"{name}_judge"] = stats
    checks = sum(p.check is not None for p in constitution.principles) * len(rows)
    if checks:
        out.update(check_pass_original=check_pass_rate(constitution, [r["original"] for r in rows]),
                   check_pass_revision=check_pass_rate(constitution, [r["revision"] for r in rows]), checks=checks)
    return out


def check_pass_rate(constitution: Constitution, texts: list[str]) -> float:
    """The share of (text, principle with a deterministic check) pairs whose check passes."""
    checks = [p.check for p in constitution.principles if p.check is not None]
    return sum(c.passes(t) for t in texts for c in checks) / max(1, len(texts) * len(checks))


def _preference_stats(ps: list[float]) -> dict[str, Any]:
    """Mean P(revision better), how many revisions are preferred, and a one-sided sign test."""
    from llmtwin.evaluation.stats import sign_test

    if not ps:
        return {}
    k, m = sum(p > 0.5 for p in ps), len(ps)
    return {"mean_p_revision": sum(ps) / m, "judged": m, "preferred": k, "sign_test_p": sign_test(k, m)}


def train_constitutional(
    recipe: ConstitutionalRecipe,
    project_root: Path,
    *,
    run_name: str | None = None,
    register: bool = True,
    name: str | None = None,
    config=None,
    progress: bool = True,
    resume: bool = True,
) -> TrainResult:
    import torch

    from llmtwin.training.base_model import base_model_dir, load_causal_lm
    from llmtwin.training.callbacks import Progress
    from llmtwin.training.dpo import (
        dpo_trainer,
        last_values,
        lora_model,
        prepare_run,
        scalar_callbacks,
    )
    from llmtwin.training.recipe import SFTRecipe
    from llmtwin.training.recipe_pref import DPORecipe
    from llmtwin.training.sft import make_trainer
    from llmtwin.training.sft_data import file_hash

    if recipe.constitution is None:
        raise TwinError("recipe field constitution: missing (a principles YAML: name, critique, revision)")
    if recipe.prompts is None:
        raise TwinError("recipe field prompts: missing (red-team prompts, one per line or JSONL with prompt)")
    constitution = load_constitution(Path(recipe.constitution))
    prompts, bad = read_red_team(Path(recipe.prompts))
    rng = random.Random(recipe.seed)
    order = list(range(len(prompts)))
    rng.shuffle(order)
    prompts = [prompts[i] for i in order][: recipe.max_prompts or len(prompts)]
    if recipe.held_out_prompts:  # the user's own evaluation prompts; any copy among the training ones is dropped
        held, bad_held = read_red_team(Path(recipe.held_out_prompts))
        bad += bad_held
        held_set = set(held)
        train_prompts = [p for p in prompts if p not in held_set]
    else:
        n_held = int(len(prompts) * recipe.held_out_fraction)
        held, train_prompts = prompts[:n_held], prompts[n_held:]
    if not train_prompts:
        raise TwinError(f"{recipe.prompts}: no training prompts left (got {len(prompts)}, held out {len(held)})")

    recipe_json = recipe.model_dump_json(indent=2)
    # An interrupted run of the same recipe keeps its generated rows (the slow part): the same
    # command continues the logs where they stop, then trains (the training steps run again).
    logs = ("revisions.jsonl", "heldout_revisions.jsonl", "preferences.jsonl")
    root = runs.runs_root(project_root)
    if run_name is None and resume:
        found = runs.find_unfinished(root, "constitutional-lora", recipe_json,
                                     started=lambda d: any((d / f).is_file() for f in logs))
        run_name = found.name if found else None
    same = run_name is not None and (root / run_name / runs.RECIPE).is_file() and \
        (root / run_name / runs.RECIPE).read_text(encoding="utf-8") == recipe_json
    run_dir = prepare_run(project_root, "constitutional-lora", recipe_json, run_name)
    metrics_path = run_dir / "metrics.jsonl"
    # the rows each log keeps (logged_rows also cuts off a torn or stale tail; build_* read them again)
    log_prompts = {"revisions.jsonl": train_prompts, "heldout_revisions.jsonl": held, "preferences.jsonl": train_prompts}
    kept = {f: len(logged_rows(run_dir / f, log_prompts[f])) for f in logs if resume and same and (run_dir / f).is_file()}
    for f in (*logs, "heldout_judged.jsonl"):
        if f not in kept:
            (run_dir / f).unlink(missing_ok=True)
    base_dir = base_model_dir(recipe.base)
    llm = _generator(recipe, base_dir, recipe.seed)
    reward_model = None
    if recipe.judge_model:
        from llmtwin.training.reward_model import RewardModel

        reward_model = RewardModel.load(recipe.judge_model, project_root, max_len=recipe.max_len)
    started = time.perf_counter()
    metrics: dict[str, Any] = {"prompts": len(train_prompts), "held_out_prompts": len(held)}
    evaluation: dict[str, Any] = {}

    revisions: list[dict] = []
    if recipe.stages in ("sl", "both"):
        revisions = build_revisions(llm, train_prompts, constitution, recipe, rng, run_dir / "revisions.jsonl")
        metrics["revisions"] = len(revisions)
    if held:  # the measurement: revisions vs originals on prompts never trained on
        held_rows = build_revisions(llm, held, constitution, recipe, rng, run_dir / "heldout_revisions.jsonl")
        evaluation["revisions_vs_originals"] = score_revisions(llm, held_rows, constitution, rng, reward_model)
        (run_dir / "heldout_judged.jsonl").write_text(  # each row with its judgement, to read
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in held_rows), encoding="utf-8")
        ev = evaluation["revisions_vs_originals"]
        metrics.update(revision_win_rate=ev["win_rate"], revision_loss_rate=ev["loss_rate"],
                       revision_tie_rate=ev["tie_rate"])
        if "check_pass_original" in ev:
            metrics.update(check_pass_original=ev["check_pass_original"], check_pass_revision=ev["check_pass_revision"])
    pairs: list[dict] = []
    if recipe.stages in ("rl", "both"):
        llm_b = _generator(recipe, base_dir, recipe.seed + 1)
        pairs, ties = build_preferences(llm, llm_b, train_prompts, constitution, recipe, rng, run_dir / "preferences.jsonl",
                                        reward_model)
        metrics.update(preference_pairs=len(pairs), judge_ties=ties)
    metrics["generation_seconds"] = time.perf_counter() - started
    del reward_model

    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    torch.manual_seed(recipe.seed)
    base, tokenizer = load_causal_lm(recipe.base)
    model = None
    notes = []
    if revisions:
        sft_rows = [{"prompt": [{"role": "user", "content": r["prompt"]}],
                     "completion": [{"role": "assistant", "content": r["revision"]}]} for r in revisions]
        sft_recipe = SFTRecipe(method="lora", base=recipe.base, r=recipe.r, alpha=recipe.alpha, dropout=recipe.dropout,
                               target_modules=recipe.target_modules, batch_size=recipe.batch_size,
                               max_steps=recipe.sft_steps, lr=recipe.sft_lr, max_seq_len=recipe.max_len,
                               seed=recipe.seed, save_steps=10**6, logging_steps=recipe.logging_steps)
        callbacks = scalar_callbacks(metrics_path, recipe.max_minutes) + ([Progress("CAI stage 1 SFT")] if progress else [])
        trainer = make_trainer(sft_recipe, base, tokenizer, base_dir, sft_rows, [], run_dir / "checkpoints", callbacks)
        t0 = time.perf_counter()
        trainer.train()
        metrics.update(sft_steps=trainer.state.global_step, sft_seconds=time.perf_counter() - t0,
                       sft_final_loss=last_values(metrics_path).get("loss"))
        model = trainer.model
        for cb in callbacks:
            if isinstance(cb, Progress):
                cb.close()
    if pairs:
        model = model if model is not None else lora_model(recipe, base)
        dpo_recipe = DPORecipe(base=recipe.base, r=recipe.r, alpha=recipe.alpha, beta=recipe.beta, lr=recipe.dpo_lr,
                               batch_size=min(recipe.batch_size, len(pairs)), max_len=recipe.max_len,
                               max_steps=recipe.dpo_steps, seed=recipe.seed, logging_steps=recipe.logging_steps)
        offset = metrics.get("sft_steps", 0)
        callbacks = scalar_callbacks(metrics_path, recipe.max_minutes, step_offset=offset) + (
            [Progress("CAI stage 2 DPO")] if progress else [])
        trainer = dpo_trainer(dpo_recipe, model, tokenizer, pairs, [], run_dir / "checkpoints", callbacks)
        if trainer.ref_model is not None:
            raise TwinError("DPO: TRL built a separate reference model for a LoRA policy")
        t0 = time.perf_counter()
        trainer.train()
        logged = last_values(metrics_path)
        metrics.update(dpo_steps=trainer.state.global_step, dpo_seconds=time.perf_counter() - t0,
                       dpo_final_loss=logged.get("loss"), dpo_reward_accuracy=logged.get("rewards/accuracies"),
                       dpo_reward_margin=logged.get("rewards/margins"))
        model = trainer.model
        for cb in callbacks:
            if isinstance(cb, Progress):
                cb.close()
    elif recipe.stages in ("rl", "both"):
        notes.append(f"stage 2 skipped: every AI judgement was a tie (within {recipe.judge_margin:g} of ½), "
                     "no preference pairs")
    if model is None:
        raise TwinError("constitutional: nothing to train (no revisions and no preference pairs)")

    model_dir = run_dir / "model"
    model.save_pretrained(str(model_dir))
    tokenizer.save_pretrained(str(model_dir))
    import shutil

    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    metrics["total_seconds"] = time.perf_counter() - started
    metrics["peak_rss_mb"] = runs.peak_rss_mb()
    datasets = {"prompts": file_hash(Path(recipe.prompts)), "constitution": file_hash(Path(recipe.constitution))}
    if (run_dir / "revisions.jsonl").is_file():
        datasets["train"] = file_hash(run_dir / "revisions.jsonl")
    if (run_dir / "preferences.jsonl").is_file():
        datasets["preferences"] = file_hash(run_dir / "preferences.jsonl")
    card = {
        "kind": "constitutional",
        "method": "constitutional",
        "base": recipe.base,
        "base_dir": str(Path(base_dir).resolve()),
        "adapter": True,
        "recipe": json.loads(recipe_json),
        "datasets": datasets,
        "metrics": {k: v for k, v in metrics.items() if v is not None},
        "evaluation": evaluation,
        "principles": [p.name for p in constitution.principles],
        "generator": getattr(llm, "name", str(llm)),
        "judge": recipe.judge_model or "the generator LLM (both orders)",
        "notes": notes,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "run_name": run_dir.name,
        "resumed_rows": kept or None,  # generated rows kept from an interrupted run, per log
        "bad_lines": len(bad),
    }
    runs.write_card(run_dir, card)
    result = TrainResult(run_dir, card, bad_lines=bad)
    if register:
        result.registry, result.registry_note = runs.record(project_root, run_dir, name, config)
    return result
