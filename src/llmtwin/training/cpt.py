"""Continual pre-training (`twin train cpt`): next-token loss on raw documents, packed into blocks.

Documents come from the project's store (the stored documents' source files), a folder, or a JSONL
file of {"text": …}. They are tokenized, separated by EOS, packed best-fit decreasing into blocks of
`block_size` (packing.py) and trained for one epoch by default, full or LoRA. With
`separate_documents` (default) each document gets its own position_ids run, from which transformers
builds a block-diagonal causal mask (sdpa and eager alike, checked in tests/test_cpt.py): no token
attends to another document. Output and resume work as for SFT (run_dir.py).
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path

from llmtwin.errors import TwinError
from llmtwin.training import run_dir as runs
from llmtwin.training.recipe import CPTRecipe
from llmtwin.training.sft import TrainResult


def _jsonl_texts(path: Path) -> tuple[list[tuple[str, str]], list[str]]:
    docs, bad = [], []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise ValueError('expected an object with a "text" string')
            docs.append((str(obj.get("id", f"{path.name}:{n}")), obj["text"]))
        except ValueError as e:
            bad.append(f"{path}:{n}: {e}")
    return docs, bad


def _file_texts(files: list[tuple[Path, str]], keep: set[str] | None = None) -> tuple[list[tuple[str, str]], list[str]]:
    """Documents of (path, source name) files; with `keep`, only those whose doc_id is in it."""
    from llmtwin.feature.load import load_bytes

    docs, bad = [], []
    for path, source in files:
        try:
            found, failures = load_bytes(path.read_bytes(), path, source)
        except OSError as e:
            bad.append(f"{path}: {e}")
            continue
        bad += [f"{f.path}{':' + str(f.line) if f.line else ''}: {f.error}" for f in failures]
        docs += [(d.doc_id, d.text) for d in found if keep is None or d.doc_id in keep]
    return docs, bad


def load_documents(data: str, project_root: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """([(doc id, text)], bad inputs as 'file[:line]: reason') from 'store', a folder, or a JSONL file."""
    from llmtwin.feature.load import discover

    if data == "store":
        from llmtwin.project import find_project
        from llmtwin.store.lancedb_store import LanceStore

        project = find_project(project_root)
        if not project.store_dir.exists():
            raise TwinError(f"{project.store_dir}: no store yet; run `twin ingest DOCS` or pass --data FOLDER|FILE.jsonl")
        stored = [d for d in LanceStore(project.store_dir).documents() if d.status == "stored"]
        sources = sorted({d.source for d in stored})
        keep = {d.doc_id for d in stored}
        return _file_texts([(project.source_path(s), s) for s in sources], keep)
    path = Path(data).expanduser()
    if path.is_file() and path.suffix == ".jsonl":
        return _jsonl_texts(path)
    if path.is_dir() or path.is_file():
        files = discover([path], [".*", "__pycache__", ".venv", "node_modules"]).files
        return _file_texts([(f, str(f)) for f in files])
    raise TwinError(f"data {data!r}: not 'store', a folder or a file")


def _split(docs: list[tuple[str, str]], fraction: float, seed: int) -> tuple[list, list]:
    if fraction <= 0 or len(docs) < 2:
        return docs, []
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(docs) * fraction))
    val = set(order[:n_val])
    return [d for i, d in enumerate(docs) if i not in val], [d for i, d in enumerate(docs) if i in val]


def _hash(docs: list[tuple[str, str]]) -> str:
    import hashlib

    h = hashlib.sha256()
    for doc_id, text in docs:
        h.update(doc_id.encode() + b"\0" + text.encode() + b"\0")
    return "sha256:" + h.hexdigest()


def build_blocks(docs: list[tuple[str, str]], tokenizer, block_size: int):
    """A datasets.Dataset of packed blocks (input_ids, lengths)."""
    from datasets import Dataset

    from llmtwin.training.packing import pack_documents

    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for _, text in docs]
    blocks = pack_documents(ids, tokenizer.eos_token_id, block_size)
    return Dataset.from_dict({"input_ids": [b.input_ids for b in blocks], "lengths": [b.lengths for b in blocks]})


def train_cpt(
    recipe: CPTRecipe,
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
    import torch
    from transformers import (
        EarlyStoppingCallback,
        PrinterCallback,
        Trainer,
        TrainingArguments,
    )

    from llmtwin.models.packaged import quiet_transformers
    from llmtwin.training.base_model import base_model_dir, load_causal_lm
    from llmtwin.training.callbacks import MetricsFile, Progress, TimeLimit
    from llmtwin.training.packing import collate_blocks
    from llmtwin.training.sft import peft_config

    docs, bad = load_documents(recipe.data, project_root)
    if not docs:
        raise TwinError(f"data {recipe.data!r}: no documents with text" + (f" ({bad[0]})" if bad else ""))
    train_docs, val_docs = _split(docs, recipe.validation_fraction, recipe.seed)
    recipe_json = recipe.model_dump_json(indent=2)
    run_dir, checkpoint, resumed_from = runs.prepare(project_root, f"cpt-{recipe.method}", recipe_json, run_name, resume)
    metrics_path = run_dir / "metrics.jsonl"

    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    torch.manual_seed(recipe.seed)
    base = runs.resolve_base(recipe.base, project_root, config)
    model, tokenizer = load_causal_lm(base)
    base_dir = base_model_dir(base)
    # A KV cache (use_cache defaults on, even in training) makes transformers skip the packed-sequence
    # mask it derives from position_ids: documents would attend to each other (tests/test_cpt.py).
    model.config.use_cache = False
    if recipe.method == "lora":
        from peft import get_peft_model

        model = get_peft_model(model, peft_config(recipe, Path(base_dir)))
    train_ds = build_blocks(train_docs, tokenizer, recipe.block_size)
    val_ds = build_blocks(val_docs, tokenizer, recipe.block_size) if val_docs else None
    eval_every = recipe.eval_every if val_ds is not None else None
    early = bool(recipe.early_stopping_patience and eval_every)
    args = TrainingArguments(
        output_dir=str(run_dir / "checkpoints"),
        use_cpu=True, bf16=False, activation_checkpointing=recipe.gradient_checkpointing,
        per_device_train_batch_size=recipe.batch_size, per_device_eval_batch_size=recipe.batch_size,
        gradient_accumulation_steps=recipe.grad_accum, learning_rate=recipe.learning_rate(),
        warmup_steps=recipe.warmup_ratio, num_train_epochs=recipe.epochs, max_steps=recipe.max_steps or -1,
        eval_strategy="steps" if eval_every else "no", eval_steps=eval_every,
        save_strategy="steps", save_steps=eval_every if early else recipe.save_steps,
        save_total_limit=recipe.save_total_limit, load_best_model_at_end=early,
        metric_for_best_model="eval_loss", greater_is_better=False,
        logging_steps=recipe.logging_steps, seed=recipe.seed, data_seed=recipe.seed, report_to="none",
        disable_tqdm=True, dataloader_pin_memory=False, remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding",
    )
    metrics_cb = MetricsFile(metrics_path)
    cbs = [metrics_cb] + ([Progress(f"CPT {recipe.method}")] if progress else []) + list(callbacks or [])
    if recipe.max_minutes:
        cbs.append(TimeLimit(recipe.max_minutes))
    if early:
        cbs.append(EarlyStoppingCallback(early_stopping_patience=recipe.early_stopping_patience))
    pad_id = tokenizer.pad_token_id
    with quiet_transformers():
        trainer = Trainer(
            model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds, processing_class=tokenizer,
            data_collator=lambda rows: collate_blocks(rows, pad_id, recipe.separate_documents), callbacks=cbs,
        )
    trainer.remove_callback(PrinterCallback)  # logs go to metrics.jsonl and the progress display, not stdout
    started = time.perf_counter()
    try:
        out = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    finally:
        for cb in cbs:
            if isinstance(cb, Progress):
                cb.close()
    seconds = time.perf_counter() - started
    tokens = trainer.state.num_input_tokens_seen - metrics_cb.begin_tokens
    metrics = {
        "final_train_loss": next((r["loss"] for r in reversed(_rows(metrics_path)) if "loss" in r), None),
        "mean_train_loss": out.training_loss,
        "steps": trainer.state.global_step,
        "train_seconds": seconds,
        "tokens_seen": trainer.state.num_input_tokens_seen,
        "tokens_per_s": tokens / seconds if seconds > 0 else None,
        "peak_rss_mb": runs.peak_rss_mb(),
        "blocks": len(train_ds),
        "documents": len(train_docs),
        "fill": sum(sum(r) for r in train_ds["lengths"]) / (len(train_ds) * recipe.block_size),
    }
    if val_ds is not None:
        metrics["eval_loss"] = trainer.evaluate()["eval_loss"]
        with metrics_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"step": trainer.state.global_step, "eval_loss": metrics["eval_loss"]}) + "\n")
    model_dir = run_dir / "model"
    getattr(trainer.model, "base_model", trainer.model).config.use_cache = True  # generation wants its cache back
    trainer.save_model(str(model_dir))
    tokenizer.save_pretrained(str(model_dir))
    card = {
        "kind": "cpt" if recipe.method == "full" else "lora",
        "method": "cpt",
        "base": recipe.base,
        "base_dir": str(Path(base_dir).resolve()),
        "adapter": recipe.method == "lora",
        "recipe": json.loads(recipe_json),
        "datasets": {"train": _hash(train_docs), **({"validation": _hash(val_docs)} if val_docs else {})},
        "metrics": metrics,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "run_name": run_dir.name,
        "resumed_from_step": resumed_from,
        "bad_lines": len(bad),
    }
    runs.write_card(run_dir, card)
    if not recipe.keep_checkpoints:
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    result = TrainResult(run_dir, card, resumed_from=resumed_from, bad_lines=bad)
    if register:
        result.registry, result.registry_note = runs.record(project_root, run_dir, name, config)
    return result


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.is_file() else []
