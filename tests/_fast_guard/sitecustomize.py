"""The `make test-fast` guard: with LLMTWIN_TEST_FAST=1, loading model weights raises and is logged.

tests/conftest.py loads this module in the pytest process and puts this folder first on PYTHONPATH,
so every Python subprocess of the run (the `twin` console script, `python -c ...`) imports it as
`sitecustomize` too. It patches, when they are first imported, the two places where model weights
are loaded: transformers' `PreTrainedModel.from_pretrained` (the embedder through
sentence-transformers, the LLM through transformers, training bases, rerankers, and the GGUF
dequantisation of the packaged LLM) and llama.cpp's `Llama.__init__`. Each attempt is appended to
$LLMTWIN_FAST_GUARD_LOG (with $PYTEST_CURRENT_TEST, which subprocesses inherit), so an attempt
that the code under test catches and survives still fails the run. Nothing heavy is imported here.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys

_PATCHES = {
    "transformers.modeling_utils": ("PreTrainedModel", "from_pretrained", True),
    "llama_cpp.llama": ("Llama", "__init__", False),
}
_busy: set[str] = set()


class ModelLoadInFastRun(RuntimeError):
    pass


def _refuse(what: str):
    test = os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" (", 1)[0]
    log = os.environ.get("LLMTWIN_FAST_GUARD_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"{test}\t{os.getpid()}\t{what}\n")
    raise ModelLoadInFastRun(f"{what}: a model load in a fast run (-m 'not model'); mark the test `model`")


def _patch(name: str, module) -> None:
    cls_name, attr, is_classmethod = _PATCHES[name]
    cls = getattr(module, cls_name, None)
    if cls is None or getattr(cls, "_llmtwin_fast_guard", False):
        return

    if is_classmethod:
        def guarded(klass, *args, **kwargs):
            _refuse(f"{klass.__name__}.{attr}({args[0] if args else ''})")

        setattr(cls, attr, classmethod(guarded))
    else:
        def guarded(self, *args, **kwargs):
            _refuse(f"{cls_name}.{attr}({kwargs.get('model_path', args[0] if args else '')})")

        setattr(cls, attr, guarded)
    cls._llmtwin_fast_guard = True


class _Finder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader of a patched module to patch it once executed."""

    def find_spec(self, name, path, target=None):
        if name not in _PATCHES or name in _busy:
            return None
        _busy.add(name)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            _busy.discard(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return None
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            _patch(name, module)

        spec.loader.exec_module = exec_and_patch
        return spec


def install() -> None:
    if any(isinstance(f, _Finder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _Finder())
    for name in _PATCHES:
        if name in sys.modules:
            _patch(name, sys.modules[name])


if os.environ.get("LLMTWIN_TEST_FAST") == "1":
    install()
