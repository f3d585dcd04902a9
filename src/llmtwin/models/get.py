"""get_llm / get_embedder: build the configured model lazily, once per process.

Models are cached by the config's JSON (and the seed), so every caller in a process shares one
loaded model. Local models load with HF_HUB_OFFLINE=1 / TRANSFORMERS_OFFLINE=1 set (unless the
environment says otherwise): nothing is downloaded.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

from llmtwin.errors import TwinError

if TYPE_CHECKING:
    from llmtwin.config import EmbedderConfig, LLMConfig
    from llmtwin.models.embedder import Embedder
    from llmtwin.models.llm import LLM

PACKAGED_LLM_NAME = "smollm2-135m-instruct"
PACKAGED_EMBEDDER_NAME = "all-minilm-l6-v2"

_cache: dict[tuple, object] = {}
_lock = threading.Lock()


def _cached(key: tuple, build):
    with _lock:  # one load at a time; a second caller waits and gets the same object
        if key not in _cache:
            _cache[key] = build()
        return _cache[key]


def clear_cache() -> None:
    """Forget loaded models (tests, or to free memory)."""
    with _lock:
        _cache.clear()


def _llamacpp_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def _gguf_llm(gguf: Path, cfg: LLMConfig, seed: int, name: str) -> LLM:
    from llmtwin.models.llm import LlamaCppLLM, TransformersLLM
    from llmtwin.models.packaged import hf_dir_from_gguf

    backend = cfg.backend
    if backend == "auto":
        backend = "llamacpp" if _llamacpp_available() else "transformers"
    if backend == "llamacpp":
        if not _llamacpp_available():
            raise TwinError("llm.backend=llamacpp needs llama-cpp-python: `pip install llama-cpp-python`")
        return LlamaCppLLM(gguf, context_window=cfg.context_window, threads=cfg.threads, seed=seed, name=name)
    return TransformersLLM(
        hf_dir_from_gguf(gguf), context_window=cfg.context_window, threads=cfg.threads, seed=seed, name=name
    )


def _build_llm(cfg: LLMConfig, seed: int) -> LLM:
    from llmtwin.models.packaged import set_offline, smollm2_gguf

    if cfg.provider == "openai":
        from llmtwin.models.llm import OpenAILLM

        if not cfg.base_url:
            raise TwinError("llm.base_url is required for llm.provider=openai (e.g. http://127.0.0.1:8000/v1)")
        if not cfg.model:
            raise TwinError("llm.model is required for llm.provider=openai (the served model name)")
        return OpenAILLM(cfg.base_url, cfg.model, cfg.api_key_env, context_window=cfg.context_window, name=cfg.model)

    set_offline()
    if cfg.provider == "packaged":
        return _gguf_llm(smollm2_gguf(), cfg, seed, PACKAGED_LLM_NAME)
    if cfg.provider == "registry":
        from llmtwin.registry.load import registry_llm

        return registry_llm(cfg, seed)

    # provider == "hf": a local Hugging Face dir, or a .gguf file
    if not cfg.path:
        raise TwinError("llm.path is required for llm.provider=hf (a local Hugging Face model dir or a .gguf file)")
    path = Path(cfg.path).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return _gguf_llm(path, cfg, seed, path.stem)
    if not path.is_dir():
        raise TwinError(f"llm.path={cfg.path!r} is not a directory or a .gguf file")
    if cfg.backend == "llamacpp":
        raise TwinError(f"llm.backend=llamacpp needs a .gguf file in llm.path, got the directory {cfg.path!r}")
    from llmtwin.models.llm import TransformersLLM

    return TransformersLLM(
        path, context_window=cfg.context_window, threads=cfg.threads, seed=seed, name=path.resolve().name
    )


def get_llm(cfg: LLMConfig, seed: int = 0) -> LLM:
    """The configured LLM, loaded on first use and shared by the process."""
    return _cached(("llm", cfg.model_dump_json(), seed), lambda: _build_llm(cfg, seed))


def _build_embedder(cfg: EmbedderConfig) -> Embedder:
    from llmtwin.models.packaged import minilm_dir, set_offline

    if cfg.provider == "openai":
        from llmtwin.models.embedder import OpenAIEmbedder

        if not cfg.base_url:
            raise TwinError("embedder.base_url is required for embedder.provider=openai")
        if not cfg.model:
            raise TwinError("embedder.model is required for embedder.provider=openai (the served model name)")
        return OpenAIEmbedder(
            cfg.base_url,
            cfg.model,
            cfg.api_key_env,
            batch_size=cfg.batch_size,
            name=cfg.model,
            query_prefix=cfg.query_prefix,
            passage_prefix=cfg.passage_prefix,
        )

    set_offline()
    from llmtwin.models.embedder import SentenceTransformerEmbedder

    if cfg.provider == "packaged":
        model_dir, name = minilm_dir(), PACKAGED_EMBEDDER_NAME
    else:  # hf
        if not cfg.path:
            raise TwinError("embedder.path is required for embedder.provider=hf (a local sentence-transformers dir)")
        model_dir = Path(cfg.path).expanduser()
        if not model_dir.is_dir():
            raise TwinError(f"embedder.path={cfg.path!r} is not a directory")
        name = model_dir.resolve().name
    return SentenceTransformerEmbedder(
        model_dir,
        batch_size=cfg.batch_size,
        query_prefix=cfg.query_prefix,
        passage_prefix=cfg.passage_prefix,
        name=name,
        query_runtime=cfg.query_runtime,
        query_int8=cfg.query_quantize == "int8",
    )


def get_embedder(cfg: EmbedderConfig) -> Embedder:
    """The configured embedder, loaded on first use and shared by the process."""
    return _cached(("embedder", cfg.model_dump_json()), lambda: _build_embedder(cfg))


def get_reranker(path: str | Path, name: str | None = None):
    """A cross-encoder reranker from a local dir, loaded on first use and shared by the process."""
    from llmtwin.models.reranker import CrossEncoderReranker

    path = Path(path).expanduser().resolve()
    if not path.is_dir():
        raise TwinError(f"reranker {str(path)!r} is not a directory")
    stat = path.stat()
    key = ("reranker", str(path), stat.st_mtime_ns)  # a re-published path loads again
    return _cached(key, lambda: CrossEncoderReranker(path, name=name or path.name))


def get_adapter(path: str | Path, name: str | None = None):
    """A query-embedding adapter (retrieval/adapter.py) from a version dir, loaded once."""
    from llmtwin.retrieval.adapter import QueryAdapter

    path = Path(path).expanduser().resolve()
    key = ("adapter", str(path), path.stat().st_mtime_ns)
    return _cached(key, lambda: QueryAdapter(path, name=name or path.name))


def get_query_encoder(path: str | Path, base, name: str | None = None):
    """`base` with queries embedded by the distilled student in a query_encoder version dir
    (training/query_encoder.py), loaded once per version."""
    from llmtwin.models.embedder import SentenceTransformerEmbedder, StudentQueryEmbedder

    path = Path(path).expanduser().resolve()
    if not isinstance(base, SentenceTransformerEmbedder):
        raise TwinError(f"{base.name}: a trained query encoder needs the local sentence-transformers embedder it was distilled from")
    key = ("query_encoder", str(path), path.stat().st_mtime_ns, id(base))
    return _cached(key, lambda: StudentQueryEmbedder(base, path / "model", student=name or path.name))
