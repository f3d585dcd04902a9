"""Direct preference optimisation (`twin train dpo`): TRL DPOTrainer on a LoRA policy.

The reference model is the same network with the LoRA adapter switched off: TRL sets
`ref_model = None` for a PEFT policy and computes reference log-probs under `use_adapter(None)`,
so no second copy of the model is built. The loss is −log σ(β·[(log π(y_w) − log π_ref(y_w)) −
(log π(y_l) − log π_ref(y_l))]) with log-probs summed over the response tokens.

Besides TRL's own logs (rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies,
logps/…), all copied to metrics.jsonl, the held-out pairs are scored before and after training by
`preference_eval` (our own, one unpadded sequence at a time, so no padding can leak into it):
- reward accuracy / margin: DPO's implicit reward β·(log π − log π_ref), chosen vs rejected
  (before training the adapter is zero, so every margin is 0 and the accuracy 0 — ties do not count);
- log-prob accuracy / margin: the policy's own log π(chosen) − log π(rejected), meaningful before too.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmtwin.errors import TwinError
from llmtwin.training import run_dir as runs
from llmtwin.training.recipe_pref import DPORecipe
from llmtwin.training.records import as_messages, read_records
from llmtwin.training.sft import TrainResult

# ---------------------------------------------------------------- preference data

@dataclass
class PrefData:
    train: list[dict]
    validation: list[dict]
    hashes: dict[str, str]
    bad_lines: list[str] = field(default_factory=list)
    split: str = "file"  # "file" (a validation file) or "held out N of train"


def _pair_row(obj: dict) -> dict:
    for key in ("prompt", "chosen", "rejected"):
        if key not in obj:
            raise ValueError(f"{key}: missing")
    row = {"prompt": as_messages(obj["prompt"], "prompt", "user"),
           "chosen": as_messages(obj["chosen"], "chosen", "assistant"),
           "rejected": as_messages(obj["rejected"], "rejected", "assistant")}
    for key in ("chosen", "rejected"):
        if row[key][-1]["role"] != "assistant":
            raise ValueError(f"{key}: the last message must be the assistant's")
    if row["chosen"] == row["rejected"]:
        raise ValueError("chosen and rejected are the same")
    return row


def read_pairs(path: Path) -> tuple[list[dict], list[str]]:
    """(rows {prompt, chosen, rejected} as messages, bad lines 'file:line: reason'); strings are accepted too."""
    return read_records(path, _pair_row, "pairs")


def load_pref_data(recipe: DPORecipe, project_root: Path | None) -> PrefData:
    from llmtwin.training.sft_data import file_hash, resolve_dataset

    if recipe.dataset is None:
        raise TwinError("recipe field dataset: missing (a preference dataset name under .twin/datasets/ or a JSONL file)")
    train_path, val_path = resolve_dataset(recipe.dataset, project_root)
    if recipe.validation is not None:
        val_path = Path(recipe.validation).expanduser()
        if not val_path.is_file():
            raise TwinError(f"validation {recipe.validation!r}: no such file")
    train, bad = read_pairs(train_path)
    if not train:
        raise TwinError(f"{train_path}: no usable prompt/chosen/rejected rows" + (f" ({bad[0]})" if bad else ""))
    hashes = {"train": file_hash(train_path)}
    split = "file"
    if val_path is not None:
        val, bad_val = read_pairs(val_path)
        bad += bad_val
        hashes["validation"] = file_hash(val_path)
    else:
        rng = random.Random(recipe.seed)
        order = list(range(len(train)))
        rng.shuffle(order)
        n_val = int(len(train) * recipe.validation_fraction)
        if n_val and len(train) - n_val < 1:
            n_val = 0
        val = [train[i] for i in order[:n_val]]
        train = [train[i] for i in sorted(order[n_val:])]
        split = f"held out {n_val} of {n_val + len(train)} train rows (seed {recipe.seed})"
    return PrefData(train, val, hashes, bad, split)


# ---------------------------------------------------------------- log-probs and held-out metrics

def response_ids(tokenizer, prompt: list[dict], response: list[dict], max_len: int) -> tuple[list[int], int]:
    """(token ids of prompt+response, where the response starts), tokenised the way TRL's DPO does."""
    prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    full = tokenizer.apply_chat_template(prompt + response, tokenize=True, return_dict=True)["input_ids"]
    start = 0
    for a, b in zip(prompt_ids, full):  # the response starts where the two tokenisations diverge
        if a != b:
            break
        start += 1
    return list(full[:max_len]), start


