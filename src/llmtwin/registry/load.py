"""A registered model as the project's LLM (`llm.provider: registry`, `twin ask --model NAME@ALIAS`).

Full models run from their dir; LoRA-family adapters from their merged dir (cached per version);
prompt/prefix-tuning adapters as a PEFT model. All run on transformers (float32, CPU).

The project is `llm.path` when set (the CLI sets it), else the one found from the working
directory; its `registry` section says where the registry is. The LLM's name is the reference as
asked (`twin-sft@champion`); `registry_version` says which version it resolved to at load time.
An alias moved later (a promotion) is picked up by a new process, not by one already running.
"""

from __future__ import annotations

from pathlib import Path

from llmtwin.config import LLMConfig, TwinConfig
from llmtwin.errors import TwinError


def _project(cfg: LLMConfig) -> tuple[Path, TwinConfig]:
    from llmtwin.project import find_project

    try:
        project = find_project(Path(cfg.path) if cfg.path else None)
    except TwinError as e:
        raise TwinError(f"llm.provider=registry: {e} (set llm.path to the project dir holding the registry)") from e
    return project.root, project.config


def load_registered(root: Path, ref: str, config: TwinConfig, *, context_window: int = 2048,
                    threads: int | None = None, seed: int = 0, name: str | None = None):
    """A TransformersLLM for the registered model `ref`."""
    from llmtwin.models.llm import TransformersLLM
    from llmtwin.registry.merge import load_peft, mergeable, runnable_dir
    from llmtwin.registry.models import resolve

    resolved = resolve(root, ref, config)
    opts = {"context_window": context_window, "threads": threads, "seed": seed, "name": name or ref}
    if resolved.adapter and not mergeable(resolved):
        llm = TransformersLLM(resolved.model_dir, loaded=load_peft(root, resolved, config), **opts)
    else:
        llm = TransformersLLM(runnable_dir(root, resolved, config), **opts)
    llm.registry_version = resolved.ref
    return llm


def registry_llm(cfg: LLMConfig, seed: int = 0):
    if not cfg.model:
        raise TwinError("llm.model is required for llm.provider=registry (NAME@ALIAS, NAME/VERSION or NAME)")
    if cfg.backend == "llamacpp":
        raise TwinError("llm.provider=registry runs on transformers; set llm.backend to auto or transformers")
    root, config = _project(cfg)
    return load_registered(root, cfg.model, config, context_window=cfg.context_window,
                           threads=cfg.threads, seed=seed)
