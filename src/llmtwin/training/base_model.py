"""Where a trainable base model comes from: the packaged SmolLM2 (dequantised once) or a local HF dir."""

from __future__ import annotations

from pathlib import Path

from llmtwin.errors import TwinError

PACKAGED = "packaged"


def base_model_dir(ref: str | Path = PACKAGED) -> Path:
    """A local Hugging Face dir for `ref`: "packaged" (SmolLM2-135M-Instruct, float32 safetensors) or a path."""
    from llmtwin.models.packaged import hf_dir_from_gguf, set_offline, smollm2_gguf

    set_offline()
    if str(ref) == PACKAGED:
        return hf_dir_from_gguf(smollm2_gguf())
    path = Path(ref).expanduser()
    if not (path / "config.json").is_file():
        raise TwinError(f"base model {str(ref)!r}: not 'packaged' and not a Hugging Face dir with config.json")
    return path


def load_causal_lm(ref: str | Path = PACKAGED, dtype: str = "float32"):
    """(model, tokenizer) for training, on CPU, with a pad token distinct from EOS where one exists."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmtwin.models.packaged import quiet_transformers

    path = base_model_dir(ref)
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        # EOS used as padding gets masked out of the loss and the model never learns to stop (NOTES.md).
        vocab = tokenizer.get_vocab()
        pad = next((t for t in ("<|endoftext|>", "<pad>", "<unk>") if t in vocab and vocab[t] != tokenizer.eos_token_id), None)
        if pad is None:
            raise TwinError(f"{path}: the tokenizer has no pad token distinct from EOS")
        tokenizer.pad_token = pad
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
