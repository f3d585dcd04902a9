"""Recipes of `twin train dpo|grpo|constitutional` as validated pydantic models (preset ← YAML ← --set ← flags)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _PrefRecipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base: str = "packaged"  # 'packaged' (SmolLM2-135M-Instruct) or a local Hugging Face dir
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    seed: int = 0
    threads: int | None = Field(None, ge=1)  # torch CPU threads (None: torch's default)
    logging_steps: int = Field(1, ge=1)
    max_minutes: float | None = Field(None, gt=0.0)  # stop (and save) after this long
    save_steps: int = Field(25, ge=1)  # DPO/GRPO checkpoint interval: the same command again resumes from the last one


class DPORecipe(_PrefRecipe):
    """Direct preference optimisation with a LoRA policy; the reference is the base (adapter switched off)."""

    dataset: str | None = None  # a preference dataset name under .twin/datasets/ or a JSONL file
    validation: str | None = None  # held-out pairs (default: the dataset's validation.jsonl, else a split)
    validation_fraction: float = Field(0.1, ge=0.0, lt=1.0)  # held out of train when there is no validation file
    beta: float = Field(0.1, gt=0.0)  # DPO temperature: strength of the pull towards the reference
    loss_type: Literal["sigmoid", "hinge", "ipo"] = "sigmoid"
    lr: float = Field(5e-5, gt=0.0)
    batch_size: int = Field(4, ge=1)  # pairs per step
    grad_accum: int = Field(1, ge=1)
    epochs: float = Field(1.0, gt=0.0)
    max_steps: int | None = Field(None, ge=1)  # wins over epochs
    max_len: int = Field(512, ge=16)  # tokens of prompt + response (the prompt is cut from the left)
    eval_every: int | None = Field(None, ge=1)  # steps between TRL's held-out evaluations (None: end only)


class GRPORecipe(_PrefRecipe):
    """Group relative policy optimisation: groups of sampled completions per prompt, verifiable rewards."""

    prompts: str | None = None  # JSONL: {"prompt": [messages] or text, "answer"?: .., "tests"?: ..}
    validation: str | None = None  # held-out prompts: mean reward before and after (greedy)
    reward: list[str] = Field(default_factory=lambda: ["exact"])  # specs (training/rewards.py), summed
    reward_weights: list[float] | None = None  # one per reward (default: all 1)
    num_generations: int = Field(4, ge=2)  # group size G
    prompts_per_step: int = Field(2, ge=1)  # groups per optimiser step
    max_new_tokens: int = Field(32, ge=1)
    temperature: float = Field(1.0, gt=0.0)
    beta: float = Field(0.04, gt=0.0)  # KL coefficient (> 0: KL to the base is computed and tracked)
    kl_stop: float | None = Field(None, gt=0.0)  # stop training when the logged KL exceeds this
    scale_rewards: Literal["group", "batch", "none"] = "group"
    lr: float = Field(5e-5, gt=0.0)
    max_steps: int = Field(20, ge=1)
    sample_every: int = Field(5, ge=1)  # steps between sample completions written to samples.jsonl
    eval_max_new_tokens: int | None = Field(None, ge=1)  # held-out greedy completions (None: max_new_tokens)

    @model_validator(mode="after")
    def _check(self) -> GRPORecipe:
        if self.reward_weights is not None and len(self.reward_weights) != len(self.reward):
            raise ValueError(f"reward_weights: {len(self.reward_weights)} weights for {len(self.reward)} rewards")
        if not self.reward:
            raise ValueError("reward: at least one reward spec is needed (exact, regex:PATTERN, code, model:REF)")
        return self


class ConstitutionalRecipe(_PrefRecipe):
    """Constitutional AI: critique → revise → SFT (stage 1), then AI preference labels → DPO (stage 2)."""

    constitution: str | None = None  # YAML: principles with name, critique, revision
    prompts: str | None = None  # red-team prompts: a text file (one per line) or JSONL with "prompt"
    stages: Literal["sl", "rl", "both"] = "both"
    max_prompts: int | None = Field(None, ge=1)
    held_out_fraction: float = Field(0.25, ge=0.0, lt=1.0)  # prompts kept out of training to score revisions
    held_out_prompts: str | None = None  # or a file of evaluation-only prompts (then the fraction is not used)
    generator: Literal["auto", "llamacpp", "transformers"] = "auto"  # auto: llama.cpp for the packaged base
    max_new_tokens: int = Field(96, ge=8)
    critique_tokens: int = Field(64, ge=8)
    revisions: int = Field(1, ge=1)  # critique/revision rounds per response (each with a sampled principle)
    temperature: float = Field(0.7, ge=0.0)  # stage 2 samples two responses at this temperature
    judge_margin: float = Field(0.02, ge=0.0, lt=0.5)  # stage 2 keeps a pair when P(a better) is this far from ½
    # a reward model (run dir, HF dir or registry NAME@ALIAS) that judges instead of the LLM: σ(r_a − r_b)
    judge_model: str | None = None
    # stage 1 SFT
    sft_steps: int = Field(20, ge=1)
    sft_lr: float = Field(2e-4, gt=0.0)
    batch_size: int = Field(4, ge=1)
    max_len: int = Field(384, ge=32)
    # stage 2 DPO
    dpo_steps: int = Field(20, ge=1)
    dpo_lr: float = Field(5e-5, gt=0.0)
    beta: float = Field(0.1, gt=0.0)


PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "dpo": {
        "smoke": {"r": 4, "alpha": 8, "max_len": 64, "batch_size": 2, "max_steps": 2},
        "lora-cpu": {"r": 16, "alpha": 32, "max_len": 384, "batch_size": 4, "epochs": 1},
    },
    "grpo": {
        "smoke": {"r": 4, "alpha": 8, "num_generations": 2, "prompts_per_step": 1, "max_new_tokens": 8, "max_steps": 2},
        "lora-cpu": {"r": 16, "alpha": 32, "num_generations": 4, "prompts_per_step": 2, "max_new_tokens": 32,
                     "max_steps": 30},
    },
    "constitutional": {
        "smoke": {"r": 4, "alpha": 8, "max_prompts": 2, "max_new_tokens": 24, "critique_tokens": 16,
                  "sft_steps": 1, "dpo_steps": 1, "batch_size": 2, "max_len": 96, "held_out_fraction": 0.0},
        "lora-cpu": {"r": 16, "alpha": 32, "max_prompts": 40, "sft_steps": 20, "dpo_steps": 20},
    },
}

_MODELS = {"dpo": DPORecipe, "grpo": GRPORecipe, "constitutional": ConstitutionalRecipe}


def build_pref_recipe(
    kind: Literal["dpo", "grpo", "constitutional"],
    path: Path | None = None,
    preset: str | None = None,
    overrides: list[str] | None = None,
    fields: dict[str, Any] | None = None,
) -> Any:
    """A DPO, GRPO or Constitutional AI recipe: preset ← YAML file ← `field=value` overrides ← explicit fields."""
    from llmtwin.training.recipe import assemble_recipe

    return assemble_recipe(_MODELS[kind], kind, PRESETS[kind], path, preset, overrides, fields)
