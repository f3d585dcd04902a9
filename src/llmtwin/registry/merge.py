"""Registered model → something transformers can run: LoRA merged into its base, or exported.

- LoRA-family adapters (lora, qlora, and dpo/grpo/ppo trained with LoRA) are merged into the
  FULL-PRECISION (float32) base with PEFT's `merge_and_unload` (merging into a 4-bit base changes
  outputs) and saved as a plain Hugging Face dir with the tokenizer.
- Prompt and prefix tuning add virtual tokens at run time: there are no weights to fold in, so they
  cannot be merged; they run as a PEFT model (`load_peft`), or export as the adapter dir.
- A full model (full, cpt, surgery, reward) is already a plain HF dir: export copies it.

Merged dirs used for generation are cached per version under `.twin/cache/registry/NAME/vN-merged`
(a version never changes, so the cache never goes stale).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from llmtwin.config import TwinConfig
from llmtwin.errors import TwinError
from llmtwin.registry.models import ResolvedModel, resolve
from llmtwin.registry.record import is_registry_ref

NOT_MERGEABLE = {"PROMPT_TUNING", "PREFIX_TUNING", "P_TUNING", "MULTITASK_PROMPT_TUNING", "ADAPTION_PROMPT", "CPT"}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def peft_type(model_dir: Path) -> str | None:
    path = model_dir / "adapter_config.json"
    if not path.is_file():
        return None
    try:
        return str(json.loads(path.read_text(encoding="utf-8")).get("peft_type", "LORA")).upper()
    except (OSError, json.JSONDecodeError) as e:
        raise TwinError(f"{path}: cannot read: {e}") from e


def mergeable(resolved: ResolvedModel) -> bool:
    kind = peft_type(resolved.model_dir)
    return kind is not None and kind not in NOT_MERGEABLE


def base_dir(root: Path, resolved: ResolvedModel, config: TwinConfig | None = None) -> Path:
    """The HF dir an adapter was trained on: twin_model.json's base_dir, else its base reference
    ('packaged', a path, or another registered model, merged if that is an adapter too)."""
    from llmtwin.training.base_model import base_model_dir

    card = resolved.card
    recorded = card.get("base_dir")
    if recorded and (Path(recorded) / "config.json").is_file():
        return Path(recorded)
    base = str(card.get("base") or "")
    if not base:
        raise TwinError(f"{resolved.ref}: twin_model.json names no base model for the adapter")
    if is_registry_ref(base):
        parent = resolve(root, base, config)
        return runnable_dir(root, parent, config)
    return base_model_dir(base)


def _save_tokenizer(resolved: ResolvedModel, base: Path, out: Path) -> None:
    from transformers import AutoTokenizer

    source = resolved.model_dir if any((resolved.model_dir / f).is_file() for f in _TOKENIZER_FILES) else base
    AutoTokenizer.from_pretrained(source).save_pretrained(out)


def merge_adapter(root: Path, resolved: ResolvedModel, out: Path, config: TwinConfig | None = None) -> Path:
    """Merge a LoRA-family adapter into its float32 base; write a plain HF dir at `out` (atomically)."""
    kind = peft_type(resolved.model_dir)
    if kind is None:
        raise TwinError(f"{resolved.ref}: not an adapter (a full model needs no merge)")
    if kind in NOT_MERGEABLE:
        raise TwinError(
            f"{resolved.ref}: a {kind.lower().replace('_', ' ')} adapter cannot be merged into the base "
            "(it adds virtual tokens at run time, not weights); export it without --merge, or use it "
            "directly with `twin ask --model`"
        )
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from llmtwin.models.packaged import quiet_transformers, set_offline

    set_offline()
    base = base_dir(root, resolved, config)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        with quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
            merged = PeftModel.from_pretrained(model, resolved.model_dir).merge_and_unload()
            merged.save_pretrained(tmp)
            _save_tokenizer(resolved, base, tmp)
        _provenance(tmp, resolved, base, merged=True)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _provenance(out: Path, resolved: ResolvedModel, base: Path | None, merged: bool) -> None:
    (out / "llmtwin_export.json").write_text(
        json.dumps({"from": resolved.ref, "kind": resolved.card.get("kind"), "merged": merged,
                    "base_dir": str(base) if base else None, "run_id": resolved.info.run_id}, indent=2),
        encoding="utf-8",
    )


def runnable_dir(root: Path, resolved: ResolvedModel, config: TwinConfig | None = None) -> Path:
    """A plain HF dir for generation: the model dir itself, or the cached merge of a LoRA adapter."""
    if not resolved.adapter:
        return resolved.model_dir
    cache = Path(root).resolve() / ".twin" / "cache" / "registry" / resolved.name / f"v{resolved.version}-merged"
    if not (cache / "config.json").is_file():
        merge_adapter(root, resolved, cache, config)
    return cache


def load_peft(root: Path, resolved: ResolvedModel, config: TwinConfig | None = None) -> tuple[Any, Any]:
    """(PeftModel in eval mode, tokenizer) for an adapter that cannot be merged (prompt/prefix tuning)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmtwin.models.packaged import quiet_transformers, set_offline

    set_offline()
    base = base_dir(root, resolved, config)
    with quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        peft_model = PeftModel.from_pretrained(model, resolved.model_dir)
        source = resolved.model_dir if any((resolved.model_dir / f).is_file() for f in _TOKENIZER_FILES) else base
        tokenizer = AutoTokenizer.from_pretrained(source)
    peft_model.eval()
    return peft_model, tokenizer


def export(root: Path, ref: str, out: Path, merge: bool = False, config: TwinConfig | None = None) -> dict[str, Any]:
    """Write a registered model to `out`: merged (LoRA + base → plain HF dir), or copied as it is."""
    resolved = resolve(root, ref, config)
    out = Path(out).resolve()
    if out.exists() and any(out.iterdir()):
        raise TwinError(f"--out {out}: exists and is not empty")
    if resolved.adapter and merge:
        merge_adapter(root, resolved, out, config)
        what = "merged"
    else:
        if out.exists():
            out.rmdir()
        shutil.copytree(resolved.model_dir, out)
        _provenance(out, resolved, None, merged=False)
        what = "adapter" if resolved.adapter else "full"
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return {"ref": resolved.ref, "out": str(out), "what": what, "bytes": size}
