"""`twin train ppo`: llmtwin's own PPO (TRL ≥ 1.13 dropped its PPOTrainer), for a LoRA policy on CPU.

One step:
  1. rollout   take `batch_size` prompts, sample completions with the adapter on (left-padded batch,
               temperature, `max_new_tokens`); the completion mask runs up to and including the first EOS
  2. score     the reward function(s) on (prompt text, completion text) → one score per completion
  3. evaluate  one no-grad pass with the adapter on (log π_old, V_old) and one with it off (log π_ref)
  4. rewards   per token r_t = −β·KL_t (KL_t from ppo_math.kl_penalty), + the score on the last token
  5. GAE       advantages and returns (γ, λ), advantages whitened over the batch
  6. update    `ppo_epochs` passes over shuffled minibatches of: clipped policy loss + vf_coef · clipped
               value loss − ent_coef · entropy; gradient-norm clipping; Adam
  7. log       reward, KL, entropy, value loss, clipfrac, … one line per step in metrics.jsonl

Reward-hacking guard: the KL to the base (per completion, summed over tokens) is measured on every
rollout; past `kl_stop` the run stops and the adapter rolls back to the last policy within the bound.
metrics.jsonl holds reward and KL side by side (the reward-vs-KL curve) and samples.jsonl a few
completions every `sample_every` steps.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmtwin.errors import TwinError
from llmtwin.training.recipe_rl import PPORecipe
from llmtwin.training.records import as_messages, read_records

Reward = Callable[[list[str], list[str], dict[str, list]], list[float]]
StepCallback = Callable[[int, int, dict[str, float]], None]


@dataclass
class PromptRow:
    messages: list[dict[str, str]]
    extras: dict[str, Any] = field(default_factory=dict)  # other dataset columns (answer, tests, …) for rewards

    @property
    def text(self) -> str:
        """What a reward sees as the prompt: the last user message."""
        users = [m["content"] for m in self.messages if m["role"] == "user"]
        return users[-1] if users else self.messages[-1]["content"]


@dataclass
class PPOResult:
    run_dir: Path
    card: dict[str, Any]
    stopped: str  # "steps" | "kl" | "time"
    bad_lines: list[str] = field(default_factory=list)
    registry: dict | None = None
    registry_note: str | None = None
    resumed_from: int | None = None  # the checkpoint step training resumed at


# ---------------------------------------------------------------- prompts

def _prompt_row(obj: Any) -> PromptRow:
    if isinstance(obj, str):
        return PromptRow(as_messages(obj, "prompt", "user"))
    extras = {k: v for k, v in obj.items() if k not in ("prompt", "completion", "chosen", "rejected")}
    return PromptRow(as_messages(obj.get("prompt"), "prompt", "user"), extras)


def read_prompts(path: Path) -> tuple[list[PromptRow], list[str]]:
    """Prompts from JSONL: `{"prompt": [messages] | "text", ...extras}` or a bare JSON string per line.

    Returns (rows, bad lines as 'file:line: reason'); a bad line is skipped, the rest go on."""
    return read_records(path, _prompt_row, "prompts", strings=True)


# ---------------------------------------------------------------- rollouts

@dataclass
class Rollout:
    """One batch: prompt ids (left-padded) + completion ids (right-padded) and what PPO needs per token."""

    prompt_ids: Any  # [B, P]
    prompt_mask: Any  # [B, P]
    completion_ids: Any  # [B, T]
    mask: Any  # [B, T] float: 1 up to and including the first EOS
    texts: list[str]
    truncated: list[bool]  # no EOS within max_new_tokens


def eos_ids(tokenizer, model) -> set[int]:
    ids = {tokenizer.eos_token_id}
    gen = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(gen if isinstance(gen, list) else [gen])
    return {i for i in ids if i is not None}


def completion_mask(completion_ids, eos: set[int]):
    """1.0 on tokens up to and including the first EOS of each row, 0.0 after."""
    import torch

    is_eos = torch.zeros_like(completion_ids, dtype=torch.bool)
    for e in eos:
        is_eos |= completion_ids == e
    # tokens strictly after the first EOS: the running count of EOS before them is ≥ 1
    before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()
    return (before == 0).float(), is_eos.any(dim=1)


def encode_prompts(tokenizer, rows: list[PromptRow], max_prompt_len: int):
    """Chat-template the prompts, keep the last `max_prompt_len` tokens, left-pad into a batch."""
    import torch

    seqs = []
    for row in rows:
        ids = tokenizer.apply_chat_template(row.messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        seqs.append(list(ids)[-max_prompt_len:])
    width = max(len(s) for s in seqs)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs], dtype=torch.long)
    attention = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], dtype=torch.long)
    return input_ids, attention


def sample(policy, tokenizer, rows: list[PromptRow], recipe: PPORecipe, greedy: bool = False) -> Rollout:
    import torch

    prompt_ids, prompt_mask = encode_prompts(tokenizer, rows, recipe.max_prompt_len)
    eos = eos_ids(tokenizer, policy.model)
    gen_kwargs: dict[str, Any] = {"max_new_tokens": recipe.max_new_tokens, "pad_token_id": tokenizer.pad_token_id,
                                  "eos_token_id": sorted(eos)}
    if greedy:
        gen_kwargs.update(do_sample=False)
    else:
        gen_kwargs.update(do_sample=True, temperature=recipe.temperature, top_p=recipe.top_p, top_k=0)
    with torch.no_grad():
        out = policy.model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, **gen_kwargs)
    completion_ids = out[:, prompt_ids.shape[1]:]
    if completion_ids.shape[1] == 0:  # nothing generated at all: keep one pad so shapes stay valid
        completion_ids = torch.full((len(rows), 1), tokenizer.pad_token_id, dtype=torch.long)
    mask, ended = completion_mask(completion_ids, eos)
    texts = []
    for ids, m in zip(completion_ids, mask):
        texts.append(tokenizer.decode(ids[m.bool()], skip_special_tokens=True))
    return Rollout(prompt_ids, prompt_mask, completion_ids, mask, texts, [not bool(e) for e in ended])


def completion_pass(policy, rollout: Rollout, rows, temperature: float, with_grad: bool, reference: bool = False):
    """Per completion token: (log π(a_t), values, logits) with the adapter on, or log π_ref(a_t) with it off.

    Logits are divided by the sampling temperature, so log π is the distribution the tokens came from."""
    import torch

    ids = torch.cat([rollout.prompt_ids[rows], rollout.completion_ids[rows]], dim=1)
    attention = torch.cat([rollout.prompt_mask[rows], rollout.mask[rows].long()], dim=1)
    P, T = rollout.prompt_ids.shape[1], rollout.completion_ids.shape[1]
    target = rollout.completion_ids[rows]
    if reference:
        logits = policy.reference_logits(ids, attention)[:, P - 1 : P + T - 1] / temperature
        return torch.log_softmax(logits, -1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
    with torch.set_grad_enabled(with_grad):
        all_logits, all_values = policy(ids, attention)
        logits = all_logits[:, P - 1 : P + T - 1] / temperature
        values = all_values[:, P - 1 : P + T - 1]
        logp = torch.log_softmax(logits, -1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
    return logp, values, logits


def score_rollout(reward: Reward, rows: list[PromptRow], texts: list[str]) -> list[float]:
    extras: dict[str, list] = {}
    for key in sorted({k for r in rows for k in r.extras}):
        extras[key] = [r.extras.get(key) for r in rows]
    scores = reward([r.text for r in rows], texts, extras)
    if len(scores) != len(texts):
        raise TwinError(f"reward returned {len(scores)} scores for {len(texts)} completions")
    return [float(s) for s in scores]


def combined_reward(specs: list[str]) -> Reward:
    """The sum of the rewards named by `specs` (training/rewards.py)."""
    from llmtwin.training.rewards import parse_reward_spec

    if not specs:
        raise TwinError("recipe field reward: missing; give one or more reward specs (exact, regex:PATTERN, code, model:REF)")
    rewards = [parse_reward_spec(s) for s in specs]

    def total(prompts: list[str], completions: list[str], extras: dict[str, list]) -> list[float]:
        sums = [0.0] * len(completions)
        for fn in rewards:
            for i, s in enumerate(fn(prompts, completions, extras)):
                sums[i] += float(s)
        return sums

    return total


def mean_reward(policy, tokenizer, rows: list[PromptRow], reward: Reward, recipe: PPORecipe, batch: int = 8) -> float:
    """Mean reward over held-out prompts (greedy completions unless recipe.eval_greedy is off)."""
    scores: list[float] = []
    for s in range(0, len(rows), batch):
        chunk = rows[s : s + batch]
        ro = sample(policy, tokenizer, chunk, recipe, greedy=recipe.eval_greedy)
        scores += score_rollout(reward, chunk, ro.texts)
    return sum(scores) / max(len(scores), 1)


# ---------------------------------------------------------------- the step

def ppo_step(policy, optimizer, tokenizer, rows: list[PromptRow], reward: Reward, recipe: PPORecipe,
             rng: random.Random) -> tuple[dict[str, float], Rollout, list[float]]:
    """One rollout batch and its updates; returns (metrics, rollout, scores)."""
    import torch

    from llmtwin.training import ppo_math as pm

    started = time.perf_counter()
    policy.eval()  # dropout off: log π_old and the first update's log π agree (ratio = 1)
    rollout = sample(policy, tokenizer, rows, recipe)
    gen_seconds = time.perf_counter() - started
    scores = score_rollout(reward, rows, rollout.texts)
    shaped = list(scores)
    if recipe.missing_eos_penalty is not None:
        shaped = [s - recipe.missing_eos_penalty if cut else s for s, cut in zip(shaped, rollout.truncated)]
    B = len(rows)
    everything = list(range(B))
    mask = rollout.mask
    with torch.no_grad():
        old_logp, old_values, old_logits = completion_pass(policy, rollout, everything, recipe.temperature, with_grad=False)
        ref_logp = completion_pass(policy, rollout, everything, recipe.temperature, with_grad=False, reference=True)
        kl = pm.kl_penalty(old_logp, ref_logp, recipe.kl_estimator) * mask
        score_t = torch.tensor(shaped, dtype=old_values.dtype)
        token_r = pm.token_rewards(score_t, kl, recipe.beta, mask)
        advantages, returns = pm.gae(token_r, old_values, mask, recipe.gamma, recipe.lam)
        if recipe.whiten_advantages:
            advantages = pm.whiten(advantages, mask)
        start_entropy = float(pm.entropy_from_logits(old_logits, mask))
        del old_logits

    stats: dict[str, list[float]] = {k: [] for k in ("loss", "policy_loss", "value_loss", "entropy", "clipfrac",
                                                      "value_clipfrac", "approx_kl", "grad_norm")}
    mb = recipe.minibatch_size
    for _ in range(recipe.ppo_epochs):
        order = everything[:]
        rng.shuffle(order)
        for s in range(0, B, mb):
            idx = order[s : s + mb]
            logp, values, logits = completion_pass(policy, rollout, idx, recipe.temperature, with_grad=True)
            m = mask[idx]
            pg_loss, clipfrac, approx_kl = pm.clipped_policy_loss(logp, old_logp[idx], advantages[idx], m, recipe.clip)
            vf_loss, vf_clipfrac = pm.clipped_value_loss(values, old_values[idx], returns[idx], m, recipe.value_clip)
            entropy = pm.entropy_from_logits(logits, m)
            loss = pg_loss + recipe.vf_coef * vf_loss - recipe.ent_coef * entropy
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(policy.trainable_parameters(), recipe.max_grad_norm)
            optimizer.step()
            for key, value in (("loss", loss), ("policy_loss", pg_loss), ("value_loss", vf_loss), ("entropy", entropy),
                               ("clipfrac", clipfrac), ("value_clipfrac", vf_clipfrac), ("approx_kl", approx_kl),
                               ("grad_norm", grad_norm)):
                stats[key].append(float(value.detach()) if torch.is_tensor(value) else float(value))
    seconds = time.perf_counter() - started
    lengths = mask.sum(1)
    kl_seq = kl.sum(1)
    metrics = {k: sum(v) / len(v) for k, v in stats.items()}
    metrics.update({
        "reward": sum(scores) / B,
        "reward_std": float(torch.tensor(scores).std()) if B > 1 else 0.0,
        "kl": float(kl_seq.mean()),  # KL(π‖π_ref) per completion (sum over its tokens), at rollout time
        "kl_per_token": float(pm.masked_mean(kl, mask)),
        "non_score_reward": float((-recipe.beta * kl_seq).mean()),
        "rollout_entropy": start_entropy,
        "completion_len": float(lengths.float().mean()),
        "truncated_frac": sum(rollout.truncated) / B,
        "value_mean": float(pm.masked_mean(old_values, mask)),
        "return_mean": float(pm.masked_mean(returns, mask)),
        "seconds": seconds,
        "generation_seconds": gen_seconds,
        "tokens_per_s": float(lengths.sum()) * (1 + recipe.ppo_epochs) / max(seconds, 1e-9),
    })
    return metrics, rollout, scores


# ---------------------------------------------------------------- the run

def train_ppo(
    recipe: PPORecipe,
    project_root: Path,
    *,
    reward: Reward | None = None,
    run_name: str | None = None,
    register: bool = True,
    name: str | None = None,
    config=None,
    on_step: StepCallback | None = None,
    resume: bool = True,
) -> PPOResult:
    """Run PPO per `recipe`, save the run dir (shared contract, kind "ppo") and register it.

    `reward` overrides the recipe's reward specs (a library caller's own function). Every
    `save_steps` the adapter and value head, the optimizer, the prompt order, the RNG and the last
    policy within the KL bound are checkpointed; an interrupted run with the same recipe resumes."""
    import torch

    from llmtwin.training import run_dir as runs
    from llmtwin.training.sft_data import file_hash, resolve_dataset
    from llmtwin.training.value_head import PolicyWithValue

    if recipe.prompts is None:
        raise TwinError("recipe field prompts: missing (a dataset name under .twin/datasets/ or a JSONL file of prompts)")
    train_path, val_path = resolve_dataset(recipe.prompts, project_root)
    if recipe.validation is not None:
        val_path = Path(recipe.validation).expanduser()
        if not val_path.is_file():
            raise TwinError(f"validation {recipe.validation!r}: no such file")
    prompts, bad = read_prompts(train_path)
    held: list[PromptRow] = []
    if val_path is not None:
        held, bad_val = read_prompts(val_path)
        bad += bad_val
    if not prompts:
        raise TwinError(f"{train_path}: no usable prompts" + (f" ({len(bad)} bad lines, first: {bad[0]})" if bad else ""))
    reward_fn = reward if reward is not None else combined_reward(recipe.reward)
    hashes = {"train": file_hash(train_path)}
    if val_path is not None:
        hashes["validation"] = file_hash(val_path)

    recipe_json = recipe.model_dump_json(indent=2)
    run_dir, checkpoint, resumed_from = runs.prepare(project_root, "ppo-lora", recipe_json, run_name, resume)
    metrics_path, samples_path = run_dir / "metrics.jsonl", run_dir / "samples.jsonl"
    if resumed_from is None:
        samples_path.unlink(missing_ok=True)
    else:  # the samples logged after the checkpoint are logged again
        from llmtwin.training.callbacks import truncate_metrics

        truncate_metrics(samples_path, resumed_from)

    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    rng = random.Random(recipe.seed)
    policy, tokenizer = PolicyWithValue.create(recipe.base, recipe.r, recipe.alpha, recipe.dropout,
                                               recipe.target_modules, recipe.seed)
    optimizer = torch.optim.Adam(policy.trainable_parameters(), lr=recipe.lr)
    eval_before = mean_reward(policy, tokenizer, held, reward_fn, recipe) if held else None

    order: list[int] = []
    started = time.perf_counter()
    stopped, history, last_safe = "steps", [], policy.adapter_state()
    if checkpoint is not None:
        state = runs.load_state(checkpoint)
        runs.restore_trainable(policy, state["trainable"], checkpoint)
        optimizer.load_state_dict(state["optimizer"])
        rng.setstate(state["rng"])
        order, last_safe = list(state["order"]), state["last_safe"]
        history = [json.loads(line) for line in metrics_path.read_text(encoding="utf-8").splitlines()]
    for step in range((resumed_from or 0) + 1, recipe.steps + 1):
        if recipe.max_minutes is not None and time.perf_counter() - started > recipe.max_minutes * 60:
            stopped = "time"
            break
        batch = []
        while len(batch) < recipe.batch_size:
            if not order:
                order = list(range(len(prompts)))
                rng.shuffle(order)
            batch.append(prompts[order.pop()])
        torch.manual_seed(recipe.seed * 100_003 + step)
        before_update = policy.adapter_state()
        metrics, rollout, scores = ppo_step(policy, optimizer, tokenizer, batch, reward_fn, recipe, rng)
        row = {"step": step, **{k: round(v, 6) for k, v in metrics.items()}}
        over = recipe.kl_stop is not None and metrics["kl"] > recipe.kl_stop
        if over:
            # this rollout's policy (before this update) is already past the bound: roll back to the
            # last policy measured within it and stop
            policy.restore(last_safe)
            row["kl_stop"] = True
            stopped = "kl"
        else:
            last_safe = before_update
        history.append(row)
        with metrics_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if step == 1 or step % recipe.sample_every == 0 or over:
            with samples_path.open("a", encoding="utf-8") as f:
                for r, text, s in list(zip(batch, rollout.texts, scores))[:4]:
                    f.write(json.dumps({"step": step, "prompt": r.text, "completion": text, "reward": s},
                                       ensure_ascii=False) + "\n")
        if not over and step % recipe.save_steps == 0 and step != recipe.steps:
            runs.save_state(run_dir, step, {"trainable": policy.adapter_state(), "optimizer": optimizer.state_dict(),
                                            "order": order, "rng": rng.getstate(), "last_safe": last_safe})
        if on_step:
            on_step(step, recipe.steps, row)
        if over:
            break
    train_seconds = time.perf_counter() - started

    policy.eval()
    eval_after = mean_reward(policy, tokenizer, held, reward_fn, recipe) if held else None
    model_dir = run_dir / "model"
    policy.save(model_dir, tokenizer)
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    from llmtwin.training.base_model import base_model_dir

    n = len(history)
    first, last = history[:3], history[-3:]
    card_metrics: dict[str, Any] = {
        "final_train_loss": history[-1]["loss"] if history else None,
        "steps": n,
        "reward_first": sum(r["reward"] for r in first) / max(len(first), 1),
        "reward_last": sum(r["reward"] for r in last) / max(len(last), 1),
        "kl_last": history[-1]["kl"] if history else None,
        "kl_max": max((r["kl"] for r in history), default=None),
        "train_seconds": train_seconds,
        "peak_rss_mb": runs.peak_rss_mb(),
    }
    if eval_before is not None:
        card_metrics.update(eval_reward_before=eval_before, eval_reward_after=eval_after)
    card = {
        "kind": "ppo",
        "method": "ppo",
        "base": recipe.base,
        "base_dir": str(Path(base_model_dir(recipe.base)).resolve()),
        "adapter": True,
        "recipe": json.loads(recipe_json),
        "datasets": hashes,
        "metrics": card_metrics,
        "stopped": stopped,
        "value_head": "model/value_head.safetensors",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "run_name": run_dir.name,
        "resumed_from_step": resumed_from,
        "bad_lines": len(bad),
    }
    runs.write_card(run_dir, card)
    result = PPOResult(run_dir, card, stopped, bad_lines=bad, resumed_from=resumed_from)
    if register:
        result.registry, result.registry_note = runs.record(project_root, run_dir, name, config)
    return result
