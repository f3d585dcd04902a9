"""Benchmark: a reward model and llmtwin's own PPO, end to end on the packaged SmolLM2-135M (LoRA), on CPU.

    .venv/bin/python bench/align_ppo.py reward      # reward model: held-out pairwise accuracy
    .venv/bin/python bench/align_ppo.py ppo         # PPO: mean reward over steps, KL within its bound

reward  Preference pairs are made from the project's own docs/ (no labels needed): the prompt asks about
        a section's heading; chosen = the section's opening sentences; rejected = either another file's
        section (off-topic) or a dismissive non-answer. Trained on 80% of the pairs; the pairwise accuracy
        is measured on the other 20% and on a fixed sample of ../shared/data/hhh_preferences.jsonl
        (evaluation only, never trained on: data of another kind than the training pairs).
ppo     A verifiable reward from training/rewards.py: `regex:^\\s*(Yes|No)\\b` (the answer to a yes/no
        question starts with Yes or No). Template yes/no questions, disjoint train and held-out sets; the
        held-out mean reward is measured on greedy completions before and after training.

Each part stops itself by `max_minutes` (default 13) so it finishes in ≤ 15 minutes. Results (JSON, the
run dirs) go under bench/results/align_ppo/ (git-ignored); bench/results/ppo.md is written by hand from them.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # on a busy 2-core machine spinning OpenMP threads cost ~10×
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import json
import random
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
HHH = ROOT.parent / "shared" / "data" / "hhh_preferences.jsonl"
WORK = ROOT / "bench" / "results" / "align_ppo"

DISMISSIVE = [
    "I don't know.",
    "I can't help with that.",
    "Look it up yourself.",
    "Why do you want to know?",
    "No idea, sorry.",
    "That is not something I will answer.",
]


def _sentences(text: str, n: int) -> str:
    text = re.sub(r"`+|\*\*|\[|\]\([^)]*\)", "", text)
    parts = re.split(r"(?<=[.!?])\s+", " ".join(text.split()))
    return " ".join(parts[:n])


def doc_sections() -> list[tuple[str, str, str]]:
    """(file, heading, opening text) of each docs/*.md section with a prose paragraph."""
    out = []
    for path in sorted((ROOT / "docs").glob("*.md")):
        if path.name in ("BENCHMARKS.md", "alignment.md"):
            continue
        for block in re.split(r"\n(?=#+ )", path.read_text(encoding="utf-8")):
            lines = block.strip().splitlines()
            if not lines or not lines[0].startswith("#"):
                continue
            heading = lines[0].lstrip("# ").strip()
            paras = [p for p in "\n".join(lines[1:]).split("\n\n")
                     if p.strip() and not p.lstrip().startswith(("```", "|", "-", "*", "    ", ">"))]
            if paras and len(paras[0].split()) >= 12:
                out.append((path.name, heading, _sentences(paras[0], 2)))
    return out


def make_pairs(seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    sections = doc_sections()
    pairs = []
    for i, (name, heading, text) in enumerate(sections):
        prompt = [{"role": "user", "content": f"What does the llmtwin documentation say about {heading.lower()}?"}]
        others = [s for s in sections if s[0] != name]
        off = rng.choice(others)[2]
        for rejected in (off, rng.choice(DISMISSIVE)):
            pairs.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": text}],
                          "rejected": [{"role": "assistant", "content": rejected}], "id": f"docs{i}-{len(pairs)}",
                          "source": "synthetic"})
    return pairs


def hhh_sample(n: int, seed: int = 0) -> list[dict]:
    rows = [json.loads(line) for line in HHH.read_text(encoding="utf-8").splitlines() if line.strip()]
    random.Random(seed).shuffle(rows)
    return rows[:n]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def load_avg() -> str:
    return subprocess.run(["uptime"], check=False, capture_output=True, text=True).stdout.strip()


def run_reward(minutes: float, hhh_n: int) -> dict:
    from alignment_data import hhh_style_pairs, split_by_group
    from llmtwin.training.recipe_rl import RewardRecipe
    from llmtwin.training.reward_model import RewardModel, load_scorer, pairwise_accuracy, read_pairs, train_reward

    WORK.mkdir(parents=True, exist_ok=True)
    train, held = split_by_group(hhh_style_pairs())  # whole prompts held out, a quarter of each kind
    write_jsonl(WORK / "rm_train.jsonl", train)
    write_jsonl(WORK / "rm_validation.jsonl", held)
    write_jsonl(WORK / "hhh_sample.jsonl", hhh_sample(hhh_n))
    recipe = RewardRecipe(dataset=str(WORK / "rm_train.jsonl"), validation=str(WORK / "rm_validation.jsonl"),
                          r=16, alpha=32, max_len=128, batch_size=4, epochs=2, lr=2e-4, max_minutes=minutes,
                          eval_every=10)
    hhh_pairs, _ = read_pairs(WORK / "hhh_sample.jsonl")
    held_pairs, _ = read_pairs(WORK / "rm_validation.jsonl")
    load_before = load_avg()
    t0 = time.perf_counter()
    result = train_reward(recipe, WORK, register=False,
                          on_step=lambda s, n, row: print(f"step {s}/{n} loss {row['loss']:.4f} "
                                                          f"acc {row['accuracy']:.2f} ({row['seconds']:.0f}s)", flush=True))
    train_s = time.perf_counter() - t0
    cats = [r["category"] for r in hhh_sample(hhh_n)]
    kinds = [row["kind"] for row in held]

    def by(labels, pairs, score):  # accuracy per label, over the subsets (no pair scored twice)
        res = {}
        for lab in sorted(set(labels)):
            sub = [p for p, l in zip(pairs, labels) if l == lab]
            res[lab] = {"n": len(sub), "accuracy": score(sub)["accuracy"]}
        res["all"] = {"n": len(pairs), "accuracy": sum(v["n"] * v["accuracy"] for v in res.values()) / max(len(pairs), 1)}
        return res

    rm = RewardModel.load(result.run_dir, max_len=256)
    hhh_after = by(cats, hhh_pairs, rm.accuracy)
    held_after = by(kinds, held_pairs, rm.accuracy)
    del rm
    base_model, tok, _ = load_scorer(RewardRecipe(method="full", seed=recipe.seed))  # the same untrained head
    hhh_before = by(cats, hhh_pairs, lambda sub: pairwise_accuracy(base_model, tok, sub, 256))
    held_before = by(kinds, held_pairs, lambda sub: pairwise_accuracy(base_model, tok, sub, 256))
    out = {"part": "reward", "seconds": time.perf_counter() - t0, "train_seconds": train_s,
           "load_before": load_before, "load_after": load_avg(),
           "train_pairs": len(train), "held_out_pairs": len(held), "metrics": result.card["metrics"],
           "held_out": {"untrained_head": held_before, "trained": held_after},
           "hhh_sample": {"pairs": len(hhh_pairs), "untrained_head": hhh_before, "trained": hhh_after},
           "curve": [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()],
           "run_dir": str(result.run_dir)}
    (WORK / "reward.json").write_text(json.dumps(out, indent=2), encoding="utf-8")
    return out


SUBJECTS = ["a dolphin", "a sparrow", "a salmon", "a spider", "an oak tree", "a mushroom", "a penguin", "a bat",
            "a shark", "a frog", "a bee", "a whale", "a snake", "a crocodile", "an ostrich", "a horse", "a cactus",
            "a jellyfish", "an eagle", "a tomato", "a potato", "a banana", "a lemon", "a carrot"]
QUESTIONS = ["Is {} a mammal?", "Can {} fly?", "Does {} live in water?", "Is {} a plant?", "Is {} an animal?",
             "Does {} have legs?"]
FACTS = ["Is Paris the capital of France?", "Is the sun a star?", "Is ice colder than steam?", "Is 7 an even number?",
         "Is the Pacific the largest ocean?", "Does water boil at 100 degrees Celsius at sea level?",
         "Is gold a metal?", "Is the moon bigger than the earth?", "Is 12 divisible by 3?", "Is Tokyo in China?",
         "Is English written left to right?", "Is a triangle a polygon?", "Do plants need sunlight?",
         "Is glass a liquid at room temperature?", "Is Mount Everest in Nepal?", "Is 2 a prime number?"]


def yes_no_prompts(seed: int = 0) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    made = [q.format(s) for q in QUESTIONS for s in SUBJECTS]
    made = [m[0].upper() + m[1:] for m in made]
    rng.shuffle(made)
    held = made[:16] + FACTS[:8]
    train = made[16:] + FACTS[8:]
    rng.shuffle(train)
    return [{"prompt": [{"role": "user", "content": q}]} for q in train], [{"prompt": [{"role": "user", "content": q}]} for q in held]


def run_ppo(minutes: float, steps: int) -> dict:
    from llmtwin.training.ppo import train_ppo
    from llmtwin.training.recipe_rl import PPORecipe

    WORK.mkdir(parents=True, exist_ok=True)
    train, held = yes_no_prompts()
    write_jsonl(WORK / "ppo_prompts.jsonl", train)
    write_jsonl(WORK / "ppo_validation.jsonl", held)
    recipe = PPORecipe(prompts=str(WORK / "ppo_prompts.jsonl"), validation=str(WORK / "ppo_validation.jsonl"),
                       reward=[r"regex:^\s*(Yes|No)\b"], steps=steps, batch_size=8, minibatch_size=4, ppo_epochs=2,
                       lr=3e-4, r=8, alpha=16, max_new_tokens=12, temperature=1.0, beta=0.05, kl_stop=6.0,
                       sample_every=5, max_minutes=minutes, seed=0)
    load_before = load_avg()
    t0 = time.perf_counter()
    result = train_ppo(recipe, WORK, register=False,
                       on_step=lambda s, n, row: print(f"step {s}/{n} reward {row['reward']:.3f} kl {row['kl']:.3f} "
                                                       f"ent {row['entropy']:.3f} vf {row['value_loss']:.4f} "
                                                       f"({row['seconds']:.0f}s)", flush=True))
    curve = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    out = {"part": "ppo", "seconds": time.perf_counter() - t0, "load_before": load_before, "load_after": load_avg(),
           "train_prompts": len(train), "held_out_prompts": len(held), "stopped": result.stopped,
           "metrics": result.card["metrics"],
           "curve": [{k: r.get(k) for k in ("step", "reward", "kl", "entropy", "value_loss", "policy_loss", "clipfrac",
                                           "approx_kl", "completion_len", "seconds")} for r in curve],
           "run_dir": str(result.run_dir)}
    (WORK / "ppo.json").write_text(json.dumps(out, indent=2), encoding="utf-8")
    return out


if __name__ == "__main__":
    part = sys.argv[1] if len(sys.argv) > 1 else "ppo"
    minutes = float(os.environ.get("BENCH_MINUTES", "13"))
    if part == "reward":
        res = run_reward(minutes, int(os.environ.get("BENCH_HHH", "64")))
    elif part == "ppo":
        res = run_ppo(minutes, int(os.environ.get("BENCH_STEPS", "40")))
    else:
        raise SystemExit("usage: align_ppo.py reward|ppo")
    print(json.dumps({k: v for k, v in res.items() if k != "curve"}, indent=2))