def sequence_logp(model, ids: list[int], start: int) -> float:
    """Sum of log p(token) over ids[start:] given the tokens before it (one sequence, no padding)."""
    import torch

    if start >= len(ids):
        return 0.0
    x = torch.tensor([ids])
    with torch.no_grad():
        logits = model(input_ids=x).logits[0, :-1].float()
    logps = torch.log_softmax(logits, dim=-1)
    targets = x[0, 1:]
    picked = logps.gather(1, targets[:, None])[:, 0]
    return float(picked[start - 1 :].sum())


def pair_logps(model, tokenizer, rows: list[dict], max_len: int) -> list[tuple[float, float]]:
    out = []
    for row in rows:
        c_ids, c_start = response_ids(tokenizer, row["prompt"], row["chosen"], max_len)
        r_ids, r_start = response_ids(tokenizer, row["prompt"], row["rejected"], max_len)
        out.append((sequence_logp(model, c_ids, c_start), sequence_logp(model, r_ids, r_start)))
    return out


def preference_eval(model, tokenizer, rows: list[dict], beta: float, max_len: int) -> dict[str, Any]:
    """Held-out preference metrics of a (PEFT) policy against its base (adapter off)."""
    if not rows:
        return {"n": 0}
    was_training = model.training
    model.eval()
    policy = pair_logps(model, tokenizer, rows, max_len)
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            ref = pair_logps(model, tokenizer, rows, max_len)
    else:
        ref = policy
    if was_training:
        model.train()
    margins = [beta * ((pc - rc) - (pr - rr)) for (pc, pr), (rc, rr) in zip(policy, ref)]
    logp_margins = [pc - pr for pc, pr in policy]
    n = len(rows)
    return {
        "n": n,
        "reward_accuracy": sum(m > 0 for m in margins) / n,
        "reward_margin": sum(margins) / n,
        "logp_accuracy": sum(m > 0 for m in logp_margins) / n,
        "logp_margin": sum(logp_margins) / n,
    }


# ---------------------------------------------------------------- callbacks shared with grpo.py

def scalar_callbacks(metrics_path: Path, max_minutes: float | None, extra: list | None = None,
                     step_offset: int = 0) -> list:
    """[every numeric log value → metrics.jsonl (step + step_offset), a time limit]; transformers loads lazily."""
    from transformers import TrainerCallback

    class Scalars(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            row: dict[str, Any] = {"step": state.global_step + step_offset}
            row.update({k: float(v) for k, v in (logs or {}).items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool)})
            if len(row) > 1:
                with metrics_path.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")

    class TimeLimit(TrainerCallback):
        def __init__(self):
            self.start = time.perf_counter()
            self.hit = False

        def on_step_end(self, args, state, control, **kw):
            if max_minutes is not None and time.perf_counter() - self.start > max_minutes * 60:
                self.hit = True
                control.should_training_stop = True

    return [Scalars(), TimeLimit(), *(extra or [])]


def last_values(path: Path) -> dict[str, float]:
    """The last logged value of every key in metrics.jsonl."""
    out: dict[str, float] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                out.update({k: v for k, v in json.loads(line).items() if k != "step"})
            except ValueError:
                continue
    return out


def lora_model(recipe, model):
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(task_type=TaskType.CAUSAL_LM, r=recipe.r, lora_alpha=recipe.alpha, lora_dropout=recipe.dropout,
                        target_modules=recipe.target_modules)
    return get_peft_model(model, config)


def prepare_run(project_root: Path, prefix: str, recipe_json: str, run_name: str | None) -> Path:
    root = runs.runs_root(project_root)
    run_dir = root / (run_name or runs.new_run_name(prefix))
    if (run_dir / runs.CARD).exists():
        raise TwinError(f"{run_dir}: this run is finished (twin_model.json exists); choose another --run-name")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / runs.RECIPE).write_text(recipe_json, encoding="utf-8")
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    return run_dir


# ---------------------------------------------------------------- training

