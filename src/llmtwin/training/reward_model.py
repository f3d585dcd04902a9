"""`twin train reward`: a reward model — the base LM with a scalar head — trained on preference pairs.

    r(x, y)  = w · h_last(x, y) + b     h_last: the last hidden state at the last non-pad token of the
                                        chat-formatted (prompt, completion); AutoModelForSequenceClassification(num_labels=1)
    loss     = −log σ(r(x, y_chosen) − r(x, y_rejected))        (Bradley–Terry)  [+ c·(r_c + r_r)² if margin_l2]
    accuracy = share of held-out pairs with r_chosen > r_rejected (a tie counts ½; chance is 0.5)

A small loop of our own rather than TRL's RewardTrainer: one padded batch of 2B sequences per step,
the held-out check when we want it, and nothing to convert. LoRA (score head trained in full) or
full fine-tuning; the LoRA is merged before saving, so `model/` is a plain HF dir (kind "reward").
`RewardModel.load(ref).score(prompt, completion)` scores text; `reward_model:` specs in
training/rewards.py use it.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

from llmtwin.errors import TwinError
from llmtwin.training.recipe_rl import RewardRecipe
from llmtwin.training.records import as_messages, read_records

StepCallback = Callable[[int, int, dict[str, float]], None]


@dataclass
class Pair:
    prompt: list[dict[str, str]]
    chosen: str
    rejected: str


@dataclass
class RewardResult:
    run_dir: Path
    card: dict[str, Any]
    bad_lines: list[str] = field(default_factory=list)
    registry: dict | None = None
    registry_note: str | None = None
    resumed_from: int | None = None  # the checkpoint step training resumed at


# ---------------------------------------------------------------- data

def _answer(value: Any, key: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and isinstance(value[-1], dict) and isinstance(value[-1].get("content"), str):
        if value[-1].get("role") != "assistant":
            raise ValueError(f"{key}: the last message must be the assistant's")
        return value[-1]["content"]
    raise ValueError(f"{key}: expected a string or a list of messages ending with the assistant's")


def _pair(obj: dict) -> Pair:
    for key in ("prompt", "chosen", "rejected"):
        if key not in obj:
            raise ValueError(f"missing field {key!r}")
    pair = Pair(as_messages(obj["prompt"], "prompt", "user"), _answer(obj["chosen"], "chosen"),
                _answer(obj["rejected"], "rejected"))
    if pair.chosen == pair.rejected:
        raise ValueError("chosen and rejected are the same text")
    return pair


def read_pairs(path: Path) -> tuple[list[Pair], list[str]]:
    """Preference pairs from JSONL (`{"prompt", "chosen", "rejected"}`, conversational or plain strings).

    Returns (pairs, bad lines as 'file:line: reason'); a bad line is skipped."""
    return read_records(path, _pair, "pairs")


# ---------------------------------------------------------------- the scorer

def encode(tokenizer, prompts: list[list[dict[str, str]]], completions: list[str], max_len: int):
    """Chat-format each (prompt, completion), keep the last `max_len` tokens, right-pad."""
    import torch

    seqs = []
    for messages, completion in zip(prompts, completions):
        convo = [*messages, {"role": "assistant", "content": completion}]
        ids = tokenizer.apply_chat_template(convo, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        seqs.append(list(ids)[-max_len:])
    width = max(len(s) for s in seqs)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], dtype=torch.long)
    attention = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], dtype=torch.long)
    return input_ids, attention


def rewards_of(model, tokenizer, prompts, completions, max_len: int):
    """[N] scalar rewards (the score head's logit at each sequence's last real token)."""
    import torch

    input_ids, attention = encode(tokenizer, prompts, completions, max_len)
    logits = model(input_ids=input_ids, attention_mask=attention).logits
    # the head reads the last non-pad token; right padding with a pad distinct from EOS makes that
    # the end of the chat-formatted text (checked in the tests)
    return logits[:, 0].to(torch.float32)


def pair_loss(r_chosen, r_rejected, margin_l2: float = 0.0):
    """Bradley–Terry: mean −log σ(r_c − r_r) (= softplus(r_r − r_c)), plus c·mean (r_c + r_r)²."""
    import torch

    loss = torch.nn.functional.softplus(r_rejected - r_chosen).mean()
    if margin_l2:
        loss = loss + margin_l2 * ((r_chosen + r_rejected) ** 2).mean()
    return loss


def pairwise_accuracy(model, tokenizer, pairs: list[Pair], max_len: int, batch: int = 8) -> dict[str, float]:
    """{accuracy (ties ½), margin (mean r_c − r_r), loss (Bradley–Terry), pairs} over `pairs`, no grad."""
    import torch

    wins, margins, losses = 0.0, [], []
    with torch.no_grad():
        for s in range(0, len(pairs), batch):
            chunk = pairs[s : s + batch]
            r = rewards_of(model, tokenizer, [p.prompt for p in chunk] * 2,
                           [p.chosen for p in chunk] + [p.rejected for p in chunk], max_len)
            rc, rr = r[: len(chunk)], r[len(chunk):]
            wins += float((rc > rr).sum()) + 0.5 * float((rc == rr).sum())
            margins += (rc - rr).tolist()
            losses += torch.nn.functional.softplus(rr - rc).tolist()
    n = max(len(pairs), 1)
    return {"accuracy": wins / n, "margin": sum(margins) / n, "loss": sum(losses) / n, "pairs": len(pairs)}


def resolve_reward_dir(ref: str | Path, project_root: Path | None = None) -> Path:
    """A reward model's HF dir from a run dir, an HF dir, or a registry ref `NAME@ALIAS` / `NAME/VERSION`."""
    path = Path(ref).expanduser()
    if (path / "model" / "config.json").is_file():
        return path / "model"
    if (path / "config.json").is_file():
        return path
    text = str(ref)
    if "@" in text or ("/" in text and not path.exists()):
        from llmtwin.project import find_project
        from llmtwin.registry.models import resolve

        project = find_project(project_root)
        resolved = resolve(project.root, text, project.config)
        if resolved.card.get("kind") not in (None, "reward"):
            raise TwinError(f"{text}: a {resolved.card.get('kind')} model, not a reward model")
        return resolved.model_dir
    raise TwinError(f"reward model {text!r}: not a run dir (model/config.json), an HF dir, nor a registry ref NAME@ALIAS")


