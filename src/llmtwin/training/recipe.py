"""Training recipes: what `twin train sft|cpt` builds, as validated pydantic models (YAML, presets, overrides).

A recipe names the base model, the method and its knobs, the data and the loop settings. Loading a
YAML file, applying a preset and `--set key=value` overrides all end in the same validation, and a
bad field is a TwinError naming the file (or flag) and the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from llmtwin.errors import TwinError

# Learning rates that train in a few hundred steps on SmolLM2-sized models (per method).
DEFAULT_LR = {"full": 2e-5, "lora": 2e-4, "qlora": 2e-4, "prompt": 3e-2, "prefix": 1e-2}


class _Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base: str = "packaged"  # packaged (SmolLM2-135M-Instruct), a local Hugging Face dir, or a registered NAME@ALIAS
    # LoRA (methods lora / qlora)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    # the loop
    batch_size: int = Field(2, ge=1)  # packed SFT/CPT: rows of max_seq_len; 2 × 512 measured best on CPU (bench/results/sft.md)
    grad_accum: int = Field(1, ge=1)
    lr: float | None = Field(None, gt=0.0)  # None: DEFAULT_LR[method]
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    epochs: float = Field(1.0, gt=0.0)
    max_steps: int | None = Field(None, ge=1)  # wins over epochs
    max_minutes: float | None = Field(None, gt=0)  # stop (and save) after this much training time
    eval_every: int | None = Field(None, ge=1)  # steps between evaluations (None: only at the end)
    early_stopping_patience: int | None = Field(None, ge=1)  # evaluations without improvement before stopping
    gradient_checkpointing: bool = False  # off on CPU: measured slower at no needed memory saving (bench/results/sft.md)
    seed: int = 0
    threads: int | None = Field(None, ge=1)  # torch CPU threads (None: torch's default)
    logging_steps: int = Field(1, ge=1)
    save_steps: int = Field(50, ge=1)  # checkpoint interval (resume restarts from the last one)
    save_total_limit: int = Field(2, ge=1)
    keep_checkpoints: bool = False  # delete checkpoints/ once the model is saved

    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]  # type: ignore[attr-defined]


class SFTRecipe(_Recipe):
    """Supervised fine-tuning on prompt/completion conversations (loss on completion tokens only)."""

    method: Literal["full", "lora", "qlora", "prompt", "prefix"] = "lora"
    dataset: str | None = None  # a dataset name under .twin/datasets/ or a JSONL file
    validation: str | None = None  # a JSONL file (default: the dataset's validation.jsonl if any)
    # prompt tuning (method prompt)
    num_virtual_tokens: int = Field(20, ge=1)
    prompt_init: Literal["random", "text"] = "text"
    prompt_init_text: str = "Answer the question about the documents accurately and concisely."
    # prefix tuning (method prefix)
    prefix_projection: bool = False
    # sequences
    max_seq_len: int = Field(512, ge=8)
    packing: bool | None = None  # None: on for full/lora/qlora (padding-free BFD packing), off for prompt/prefix

    @model_validator(mode="after")
    def _check(self) -> SFTRecipe:
        if self.packing and self.method in ("prompt", "prefix"):
            raise ValueError(f"packing: not supported with method {self.method} (virtual tokens need one sequence per row)")
        if self.early_stopping_patience and not self.eval_every:
            raise ValueError("early_stopping_patience needs eval_every (evaluations to compare)")
        return self

    def use_packing(self) -> bool:
        return self.packing if self.packing is not None else self.method in ("full", "lora", "qlora")


class CPTRecipe(_Recipe):
    """Continual pre-training on raw documents, packed into blocks; one epoch by default."""

    method: Literal["full", "lora"] = "full"
    data: str = "store"  # 'store' (the project's documents), a folder of files, or a JSONL file with "text"
    block_size: int = Field(512, ge=8)
    separate_documents: bool = True  # per-document position_ids: attention never crosses documents
    validation_fraction: float = Field(0.05, ge=0.0, lt=1.0)  # documents held out for eval_loss

    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (5e-5 if self.method == "full" else 2e-4)


# Named recipes for `--preset`; documented in docs/training.md.
SFT_PRESETS: dict[str, dict[str, Any]] = {
    "lora-cpu": {"method": "lora", "r": 16, "alpha": 32, "max_seq_len": 512, "batch_size": 2, "epochs": 1},
    "full-cpu": {"method": "full", "max_seq_len": 512, "batch_size": 1, "epochs": 1},
    "prompt-cpu": {"method": "prompt", "num_virtual_tokens": 20, "prompt_init": "text", "max_seq_len": 256},
    "prefix-cpu": {"method": "prefix", "num_virtual_tokens": 20, "prefix_projection": False, "max_seq_len": 256},
    "qlora-gpu": {"method": "qlora", "r": 16, "alpha": 32, "max_seq_len": 1024, "batch_size": 8},
    "smoke": {"method": "lora", "r": 4, "alpha": 8, "max_seq_len": 64, "batch_size": 2, "max_steps": 2, "save_steps": 1},
}
CPT_PRESETS: dict[str, dict[str, Any]] = {
    "full-cpu": {"method": "full", "block_size": 512, "batch_size": 2, "epochs": 1},
    "lora-cpu": {"method": "lora", "block_size": 512, "batch_size": 2, "epochs": 1},
    "smoke": {"method": "full", "block_size": 64, "batch_size": 2, "max_steps": 2, "save_steps": 1},
}


def _problems(e: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'recipe'}: {err['msg']}" for err in e.errors())


def assemble_recipe(
    model: type[BaseModel],
    kind: str,
    presets: dict[str, dict[str, Any]],
    path: Path | None = None,
    preset: str | None = None,
    overrides: list[str] | None = None,
    fields: dict[str, Any] | None = None,
) -> Any:
    """preset ← YAML file ← `field=value` overrides ← explicit fields (None skipped), validated once.

    Shared by every trainer's recipe (SFT/CPT here, reward/PPO, DPO/GRPO/CAI); errors name the file and field.
    """
    import yaml

    data: dict[str, Any] = {}
    if preset is not None:
        if preset not in presets:
            raise TwinError(f"--preset {preset!r}: unknown {kind} preset; choose one of {', '.join(presets)}")
        data.update(presets[preset])
    where = "recipe"
    if path is not None:
        where = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as e:
            raise TwinError(f"{path}: cannot read recipe: {e}") from e
        if not isinstance(loaded, dict):
            raise TwinError(f"{path}: expected a mapping of recipe fields at the top level")
        data.update(loaded)
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise TwinError(f"--set {item!r}: expected field=value, e.g. --set lr=1e-4")
        if key.strip() not in model.model_fields:
            raise TwinError(f"--set {item!r}: unknown {kind} recipe field {key.strip()!r}")
        data[key.strip()] = yaml.safe_load(value)
    data.update({k: v for k, v in (fields or {}).items() if v is not None})
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise TwinError(f"{where}: {_problems(e)}") from e


def build_recipe(
    kind: Literal["sft", "cpt"],
    path: Path | None = None,
    preset: str | None = None,
    overrides: list[str] | None = None,
    fields: dict[str, Any] | None = None,
) -> SFTRecipe | CPTRecipe:
    """An SFT or CPT recipe: preset ← YAML file ← `key=value` overrides ← explicit fields."""
    if kind == "sft":
        return assemble_recipe(SFTRecipe, kind, SFT_PRESETS, path, preset, overrides, fields)
    return assemble_recipe(CPTRecipe, kind, CPT_PRESETS, path, preset, overrides, fields)