def dpo_trainer(recipe: DPORecipe, model, tokenizer, train: list[dict], val: list[dict], out_dir: Path,
                callbacks: list, max_steps: int | None = None):
    """A DPOTrainer for a PEFT `model` with ref_model=None (the reference is the adapter switched off)."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from llmtwin.models.packaged import quiet_transformers

    steps = max_steps if max_steps is not None else recipe.max_steps
    args = DPOConfig(
        output_dir=str(out_dir),
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        beta=recipe.beta,
        loss_type=[recipe.loss_type],
        max_length=recipe.max_len,
        per_device_train_batch_size=recipe.batch_size,
        per_device_eval_batch_size=recipe.batch_size,
        gradient_accumulation_steps=recipe.grad_accum,
        learning_rate=recipe.lr,
        num_train_epochs=recipe.epochs,
        max_steps=steps or -1,
        eval_strategy="steps" if (recipe.eval_every and val) else "no",
        eval_steps=recipe.eval_every,
        save_strategy="steps",
        save_steps=recipe.save_steps,
        save_total_limit=1,  # the newest checkpoint is all a resume needs
        logging_steps=recipe.logging_steps,
        seed=recipe.seed,
        data_seed=recipe.seed,
        report_to="none",
        disable_tqdm=True,
        dataloader_pin_memory=False,
    )
    with quiet_transformers():
        return DPOTrainer(
            model=model,
            ref_model=None,
            args=args,
            train_dataset=Dataset.from_list(train),
            eval_dataset=Dataset.from_list(val) if (val and recipe.eval_every) else None,
            processing_class=tokenizer,
            callbacks=callbacks,
        )


def train_dpo(
    recipe: DPORecipe,
    project_root: Path,
    *,
    run_name: str | None = None,
    register: bool = True,
    name: str | None = None,
    config=None,
    data: PrefData | None = None,
    progress: bool = True,
    resume: bool = True,
) -> TrainResult:
    """Train a LoRA adapter with DPO, score held-out pairs before/after, save the run, register it.
    An interrupted run with the same recipe resumes from its last checkpoint (every `save_steps`)."""
    import torch

    from llmtwin.training.base_model import base_model_dir, load_causal_lm
    from llmtwin.training.callbacks import Progress

    data = data or load_pref_data(recipe, project_root)
    recipe_json = recipe.model_dump_json(indent=2)
    run_dir, checkpoint, resumed_from = runs.prepare(project_root, "dpo-lora", recipe_json, run_name, resume)
    metrics_path = run_dir / "metrics.jsonl"
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    torch.manual_seed(recipe.seed)
    base, tokenizer = load_causal_lm(recipe.base)
    base_dir = base_model_dir(recipe.base)
    model = lora_model(recipe, base)

    before = preference_eval(model, tokenizer, data.validation, recipe.beta, recipe.max_len)
    callbacks = scalar_callbacks(metrics_path, recipe.max_minutes) + ([Progress("DPO")] if progress else [])
    trainer = dpo_trainer(recipe, model, tokenizer, data.train, data.validation, run_dir / "checkpoints", callbacks)
    if trainer.ref_model is not None:  # the no-second-copy promise; TRL decides this from is_peft_model
        raise TwinError("DPO: TRL built a separate reference model for a LoRA policy (expected the adapter-off base)")
    started = time.perf_counter()
    try:
        out = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    finally:
        for cb in callbacks:
            if isinstance(cb, Progress):
                cb.close()
    seconds = time.perf_counter() - started
    after = preference_eval(model, tokenizer, data.validation, recipe.beta, recipe.max_len)
    with metrics_path.open("a", encoding="utf-8") as f:
        f.write(json.dumps({"step": trainer.state.global_step,
                            **{f"heldout/{k}": v for k, v in after.items() if k != "n"}}) + "\n")

    logged = last_values(metrics_path)
    metrics: dict[str, Any] = {
        "final_train_loss": logged.get("loss"),
        "mean_train_loss": out.training_loss,
        "steps": trainer.state.global_step,
        "train_seconds": seconds,
        "peak_rss_mb": runs.peak_rss_mb(),
        **{f"train_{k.replace('/', '_')}": logged[k] for k in ("rewards/margins", "rewards/accuracies") if k in logged},
    }
    for when, values in (("before", before), ("after", after)):
        metrics.update({f"heldout_{k}_{when}": v for k, v in values.items() if k != "n"})
    model_dir = run_dir / "model"
    trainer.save_model(str(model_dir))
    tokenizer.save_pretrained(str(model_dir))
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    card = {
        "kind": "dpo",
        "method": "dpo",
        "base": recipe.base,
        "base_dir": str(Path(base_dir).resolve()),
        "adapter": True,
        "recipe": json.loads(recipe_json),
        "datasets": data.hashes,
        "metrics": metrics,
        "evaluation": {"held_out_pairs": len(data.validation), "split": data.split, "before": before, "after": after},
        "reference": "base model with the LoRA adapter disabled (no second copy)",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "run_name": run_dir.name,
        "resumed_from_step": resumed_from,
        "bad_lines": len(data.bad_lines),
    }
    runs.write_card(run_dir, card)
    result = TrainResult(run_dir, card, resumed_from=resumed_from, bad_lines=data.bad_lines)
    if register:
        result.registry, result.registry_note = runs.record(project_root, run_dir, name, config)
    return result
