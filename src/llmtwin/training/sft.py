"""Supervised fine-tuning (`twin train sft`): TRL SFTTrainer with full, LoRA, QLoRA, prompt or prefix tuning.

Data are conversational prompt/completion rows; the loss is on completion tokens only (TRL's
completion mask: prompt tokens and padding are -100, the completion's `<|im_end|>` is inside).
Full/LoRA runs pack sequences padding-free (best-fit decreasing, per-sequence position_ids, so
attention never crosses examples; transformers builds the block-diagonal mask from position_ids).
A run writes `.twin/runs/<run>/` (model/, twin_model.json, metrics.jsonl) and registers the model.
Running the same command again after an interruption resumes from the last checkpoint.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from llmtwin.errors import TwinError
from llmtwin.training import run_dir as runs
from llmtwin.training.recipe import SFTRecipe


@dataclass
class TrainResult:
    run_dir: Path
    card: dict
    registry: dict | None = None
    registry_note: str | None = None
    resumed_from: int | None = None  # the checkpoint step training resumed at
    bad_lines: list[str] = field(default_factory=list)


def check_qlora() -> None:
    """4-bit needs CUDA and bitsandbytes; say so plainly instead of failing deep inside a library."""
    import importlib.util

    import torch

    if not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None:
        missing = "no CUDA GPU" if not torch.cuda.is_available() else "bitsandbytes is not installed"
        raise TwinError(
            f"method qlora: 4-bit loading needs a CUDA GPU with bitsandbytes ({missing} here); "
            "use `method: lora` (same adapter, full-precision base) on this machine"
        )


def load_model(recipe: SFTRecipe, base: str | None = None):
    """(model, tokenizer, base_dir) for the recipe's method; QLoRA loads the base in 4-bit NF4 on the GPU.

    `base`: the resolved base (a HF dir or 'packaged'; default recipe.base).
    """
    from llmtwin.training.base_model import base_model_dir, load_causal_lm

    base = base or recipe.base
    base_dir = base_model_dir(base)
    if recipe.method != "qlora":
        model, tokenizer = load_causal_lm(base)
        return model, tokenizer, base_dir
    check_qlora()
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    float_model, tokenizer = load_causal_lm(base)  # the tokenizer with its pad token fixed (<1 s)
    del float_model
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(base_dir, quantization_config=quant, device_map={"": 0})
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=recipe.gradient_checkpointing)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer, base_dir


def peft_config(recipe: SFTRecipe, base_dir: Path):
    """The PEFT config of the recipe's method (None for full fine-tuning)."""
    from peft import (
        LoraConfig,
        PrefixTuningConfig,
        PromptTuningConfig,
        PromptTuningInit,
        TaskType,
    )

    if recipe.method in ("lora", "qlora"):
        return LoraConfig(task_type=TaskType.CAUSAL_LM, r=recipe.r, lora_alpha=recipe.alpha, lora_dropout=recipe.dropout,
                          target_modules=recipe.target_modules)
    if recipe.method == "prompt":
        text = recipe.prompt_init == "text"
        return PromptTuningConfig(
            task_type=TaskType.CAUSAL_LM, num_virtual_tokens=recipe.num_virtual_tokens,
            prompt_tuning_init=PromptTuningInit.TEXT if text else PromptTuningInit.RANDOM,
            prompt_tuning_init_text=recipe.prompt_init_text if text else None,
            tokenizer_name_or_path=str(base_dir) if text else None,  # the base's own tokenizer encodes the init text
        )
    if recipe.method == "prefix":
        return PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=recipe.num_virtual_tokens,
                                  prefix_projection=recipe.prefix_projection)
    return None


def sft_config(recipe: SFTRecipe, out_dir: Path, has_eval: bool):
    """SFTConfig for CPU: no bf16, no gradient checkpointing by default, padding-free packing for full/LoRA."""
    import torch
    from trl import SFTConfig

    cuda = torch.cuda.is_available() and recipe.method == "qlora"
    eval_every = recipe.eval_every if has_eval else None
    save_steps = recipe.save_steps
    if recipe.early_stopping_patience and eval_every:
        save_steps = eval_every  # load_best_model_at_end needs a checkpoint at every evaluation
    packing = recipe.use_packing()
    return SFTConfig(
        output_dir=str(out_dir),
        use_cpu=not cuda,
        bf16=cuda,
        activation_checkpointing=recipe.gradient_checkpointing,  # TRL defaults it on; slower on CPU
        max_length=recipe.max_seq_len,
        packing=packing,
        packing_strategy="bfd",
        padding_free=packing,
        completion_only_loss=True,
        per_device_train_batch_size=recipe.batch_size,
        per_device_eval_batch_size=recipe.batch_size,
        gradient_accumulation_steps=recipe.grad_accum,
        learning_rate=recipe.learning_rate(),
        warmup_steps=recipe.warmup_ratio,  # a float < 1 is a fraction of the total steps
        num_train_epochs=recipe.epochs,
        max_steps=recipe.max_steps or -1,
        eval_strategy="steps" if eval_every else "no",
        eval_steps=eval_every,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=recipe.save_total_limit,
        load_best_model_at_end=bool(recipe.early_stopping_patience and eval_every),
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        logging_steps=recipe.logging_steps,
        seed=recipe.seed,
        data_seed=recipe.seed,
        report_to="none",
        disable_tqdm=True,
        dataloader_pin_memory=False,
        include_num_input_tokens_seen="non_padding",
        save_only_model=False,
    )