class RewardModel:
    """A trained reward model for scoring: `RewardModel.load(ref).score(prompt, completion)`."""

    def __init__(self, model: Any, tokenizer: Any, max_len: int = 512, batch: int = 8):
        self.model, self.tokenizer, self.max_len, self.batch = model, tokenizer, max_len, batch

    @classmethod
    def load(cls, ref: str | Path, project_root: Path | None = None, max_len: int = 512) -> RewardModel:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from llmtwin.models.packaged import quiet_transformers, set_offline

        set_offline()
        path = resolve_reward_dir(ref, project_root)
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
        if tokenizer.pad_token_id is None:
            raise TwinError(f"{path}: the tokenizer has no pad token (not saved by `twin train reward`?)")
        model.config.pad_token_id = tokenizer.pad_token_id
        model.eval()
        return cls(model, tokenizer, max_len)

    @overload
    def score(self, prompt: str, completion: str) -> float: ...
    @overload
    def score(self, prompt: list[str], completion: list[str]) -> list[float]: ...

    def score(self, prompt, completion):
        """The reward of `completion` as an answer to `prompt` (a user message); lists give a list."""
        import torch

        single = isinstance(prompt, str)
        prompts = [prompt] if single else list(prompt)
        completions = [completion] if single else list(completion)
        if len(prompts) != len(completions):
            raise TwinError(f"score: {len(prompts)} prompts but {len(completions)} completions")
        out: list[float] = []
        with torch.no_grad():
            for s in range(0, len(prompts), self.batch):
                msgs = [[{"role": "user", "content": p}] for p in prompts[s : s + self.batch]]
                out += rewards_of(self.model, self.tokenizer, msgs, completions[s : s + self.batch], self.max_len).tolist()
        return out[0] if single else out

    def accuracy(self, pairs: list[Pair]) -> dict[str, float]:
        return pairwise_accuracy(self.model, self.tokenizer, pairs, self.max_len, self.batch)


