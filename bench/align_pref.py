"""Alignment benchmark: DPO, GRPO and Constitutional AI end to end on the packaged SmolLM2-135M (LoRA),
each showing its learning signal on data it did not train on.

    .venv/bin/python bench/align_pref.py dpo  [--steps 30] [--minutes 13]
    .venv/bin/python bench/align_pref.py grpo [--steps 20] [--minutes 13]
    .venv/bin/python bench/align_pref.py cai  [--prompts 16] [--minutes 13]

- dpo: preference pairs built from this repository's docs/ (two kinds: an answer that names its
  source vs the same answer without it; an on-topic sentence vs an off-topic one). Pairs from a
  held-out set of doc files measure DPO's implicit-reward accuracy and margin before and after;
  a sample of ../shared/data/hhh_preferences.jsonl (evaluation only, never trained on) is scored too.
- grpo: "What is a plus b?" prompts with the verifiable rewards `exact` + `regex:^\\s*\\d+\\s*$`;
  the mean reward per step, KL per step (bound: --kl-stop), zero-signal groups, and greedy reward on
  held-out sums before and after.
- cai: the red-team prompts and constitution of bench/alignment_data.py (with --judge-model, the
  reward model of `bench/align_ppo.py reward` judges pairs instead of the LLM); stage 1 (critique →
  revise → SFT) and stage 2 (AI-judged pairs → DPO); on the held-out red-team prompts (their own
  list, which no training pair contains; --held-out N takes the first N) revisions are compared
  with the originals by the principles, and so are the trained model's own answers.
Each part writes a JSON summary under --out (default /tmp/llmtwin-bench-align/).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT / "bench"))


def _sentences(text: str) -> list[str]:
    text = re.sub(r"```.*?```", " ", text, flags=re.DOTALL)
    out = []
    for para in re.split(r"\n\s*\n", text):
        if para.lstrip().startswith(("#", "|", "-", "*", ">", "    ")):
            continue
        for s in re.split(r"(?<=[.!?])\s+", " ".join(para.split())):
            if 8 <= len(s.split()) <= 35 and s[0].isupper() and s.endswith("."):
                out.append(s)
    return out


def doc_pairs(seed: int = 0) -> tuple[list[dict], list[dict], list[str], list[str]]:
    """(train pairs, held-out pairs, train files, held-out files) from docs/*.md; files split, not rows."""
    rng = random.Random(seed)
    docs = {p.name: _sentences(p.read_text(encoding="utf-8")) for p in sorted((ROOT / "docs").glob("*.md"))
            if p.name != "BENCHMARKS.md"}
    docs = {k: v for k, v in docs.items() if len(v) >= 4}
    names = sorted(docs)
    rng.shuffle(names)
    held_files, train_files = names[: max(2, len(names) // 4)], names[max(2, len(names) // 4):]

    def make(files: list[str]) -> list[dict]:
        pairs = []
        others = [s for n in names for s in docs[n]]
        for name in files:
            topic = name.removesuffix(".md").replace("-", " ")
            for i, s in enumerate(docs[name][:24]):
                prompt = f"In one sentence, what does the llmtwin documentation on {topic} say?"
                if i % 2 == 0:  # kind 1: the answer names its source
                    pairs.append({"prompt": prompt, "chosen": f"{s} [source: docs/{name}]", "rejected": s,
                                  "kind": "cites_source"})
                else:  # kind 2: on-topic vs a sentence from another document (both cited)
                    off = rng.choice([o for o in others if o not in docs[name]])
                    pairs.append({"prompt": prompt, "chosen": f"{s} [source: docs/{name}]",
                                  "rejected": f"{off} [source: docs/{name}]", "kind": "on_topic"})
        rng.shuffle(pairs)
        return pairs

    return make(train_files), make(held_files), train_files, held_files


def bench_dpo(args) -> dict:
    from llmtwin.training.base_model import load_causal_lm
    from llmtwin.training.dpo import PrefData, lora_model, preference_eval, train_dpo
    from llmtwin.training.recipe_pref import DPORecipe

    train, held, train_files, held_files = doc_pairs(args.seed)
    held = held[: args.held_out]
    proj = Path(args.out) / "dpo"
    proj.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("validation", held)):
        (proj / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    hhh = [json.loads(line) for line in (DATA / "hhh_preferences.jsonl").read_text(encoding="utf-8").splitlines()]
    random.Random(args.seed).shuffle(hhh)
    hhh_rows = [{"prompt": [{"role": "user", "content": r["prompt"]}], "chosen": [{"role": "assistant", "content": r["chosen"]}],
                 "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in hhh[: args.hhh]]

    def conv(rows):
        return [{"prompt": [{"role": "user", "content": r["prompt"]}], "chosen": [{"role": "assistant", "content": r["chosen"]}],
                 "rejected": [{"role": "assistant", "content": r["rejected"]}], "kind": r["kind"]} for r in rows]

    recipe = DPORecipe(dataset=str(proj / "train.jsonl"), validation=str(proj / "validation.jsonl"), r=16, alpha=32,
                       beta=0.1, lr=args.lr, batch_size=4, max_len=160, max_steps=args.steps, max_minutes=args.minutes,
                       logging_steps=1, seed=args.seed)
    data = PrefData([{k: v for k, v in r.items() if k != "kind"} for r in conv(train)],
                    [{k: v for k, v in r.items() if k != "kind"} for r in conv(held)],
                    {"train": "docs-pairs", "validation": "docs-pairs-held"}, split=f"held-out files {held_files}")
    t0 = time.perf_counter()
    base, tok = load_causal_lm("packaged")
    probe = lora_model(recipe, base)
    hhh_before = preference_eval(probe, tok, hhh_rows, recipe.beta, 256)
    del probe, base
    result = train_dpo(recipe, proj, data=data, register=False, progress=False)
    from peft import PeftModel

    base, tok = load_causal_lm("packaged")
    trained = PeftModel.from_pretrained(base, str(result.run_dir / "model"))
    per_kind = {}
    for kind in ("cites_source", "on_topic"):
        rows = [{k: v for k, v in r.items() if k != "kind"} for r in conv(held) if r["kind"] == kind]
        per_kind[kind] = preference_eval(trained, tok, rows, recipe.beta, recipe.max_len)
    hhh_after = preference_eval(trained, tok, hhh_rows, recipe.beta, 256)
    curve = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    return {
        "train_pairs": len(train), "held_out_pairs": len(held), "train_files": train_files, "held_out_files": held_files,
        "recipe": recipe.model_dump(), "metrics": result.card["metrics"], "held_out_by_kind_after": per_kind,
        "hhh_sample": {"n": len(hhh_rows), "before": hhh_before, "after": hhh_after},
        "train_curve": [{k: c[k] for k in ("step", "loss", "rewards/accuracies", "rewards/margins") if k in c}
                        for c in curve if "rewards/margins" in c],
        "seconds": time.perf_counter() - t0, "run_dir": str(result.run_dir),
    }


def bench_grpo(args) -> dict:
    from llmtwin.training.grpo import train_grpo
    from llmtwin.training.recipe_pref import GRPORecipe

    rng = random.Random(args.seed)
    sums = [(a, b) for a in range(1, 20) for b in range(1, 20)]
    rng.shuffle(sums)

    def rows(items):
        return [{"prompt": f"What is {a} plus {b}? Reply with just the number.", "answer": str(a + b)} for a, b in items]

    proj = Path(args.out) / "grpo"
    proj.mkdir(parents=True, exist_ok=True)
    (proj / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(sums[:200])), encoding="utf-8")
    (proj / "held.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(sums[200:200 + args.held_out])),
                                     encoding="utf-8")
    recipe = GRPORecipe(prompts=str(proj / "train.jsonl"), validation=str(proj / "held.jsonl"),
                        reward=["exact", "regex:^\\s*\\d+\\s*$"], r=16, alpha=32, num_generations=args.group, prompts_per_step=args.groups_per_step,
                        max_new_tokens=args.new_tokens, temperature=1.0, beta=0.04, kl_stop=args.kl_stop, lr=args.lr,
                        max_steps=args.steps, sample_every=5, max_minutes=args.minutes, seed=args.seed)
    t0 = time.perf_counter()
    result = train_grpo(recipe, proj, register=False, progress=False)
    card = result.card
    return {"recipe": recipe.model_dump(), "metrics": card["metrics"], "guard": card["guard"],
            "reward_vs_kl": card["reward_vs_kl"], "seconds": time.perf_counter() - t0, "run_dir": str(result.run_dir)}


def bench_cai(args) -> dict:
    from alignment_data import CONSTITUTION, RED_TEAM, RED_TEAM_HELD_OUT
    from llmtwin.training.constitutional import train_constitutional
    from llmtwin.training.recipe_pref import ConstitutionalRecipe

    proj = Path(args.out) / "cai"
    proj.mkdir(parents=True, exist_ok=True)
    (proj / "constitution.yaml").write_text(CONSTITUTION, encoding="utf-8")
    (proj / "red_team.txt").write_text("\n".join(RED_TEAM[: args.prompts]) + "\n", encoding="utf-8")
    (proj / "red_team_held_out.txt").write_text("\n".join(RED_TEAM_HELD_OUT[: args.held_out or None]) + "\n",
                                                encoding="utf-8")
    recipe = ConstitutionalRecipe(constitution=str(proj / "constitution.yaml"), prompts=str(proj / "red_team.txt"),
                                  held_out_prompts=str(proj / "red_team_held_out.txt"),
                                  stages="both", max_new_tokens=args.cai_tokens,
                                  critique_tokens=max(16, args.cai_tokens // 2), threads=args.threads,
                                  sft_steps=args.steps, dpo_steps=args.steps, batch_size=4, max_len=256,
                                  max_minutes=args.minutes, seed=args.seed, r=16, alpha=32,
                                  judge_model=args.judge_model)
    t0 = time.perf_counter()
    result = train_constitutional(recipe, proj, register=False, progress=False)
    out = {"recipe": recipe.model_dump(), "metrics": result.card["metrics"], "evaluation": result.card["evaluation"],
           "notes": result.card["notes"], "seconds": time.perf_counter() - t0, "run_dir": str(result.run_dir)}
    out["trained_vs_base"] = _cai_trained_vs_base(result.run_dir, recipe, args)
    out["seconds_with_trained_check"] = time.perf_counter() - t0
    return out


def _cai_trained_vs_base(run_dir: Path, recipe, args) -> dict:
    """The trained model's own greedy answers to the held-out red-team prompts against the base's
    (the originals of heldout_judged.jsonl), by the deterministic checks and the judge model."""
    import torch
    from peft import PeftModel

    from llmtwin.training.base_model import load_causal_lm
    from llmtwin.training.constitutional import check_pass_rate, load_constitution

    rows = [json.loads(line) for line in (run_dir / "heldout_judged.jsonl").read_text(encoding="utf-8").splitlines()]
    base, tok = load_causal_lm("packaged")
    model = PeftModel.from_pretrained(base, str(run_dir / "model")).eval()
    answers = []
    for row in rows:
        ids = tok.apply_chat_template([{"role": "user", "content": row["prompt"]}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)
        with torch.inference_mode():
            gen = model.generate(**ids, max_new_tokens=args.cai_tokens, do_sample=False, repetition_penalty=1.15,
                                 pad_token_id=tok.pad_token_id)
        answers.append(tok.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    constitution = load_constitution(Path(recipe.constitution))
    out = {"prompts": len(rows),
           "check_pass_base": check_pass_rate(constitution, [r["original"] for r in rows]),
           "check_pass_trained": check_pass_rate(constitution, answers),
           "samples": [{"prompt": r["prompt"], "base": r["original"], "trained": a} for r, a in zip(rows, answers)]}
    if recipe.judge_model:
        from llmtwin.evaluation.stats import sign_test
        from llmtwin.training.reward_model import RewardModel

        rm = RewardModel.load(recipe.judge_model, max_len=recipe.max_len)
        trained = rm.score([r["prompt"] for r in rows], answers)
        base_scores = rm.score([r["prompt"] for r in rows], [r["original"] for r in rows])
        k = sum(t > b for t, b in zip(trained, base_scores))
        out.update(judge_preferred_trained=k, judge_mean_reward_trained=sum(trained) / len(rows),
                   judge_mean_reward_base=sum(base_scores) / len(rows),
                   sign_test_p=sign_test(k, len(rows)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["dpo", "grpo", "cai"])
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--minutes", type=float, default=13.0, help="training time limit (the run stops and reports)")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--held-out", type=int, default=None)
    ap.add_argument("--hhh", type=int, default=24, help="hhh_preferences pairs scored (evaluation only)")
    ap.add_argument("--kl-stop", type=float, default=1.0)
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--group", type=int, default=4, help="grpo: completions per prompt")
    ap.add_argument("--groups-per-step", type=int, default=2, help="grpo: prompts per step")
    ap.add_argument("--new-tokens", type=int, default=16, help="grpo: max new tokens")
    ap.add_argument("--cai-tokens", type=int, default=80, help="cai: max new tokens per answer / revision")
    ap.add_argument("--threads", type=int, default=None, help="cai: llama.cpp / torch threads")
    ap.add_argument("--judge-model", default=None,
                    help="cai: a reward model run dir (e.g. from `bench/align_ppo.py reward`) that judges instead of the LLM")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="/tmp/llmtwin-bench-align")
    args = ap.parse_args()
    defaults = {"dpo": (40, 5e-5, 32), "grpo": (20, 2e-5, 8), "cai": (8, 1e-4, 0)}[args.part]
    args.steps = args.steps or defaults[0]
    args.lr = args.lr or defaults[1]
    args.held_out = args.held_out if args.held_out is not None else defaults[2]
    import torch

    print(f"{args.part}: torch threads {torch.get_num_threads()}, load average {os.getloadavg()}", file=sys.stderr)
    out = {"dpo": bench_dpo, "grpo": bench_grpo, "cai": bench_cai}[args.part](args)
    out["load_average_end"] = os.getloadavg()
    out["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"{args.part}.json").write_text(json.dumps(out, indent=2, default=str), encoding="utf-8")
    print(json.dumps({k: out[k] for k in out if k not in ("recipe", "reward_vs_kl", "train_curve")}, indent=2, default=str))


if __name__ == "__main__":
    main()
