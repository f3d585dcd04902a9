"""LoRA SFT benchmark on a dataset built from docs/ (never from benchmark data).

    .venv/bin/python bench/sft_lora.py [--dataset DIR] [--epochs 2] [--threads 1] [--compare-steps 8]

1. Data: DIR (train.jsonl/validation.jsonl, e.g. /tmp/docs-twin/.twin/datasets/docs-sft) if it exists,
   else an interim set made here from docs/*.md: "what does section H of F say?" → the section's
   opening words (voice pairs), split 85/15 by section with a fixed seed.
2. Throughput: our trainer (`twin train sft` defaults: padding-free BFD packing, no activation
   checkpointing) vs plain TRL defaults (`SFTConfig(use_cpu=True, bf16=False)`, otherwise default:
   batch 8, padded, activation checkpointing on) with the same LoRA config, same data, same number
   of examples, each in its own process (peak RSS = the process's ru_maxrss). tokens/s counts
   non-padding tokens trained per second of `trainer.train()`.
3. Quality: our LoRA run for --epochs (≤ 10 min), logged to MLflow (record_run: loss curve), then
   held-out validation loss (completion tokens) and token F1 / ROUGE-L of greedy answers vs the
   references on the validation split, base vs fine-tuned.
Results: bench/results/sft.json and the numbers for bench/results/sft.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parent.parent
WORK = Path("/tmp/h3/bench")
SHARED = "/tmp/docs-twin/.twin/datasets/docs-sft"


# ---------------------------------------------------------------- data


def sections(text: str) -> list[tuple[str, list[str]]]:
    """(heading, paragraphs) for each markdown heading; code fences and tables dropped."""
    text = re.sub(r"```.*?```", "\n\n", text, flags=re.DOTALL)
    out: list[tuple[str, list[str]]] = []
    for block in re.split(r"\n(?=#{1,4}\s)", "\n" + text):
        lines = block.strip().splitlines()
        if not lines or not lines[0].startswith("#"):
            continue
        heading = lines[0].lstrip("#").strip()
        paras = [" ".join(p.split()) for p in re.split(r"\n\s*\n", "\n".join(lines[1:]))]
        paras = [p for p in paras if len(p.split()) >= 12 and not p.startswith("|")]
        if paras:
            out.append((heading, paras))
    return out


def build_interim(out: Path, seed: int = 0) -> Path:
    rows = []
    for path in sorted((ROOT / "docs").glob("*.md")):
        if path.name == "BENCHMARKS.md":  # results, not documentation
            continue
        for heading, paras in sections(path.read_text(encoding="utf-8")):
            for k, para in enumerate(paras):
                words = para.split()
                if k == 0:  # the section's opening: asked by its heading
                    user = f"In the llmtwin documentation ({path.stem}), what does the section \"{heading}\" say?"
                    answer = " ".join(words[:60])
                else:  # later paragraphs: continue a passage from its first words
                    user = f"llmtwin documentation, {path.stem}, section \"{heading}\": continue the passage \"{' '.join(words[:6])}\""
                    answer = " ".join(words[6:66])
                rows.append({"prompt": [{"role": "user", "content": user}],
                             "completion": [{"role": "assistant", "content": answer}],
                             "id": f"{path.stem}#{heading}#{k}", "kind": "voice"})
    random.Random(seed).shuffle(rows)
    n_val = max(8, len(rows) * 15 // 100)
    out.mkdir(parents=True, exist_ok=True)
    for name, part in (("validation", rows[:n_val]), ("train", rows[n_val:])):
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")
    return out


# ---------------------------------------------------------------- one trainer in its own process


def child_trl(args) -> dict:
    """Plain TRL defaults (plus use_cpu/bf16 for CPU) with the same LoRA config."""
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from llmtwin.training.base_model import base_model_dir, load_causal_lm
    from llmtwin.training.recipe import build_recipe
    from llmtwin.training.sft import peft_config
    from llmtwin.training.sft_data import read_rows

    torch.set_num_threads(args.threads)
    rows, _ = read_rows(Path(args.data) / "train.jsonl")
    rows = rows[: args.examples]
    model, tok = load_causal_lm("packaged")
    recipe = build_recipe("sft", preset="lora-cpu")
    cfg = SFTConfig(output_dir=str(WORK / "trl-out"), use_cpu=True, bf16=False, report_to="none", save_strategy="no",
                    num_train_epochs=1, include_num_input_tokens_seen="non_padding", disable_tqdm=True)
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(rows), processing_class=tok,
                         peft_config=peft_config(recipe, base_model_dir("packaged")))
    t = time.perf_counter()
    trainer.train()
    secs = time.perf_counter() - t
    return {"trainer": "trl-defaults", "examples": len(rows), "steps": trainer.state.global_step, "seconds": secs,
            "tokens": trainer.state.num_input_tokens_seen, "tokens_per_s": trainer.state.num_input_tokens_seen / secs,
            "batch_size": cfg.per_device_train_batch_size, "activation_checkpointing": cfg.activation_checkpointing,
            "packing": cfg.packing, "max_length": cfg.max_length, "lr": cfg.learning_rate,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def child_ours(args) -> dict:
    """`twin train sft --preset lora-cpu` on the first N examples (throughput) or the whole set (quality)."""
    from llmtwin.project import init_project
    from llmtwin.training.recipe import build_recipe
    from llmtwin.training.sft import train_sft

    data = Path(args.data)
    train = data / "train.jsonl"
    if args.examples:
        rows = train.read_text(encoding="utf-8").splitlines()[: args.examples]
        train = WORK / "subset.jsonl"
        train.write_text("\n".join(rows) + "\n", encoding="utf-8")
    project = init_project(WORK / ("proj" if not args.examples else "proj-speed"))
    fields = {"dataset": str(train), "threads": args.threads, "epochs": 1 if args.examples else args.epochs, "save_steps": 1000,
              "max_minutes": None if args.examples else args.max_minutes,
              "eval_every": args.eval_every if not args.examples else None,
              "validation": str(data / "validation.jsonl") if not args.examples else None}
    recipe = build_recipe("sft", preset="lora-cpu", overrides=[] if args.examples else args.set, fields=fields)
    result = train_sft(recipe, project.root, resume=False, register=not args.examples, name="twin-sft-bench", progress=False)
    m = result.card["metrics"]
    return {"trainer": "ours", "examples": args.examples or None, "steps": m["steps"], "seconds": m["train_seconds"],
            "tokens": m["tokens_seen"], "tokens_per_s": m["tokens_per_s"], "eval_loss": m.get("eval_loss"),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "run_dir": str(result.run_dir),
            "registry": result.registry, "recipe": result.card["recipe"]}


def child_eval(args) -> dict:
    """Held-out completion loss and greedy-answer token F1 / ROUGE-L, base vs adapter."""
    import torch

    from llmtwin.evaluation.text import qa_scores, rouge
    from llmtwin.training.base_model import load_causal_lm
    from llmtwin.training.sft_data import read_rows

    torch.set_num_threads(args.threads)
    rows, _ = read_rows(Path(args.data) / "validation.jsonl")
    rows = rows[: args.eval_examples or None]
    model, tok = load_causal_lm("packaged")
    if args.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, args.adapter)
    model.eval()
    total, n_tok, preds = 0.0, 0, []
    with torch.no_grad():
        for r in rows:
            p = tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
            full = tok.apply_chat_template(r["prompt"] + r["completion"], tokenize=True, return_dict=True)["input_ids"]
            ids = torch.tensor([full])
            labels = ids.clone()
            labels[0, : len(p)] = -100
            out = model(input_ids=ids, labels=labels)
            k = int((labels[0, 1:] != -100).sum())
            total, n_tok = total + out.loss.item() * k, n_tok + k
            gen = model.generate(input_ids=torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                 max_new_tokens=args.max_new_tokens, do_sample=False, repetition_penalty=1.15,
                                 pad_token_id=tok.pad_token_id)
            preds.append(tok.decode(gen[0, len(p):], skip_special_tokens=True).strip())
    refs = [r["completion"][-1]["content"] for r in rows]
    f1 = qa_scores(preds, refs, resamples=1000)["token_f1"]
    rl = rouge(preds, refs, types=("rougeL",), resamples=1000)["fmeasure"]["rougeL"]
    return {"model": args.adapter or "base", "examples": len(rows), "eval_loss": total / n_tok,
            "token_f1": f1.to_dict(), "rougeL": rl.to_dict(), "samples": list(zip(refs[:3], preds[:3]))}


def run_child(mode: str, args, **extra) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--data", str(args.data), "--threads", str(args.threads),
           "--epochs", str(args.epochs), "--eval-every", str(args.eval_every), "--max-new-tokens", str(args.max_new_tokens),
           "--max-minutes", str(args.max_minutes), "--eval-examples", str(args.eval_examples)]
    for s in args.set:
        cmd += ["--set", s]
    for k, v in extra.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    out = WORK / f"{mode}-{extra.get('examples', 'all')}-{Path(str(extra.get('adapter', 'base'))).name}.json"
    cmd += ["--out", str(out)]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
    result = json.loads(out.read_text())
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=None)[:600], flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", choices=("trl", "ours", "eval"))
    ap.add_argument("--data", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--max-minutes", type=float, default=10.0)
    ap.add_argument("--eval-examples", type=int, default=0, help="validation rows scored (0: all)")
    ap.add_argument("--examples", type=int, default=0)
    ap.add_argument("--compare-examples", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--adapter", default="")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--out", default=None)
    ap.add_argument("--skip", action="append", default=[], help="speed, train, eval")
    args = ap.parse_args()
    if args.child:
        result = {"trl": child_trl, "ours": child_ours, "eval": child_eval}[args.child](args)
        Path(args.out).write_text(json.dumps(result, indent=2))
        return

    WORK.mkdir(parents=True, exist_ok=True)
    args.data = Path(args.data) if args.data else (Path(SHARED) if Path(SHARED, "train.jsonl").is_file() else build_interim(WORK / "docs-sft"))
    n_train = len((args.data / "train.jsonl").read_text().splitlines())
    n_val = len((args.data / "validation.jsonl").read_text().splitlines())
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "data": str(args.data), "train": n_train, "validation": n_val,
              "threads": args.threads, "load_before": os.getloadavg()}
    print(json.dumps(report), flush=True)
    if "speed" not in args.skip:
        n = min(args.compare_examples, n_train)
        report["speed"] = {"ours": run_child("ours", args, examples=n), "trl": run_child("trl", args, examples=n),
                           "load_after": os.getloadavg()}
        report["speed"]["ours_epochs_note"] = "ours trains 1 epoch of the subset too (--epochs applies to the quality run)"
    if "train" not in args.skip:
        report["train"] = run_child("ours", args)
        report["load_after_train"] = os.getloadavg()
    if "eval" not in args.skip:
        adapter = Path(report["train"]["run_dir"]) / "model" if "train" in report else None
        report["eval"] = {"base": run_child("eval", args)}
        if adapter:
            report["eval"]["tuned"] = run_child("eval", args, adapter=adapter)
    report["load_end"] = os.getloadavg()
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "sft.json").write_text(json.dumps(report, indent=2, default=str))
    print("written bench/results/sft.json")


if __name__ == "__main__":
    main()