# ---------------------------------------------------------------- training

def load_scorer(recipe: RewardRecipe):
    """(sequence-classification model, tokenizer, base_dir): LoRA on the base (score head trained in full) or full."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from llmtwin.models.packaged import quiet_transformers
    from llmtwin.training.base_model import base_model_dir, load_causal_lm

    base_dir = base_model_dir(recipe.base)
    _, tokenizer = load_causal_lm(recipe.base)  # the tokenizer with a pad distinct from EOS
    from transformers.utils import logging as hf_logging

    torch.manual_seed(recipe.seed)
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the new score head is "MISSING" from the checkpoint: expected, not news
    try:
        with quiet_transformers():
            model = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=1, dtype=torch.float32)
    finally:
        hf_logging.set_verbosity(level)
    model.config.pad_token_id = tokenizer.pad_token_id
    if recipe.method == "lora":
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=recipe.r, lora_alpha=recipe.alpha, lora_dropout=recipe.dropout,
                            target_modules=recipe.target_modules, task_type="SEQ_CLS")
        model = get_peft_model(model, config)
    return model, tokenizer, base_dir


def train_reward(
    recipe: RewardRecipe,
    project_root: Path,
    *,
    run_name: str | None = None,
    register: bool = True,
    name: str | None = None,
    config=None,
    on_step: StepCallback | None = None,
    resume: bool = True,
) -> RewardResult:
    """Train a reward model per `recipe`; save the run dir (kind "reward", plain HF `model/`); register it.
    Every `save_steps` the trainable weights, the optimizer and the data order are checkpointed; an
    interrupted run with the same recipe resumes from the last checkpoint."""
    import torch

    from llmtwin.models.packaged import quiet_transformers
    from llmtwin.training import run_dir as runs
    from llmtwin.training.sft_data import file_hash, resolve_dataset

    if recipe.dataset is None:
        raise TwinError("recipe field dataset: missing (a preference dataset name under .twin/datasets/ or a JSONL file)")
    train_path, val_path = resolve_dataset(recipe.dataset, project_root)
    if recipe.validation is not None:
        val_path = Path(recipe.validation).expanduser()
        if not val_path.is_file():
            raise TwinError(f"validation {recipe.validation!r}: no such file")
    train, bad = read_pairs(train_path)
    held: list[Pair] = []
    if val_path is not None:
        held, bad_val = read_pairs(val_path)
        bad += bad_val
    rng = random.Random(recipe.seed)
    if not held and recipe.validation_fraction > 0 and len(train) >= 4:
        rng.shuffle(train)
        k = max(1, int(len(train) * recipe.validation_fraction))
        held, train = train[:k], train[k:]
    if not train:
        raise TwinError(f"{train_path}: no usable preference pairs" + (f" ({len(bad)} bad lines, first: {bad[0]})" if bad else ""))
    hashes = {"train": file_hash(train_path)}
    if val_path is not None:
        hashes["validation"] = file_hash(val_path)

    recipe_json = recipe.model_dump_json(indent=2)
    run_dir, checkpoint, resumed_from = runs.prepare(project_root, f"reward-{recipe.method}", recipe_json, run_name, resume)
    metrics_path = run_dir / "metrics.jsonl"

    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    model, tokenizer, base_dir = load_scorer(recipe)
    model.eval()  # dropout off (LoRA dropout 0 by default); gradients flow all the same
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=recipe.learning_rate(), weight_decay=0.0)
    steps = recipe.max_steps or max(1, math.ceil(recipe.epochs * len(train) / recipe.batch_size))

    def log(row: dict) -> None:
        with metrics_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    before = pairwise_accuracy(model, tokenizer, held, recipe.max_len) if held else None
    if before and resumed_from is None:
        log({"step": 0, **{f"eval_{k}": v for k, v in before.items() if k != "pairs"}})
    order: list[int] = []
    started = time.perf_counter()
    stopped, done, last_loss = "steps", 0, None
    torch.manual_seed(recipe.seed)
    if checkpoint is not None:
        state = runs.load_state(checkpoint)
        runs.restore_trainable(model, state["trainable"], checkpoint)
        optimizer.load_state_dict(state["optimizer"])
        rng.setstate(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        order, done, last_loss = list(state["order"]), resumed_from, state["loss"]

    for step in range(done + 1, steps + 1):
        if recipe.max_minutes is not None and time.perf_counter() - started > recipe.max_minutes * 60:
            stopped = "time"
            break
        t0 = time.perf_counter()
        batch = []
        while len(batch) < min(recipe.batch_size, len(train)):
            if not order:
                order = list(range(len(train)))
                rng.shuffle(order)
            batch.append(train[order.pop()])
        r = rewards_of(model, tokenizer, [p.prompt for p in batch] * 2,
                       [p.chosen for p in batch] + [p.rejected for p in batch], recipe.max_len)
        rc, rr = r[: len(batch)], r[len(batch):]
        loss = pair_loss(rc, rr, recipe.margin_l2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        done, last_loss = step, float(loss.detach())
        row = {"step": step, "loss": last_loss, "accuracy": float((rc > rr).float().mean()),
               "margin": float((rc - rr).detach().mean()), "grad_norm": float(grad_norm),
               "seconds": time.perf_counter() - t0}
        if held and recipe.eval_every and step % recipe.eval_every == 0 and step != steps:
            ev = pairwise_accuracy(model, tokenizer, held, recipe.max_len)
            row.update({f"eval_{k}": v for k, v in ev.items() if k != "pairs"})
        log(row)
        if step % recipe.save_steps == 0 and step != steps:
            runs.save_state(run_dir, step, {
                "trainable": runs.trainable_state(model),
                "optimizer": optimizer.state_dict(), "order": order, "loss": last_loss,
                "rng": rng.getstate(), "torch_rng": torch.get_rng_state()})
        if on_step:
            on_step(step, steps, row)
    train_seconds = time.perf_counter() - started
    after = pairwise_accuracy(model, tokenizer, held, recipe.max_len) if held else None
    if after:
        log({"step": done, **{f"eval_{k}": v for k, v in after.items() if k != "pairs"}})

    if recipe.method == "lora":
        model = model.merge_and_unload()
    model_dir = run_dir / "model"
    with quiet_transformers():
        model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    metrics: dict[str, Any] = {"final_train_loss": last_loss, "steps": done, "train_seconds": train_seconds,
                               "train_pairs": len(train), "peak_rss_mb": runs.peak_rss_mb()}
    if after and before:
        metrics.update(eval_loss=after["loss"], eval_accuracy=after["accuracy"], eval_margin=after["margin"],
                       eval_accuracy_before=before["accuracy"], eval_pairs=after["pairs"])
    card = {
        "kind": "reward",
        "method": "reward",
        "base": recipe.base,
        "base_dir": str(Path(base_dir).resolve()),
        "adapter": False,
        "recipe": json.loads(recipe_json),
        "datasets": hashes,
        "metrics": metrics,
        "stopped": stopped,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "run_name": run_dir.name,
        "resumed_from_step": resumed_from,
        "bad_lines": len(bad),
    }
    runs.write_card(run_dir, card)
    result = RewardResult(run_dir, card, resumed_from=resumed_from, bad_lines=bad)
    if register:
        result.registry, result.registry_note = runs.record(project_root, run_dir, name, config)
    return result