def make_trainer(recipe: SFTRecipe, model, tokenizer, base_dir: Path, train: list[dict], val: list[dict],
                 out_dir: Path, callbacks: list):
    from datasets import Dataset
    from transformers import EarlyStoppingCallback, PrinterCallback
    from trl import SFTTrainer

    from llmtwin.models.packaged import quiet_transformers

    args = sft_config(recipe, out_dir, has_eval=bool(val))
    if recipe.early_stopping_patience and recipe.eval_every and val:
        callbacks = [*callbacks, EarlyStoppingCallback(early_stopping_patience=recipe.early_stopping_patience)]
    with quiet_transformers():
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(train),
            eval_dataset=Dataset.from_list(val) if val else None,
            processing_class=tokenizer,
            peft_config=peft_config(recipe, base_dir),
            callbacks=callbacks,
        )
    trainer.remove_callback(PrinterCallback)  # it prints every log dict to stdout; ours go to metrics.jsonl / stderr
    return trainer


def train_sft(
    recipe: SFTRecipe,
    project_root: Path,
    *,
    run_name: str | None = None,
    resume: bool = True,
    register: bool = True,
    name: str | None = None,
    config=None,
    progress: bool = True,
    callbacks: list | None = None,
) -> TrainResult:
    """Train, save `model/` and twin_model.json, register. Resumes an unfinished identical run unless resume=False.

    `callbacks`: extra transformers TrainerCallbacks (e.g. to stop early from a UI).
    """
    import torch

    from llmtwin.training.callbacks import MetricsFile, Progress, TimeLimit
    from llmtwin.training.sft_data import load_sft_data

    if recipe.dataset is None:
        raise TwinError("recipe field dataset: missing (a dataset name under .twin/datasets/ or a JSONL file)")
    if recipe.method == "qlora":
        check_qlora()
    data = load_sft_data(recipe.dataset, recipe.validation, project_root)
    recipe_json = recipe.model_dump_json(indent=2)
    run_dir, checkpoint, resumed_from = runs.prepare(project_root, f"sft-{recipe.method}", recipe_json, run_name, resume)
    metrics_path = run_dir / "metrics.jsonl"

    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    torch.manual_seed(recipe.seed)
    model, tokenizer, base_dir = load_model(recipe, runs.resolve_base(recipe.base, project_root, config))
    callbacks = [MetricsFile(metrics_path)] + ([Progress(f"SFT {recipe.method}")] if progress else []) + list(callbacks or [])
    if recipe.max_minutes:
        callbacks.append(TimeLimit(recipe.max_minutes))
    trainer = make_trainer(recipe, model, tokenizer, base_dir, data.train, data.validation, run_dir / "checkpoints", callbacks)
    started = time.perf_counter()
    try:
        out = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    finally:
        for cb in callbacks:
            if isinstance(cb, Progress):
                cb.close()
    seconds = time.perf_counter() - started
    metrics = {
        "final_train_loss": _last(metrics_path, "loss"),
        "mean_train_loss": out.training_loss,
        "steps": trainer.state.global_step,
        "train_seconds": seconds,
        "tokens_seen": trainer.state.num_input_tokens_seen,
        "peak_rss_mb": runs.peak_rss_mb(),
    }
    if data.validation:
        ev = trainer.evaluate()
        metrics["eval_loss"] = ev["eval_loss"]
        with metrics_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"step": trainer.state.global_step, "eval_loss": ev["eval_loss"]}) + "\n")
    tokens_now = trainer.state.num_input_tokens_seen - callbacks[0].begin_tokens
    if seconds > 0:
        metrics["tokens_per_s"] = tokens_now / seconds

    model_dir = run_dir / "model"
    trainer.save_model(str(model_dir))
    tokenizer.save_pretrained(str(model_dir))
    card = {
        "kind": recipe.method,
        "method": "sft",
        "base": recipe.base,
        "base_dir": str(Path(base_dir).resolve()),
        "adapter": recipe.method != "full",
        "recipe": json.loads(recipe_json),
        "datasets": {k: v for k, v in data.hashes.items() if v},
        "metrics": metrics,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "run_name": run_dir.name,
        "resumed_from_step": resumed_from,
        "bad_lines": len(data.bad_lines),
    }
    runs.write_card(run_dir, card)
    if not recipe.keep_checkpoints:
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    result = TrainResult(run_dir, card, resumed_from=resumed_from, bad_lines=data.bad_lines)
    if register:
        result.registry, result.registry_note = runs.record(project_root, run_dir, name, config)
    return result


def _last(path: Path, key: str) -> float | None:
    value = None
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if key in row:
                value = row[key]
    return value
