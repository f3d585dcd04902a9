"""Recipes of `twin train reward` and `twin train ppo` as validated pydantic models (YAML file ← --set ← flags)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _RLRecipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base: str = "packaged"  # 'packaged' (SmolLM2-135M-Instruct) or a local Hugging Face dir
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    seed: int = 0
    threads: int | None = Field(None, ge=1)  # torch CPU threads (None: torch's default)
    max_minutes: float | None = Field(None, gt=0.0)  # stop (and save) after this long


class RewardRecipe(_RLRecipe):
    """A scalar-head reward model trained on preference pairs with the Bradley–Terry loss."""

    method: Literal["lora", "full"] = "lora"
    dataset: str | None = None  # a preference dataset name under .twin/datasets/ or a JSONL file
    validation: str | None = None  # a JSONL file of held-out pairs (default: the dataset's validation.jsonl)
    validation_fraction: float = Field(0.1, ge=0.0, lt=1.0)  # held out of train when there is no validation file
    max_len: int = Field(384, ge=8)  # tokens of prompt + completion (the prompt is cut from the left)
    batch_size: int = Field(4, ge=1)  # pairs per step
    lr: float | None = Field(None, gt=0.0)  # None: 1e-4 (lora) / 1e-5 (full)
    epochs: float = Field(1.0, gt=0.0)
    max_steps: int | None = Field(None, ge=1)  # wins over epochs
    eval_every: int | None = Field(None, ge=1)  # steps between held-out accuracy checks (None: end only)
    margin_l2: float = Field(0.0, ge=0.0)  # + c·(r_chosen + r_rejected)² keeps scores centred (0: off)
    save_steps: int = Field(25, ge=1)  # checkpoint interval: the same command again resumes from the last one

    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (1e-4 if self.method == "lora" else 1e-5)


class PPORecipe(_RLRecipe):
    """llmtwin's PPO: LoRA policy + value head, per-token KL penalty to the base, GAE, clipped losses."""

    prompts: str | None = None  # a dataset name under .twin/datasets/ or a JSONL file of prompts
    validation: str | None = None  # held-out prompts: mean reward before and after training
    reward: list[str] = Field(default_factory=list)  # reward specs (training/rewards.py), summed
    steps: int = Field(20, ge=1)  # rollout batches (each: sample, score, several epochs of updates)
    batch_size: int = Field(8, ge=1)  # prompts per rollout
    minibatch_size: int = Field(4, ge=1)
    ppo_epochs: int = Field(2, ge=1)  # passes over each rollout batch
    lr: float = Field(1e-4, gt=0.0)
    max_grad_norm: float = Field(1.0, gt=0.0)
    max_prompt_len: int = Field(256, ge=8)  # prompt tokens kept (from the right)
    max_new_tokens: int = Field(32, ge=1)
    temperature: float = Field(1.0, gt=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    gamma: float = Field(1.0, ge=0.0, le=1.0)
    lam: float = Field(0.95, ge=0.0, le=1.0)
    clip: float = Field(0.2, gt=0.0)  # policy ratio clip ε
    value_clip: float = Field(0.2, gt=0.0)
    vf_coef: float = Field(0.1, ge=0.0)
    ent_coef: float = Field(0.0, ge=0.0)  # entropy bonus: loss −= ent_coef · entropy
    beta: float = Field(0.05, ge=0.0)  # per-token KL penalty coefficient
    kl_estimator: Literal["k1", "k3"] = "k1"
    kl_stop: float | None = Field(None, gt=0.0)  # KL(policy‖base) per completion bound: stop and roll back past it
    whiten_advantages: bool = True
    missing_eos_penalty: float | None = None  # score −= this for completions cut at max_new_tokens
    save_steps: int = Field(10, ge=1)  # checkpoint interval: the same command again resumes from the last one
    sample_every: int = Field(5, ge=1)  # steps between sample completions written to samples.jsonl
    eval_greedy: bool = True  # held-out prompts scored on greedy completions

    @model_validator(mode="after")
    def _check(self) -> PPORecipe:
        if self.minibatch_size > self.batch_size:
            raise ValueError(f"minibatch_size {self.minibatch_size} > batch_size {self.batch_size}")
        return self


PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "reward": {
        "smoke": {"r": 4, "alpha": 8, "max_len": 64, "batch_size": 2, "max_steps": 2},
        "lora-cpu": {"r": 16, "alpha": 32, "max_len": 256, "batch_size": 8, "epochs": 1},
    },
    "ppo": {
        "smoke": {"r": 4, "alpha": 8, "steps": 2, "batch_size": 2, "minibatch_size": 2, "max_new_tokens": 8},
        "lora-cpu": {"r": 16, "alpha": 32, "steps": 40, "batch_size": 8, "minibatch_size": 4, "max_new_tokens": 32},
    },
}


def build_rl_recipe(
    kind: Literal["reward", "ppo"],
    path: Path | None = None,
    preset: str | None = None,
    overrides: list[str] | None = None,
    fields: dict[str, Any] | None = None,
) -> RewardRecipe | PPORecipe:
    """A reward-model or PPO recipe: preset ← YAML file ← `field=value` overrides ← explicit fields."""
    from llmtwin.training.recipe import assemble_recipe

    model = RewardRecipe if kind == "reward" else PPORecipe
    return assemble_recipe(model, kind, PRESETS[kind], path, preset, overrides, fields)
