"""Reward functions for `twin data build preference --from reward`: `reward(prompt, completion, record) -> float`.

Built in (higher is better):
- `length`            the completion's number of words;
- `brevity`           minus its number of words (shorter is better);
- `regex:<pattern>`   1.0 if the pattern is found in the completion (Python `re.search`), else 0.0;
- `contains:<text>`   1.0 if the completion contains the text (case-insensitive), else 0.0;
- `support`           the share of the completion's content words found in the record's `context`
                      string (how grounded it is; the same word test as answer checking);
- `module:function`   any importable Python callable with that signature (e.g. `mypkg.rewards:polite`).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any

from llmtwin.errors import TwinError

Reward = Callable[[str, str, dict[str, Any]], float]


def _length(prompt: str, completion: str, record: dict[str, Any]) -> float:
    return float(len(completion.split()))


def _brevity(prompt: str, completion: str, record: dict[str, Any]) -> float:
    return -float(len(completion.split()))


def _support(prompt: str, completion: str, record: dict[str, Any]) -> float:
    from llmtwin.data.preference import RecordError
    from llmtwin.generation.answer import content_words

    context = record.get("context")
    if not isinstance(context, str) or not context.strip():
        raise RecordError("reward 'support' needs a string field 'context'")
    words = content_words(completion)
    if not words:
        return 0.0
    return len(words & content_words(context)) / len(words)


def get_reward(spec: str) -> Reward:
    """The reward function a spec names; a bad spec is a TwinError naming it."""
    spec = spec.strip()
    if spec == "length":
        return _length
    if spec == "brevity":
        return _brevity
    if spec == "support":
        return _support
    if spec.startswith("regex:"):
        try:
            pattern = re.compile(spec[len("regex:"):])
        except re.error as e:
            raise TwinError(f"--reward {spec!r}: bad regular expression: {e}") from e
        return lambda p, c, r: 1.0 if pattern.search(c) else 0.0
    if spec.startswith("contains:"):
        needle = spec[len("contains:"):].lower()
        if not needle:
            raise TwinError(f"--reward {spec!r}: nothing to look for after 'contains:'")
        return lambda p, c, r: 1.0 if needle in c.lower() else 0.0
    module, sep, name = spec.partition(":")
    if sep and module and name:
        try:
            fn = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as e:
            raise TwinError(f"--reward {spec!r}: cannot import {name} from {module}: {e}") from e
        if not callable(fn):
            raise TwinError(f"--reward {spec!r}: {module}.{name} is not callable")
        return fn
    raise TwinError(
        f"--reward {spec!r}: expected length, brevity, support, regex:<pattern>, contains:<text> or module:function"
    )
