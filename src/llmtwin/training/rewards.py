"""Verifiable rewards for GRPO / PPO: one signature, parsed from a spec string.

    Reward = Callable[[list[str], list[str], dict[str, list]], list[float]]
             (prompts,   completions, extras: dataset columns, one value per completion) -> one score each

Specs (recipes and `--reward`, repeatable; several rewards are summed by the trainer):

    exact               1.0 if the completion's answer equals the row's `answer` (normalised), else 0.0
    regex:PATTERN       1.0 if PATTERN matches somewhere in the completion (re.MULTILINE), else 0.0
    code                the completion's Python code block run with the row's `tests` (assert lines)
                        in the bubblewrap sandbox (training/sandbox.py); the share of tests passed
    model:REF           a model trained by `twin train reward` (run dir, model dir or NAME@ALIAS)
                        scoring (prompt, completion)
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmtwin.errors import TwinError

log = logging.getLogger(__name__)

Reward = Callable[[list[str], list[str], dict[str, list]], list[float]]


# ---------------------------------------------------------------- exact answer

_ANSWER_RE = re.compile(r"(?:final answer|answer)\s*(?:is)?\s*[:=]?\s*(.+)", re.IGNORECASE)
_BOXED_RE = re.compile(r"\\boxed\{([^{}]*)\}")
_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def normalise_answer(text: str) -> str:
    """Lowercase, NFKC, no surrounding punctuation or articles, one space; numbers in canonical form."""
    text = unicodedata.normalize("NFKC", str(text)).strip().lower()
    text = re.sub(r"^(the|a|an)\s+", "", text)
    text = text.strip(" \t\n.,;:!?\"'`()[]{}*")
    text = re.sub(r"\s+", " ", text)
    if re.fullmatch(r"-?\d[\d,]*(\.\d+)?", text):
        number = float(text.replace(",", ""))
        text = str(int(number)) if number == int(number) else repr(number)
    return text


def extract_answer(completion: str) -> str:
    """The answer a completion gives: \\boxed{..}, else the last 'Answer: ..' line, else its last line."""
    boxed = _BOXED_RE.findall(completion)
    if boxed:
        return boxed[-1]
    for line in reversed(completion.strip().splitlines()):
        m = _ANSWER_RE.search(line)
        if m:
            return m.group(1)
    lines = [line for line in completion.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def exact_answer(prompts: list[str], completions: list[str], extras: dict[str, list]) -> list[float]:
    answers = extras.get("answer")
    if answers is None:
        raise TwinError("reward 'exact' needs an `answer` field in every dataset row")
    scores = []
    for completion, gold in zip(completions, answers):
        if gold is None:
            scores.append(0.0)
            continue
        gold_n = normalise_answer(gold)
        got = normalise_answer(extract_answer(completion))
        if got != gold_n and _NUMBER_RE.fullmatch(gold_n or "x"):
            # a numeric gold answer: the last number the completion states counts
            numbers = _NUMBER_RE.findall(completion)
            got = normalise_answer(numbers[-1]) if numbers else got
        scores.append(1.0 if got == gold_n else 0.0)
    return scores


# ---------------------------------------------------------------- regular-expression format

def regex_format(pattern: str) -> Reward:
    try:
        compiled = re.compile(pattern, re.MULTILINE)
    except re.error as e:
        raise TwinError(f"reward 'regex:{pattern}': not a valid regular expression ({e})") from e

    def regex_reward(prompts: list[str], completions: list[str], extras: dict[str, list]) -> list[float]:
        return [1.0 if compiled.search(c) else 0.0 for c in completions]

    regex_reward.__name__ = "regex"
    return regex_reward


# ---------------------------------------------------------------- code that must pass tests

_CODE_BLOCK_RE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)

# Runs the candidate, then each test statement on its own; prints one JSON line with the counts.
# The summary line carries a nonce read from stdin before the candidate runs, so a candidate that
# prints a fake summary does not know it (code that inspects the interpreter's frames still could:
# the sandbox contains such code, the score is only as trustworthy as this harness).
_HARNESS = '''
import json as _j, sys as _s
_nonce = _s.stdin.readline().strip()
_out = _s.stdout
_tests = _j.loads({tests!r})
_passed = 0
_ns = {{"__name__": "__candidate__"}}
try:
    exec(compile({code!r}, "candidate.py", "exec"), _ns)
    _loaded = True
except BaseException as _e:
    _loaded = False
    print("candidate failed to load:", type(_e).__name__, _e, file=_s.stderr)
if _loaded:
    for _t in _tests:
        try:
            exec(compile(_t, "test", "exec"), _ns)
            _passed += 1
        except BaseException as _e:
            print("test failed:", _t, type(_e).__name__, _e, file=_s.stderr)
_out.write("@@" + _nonce + _j.dumps({{"passed": _passed, "total": len(_tests), "loaded": _loaded}}) + "\\n")
'''


def extract_code(completion: str) -> str:
    """The first ```python block of a completion (an unterminated one counts); else the whole text."""
    m = _CODE_BLOCK_RE.search(completion)
    return m.group(1) if m else completion


def split_tests(tests: str | list[str]) -> list[str]:
    """Test statements: a list as given, or a string split into its non-empty, non-comment lines."""
    if isinstance(tests, list):
        return [str(t) for t in tests if str(t).strip()]
    return [line for line in str(tests).splitlines() if line.strip() and not line.strip().startswith("#")]


@dataclass
class CodeTests:
    """The `code` reward: share of the row's `tests` that pass; runs in the bubblewrap sandbox."""

    timeout: float = 5.0
    memory_mb: int = 512
    allow_fallback: bool = True
    isolation: str = ""  # how the last batch ran: "bwrap" or the labelled fallback
    last: list[dict[str, Any]] = field(default_factory=list)  # per completion: passed, total, seconds, stderr

    def __call__(self, prompts: list[str], completions: list[str], extras: dict[str, list]) -> list[float]:
        from llmtwin.training.sandbox import run_python

        tests_col = extras.get("tests")
        if tests_col is None:
            raise TwinError("reward 'code' needs a `tests` field (assert statements) in every dataset row")
        scores, self.last = [], []
        for completion, tests in zip(completions, tests_col):
            statements = split_tests(tests or [])
            if not statements:
                scores.append(0.0)
                self.last.append({"passed": 0, "total": 0, "error": "row has no tests"})
                continue
            script = _HARNESS.format(tests=json.dumps(statements), code=extract_code(completion))
            nonce = secrets.token_hex(8)
            result = run_python(script, timeout=self.timeout, memory_mb=self.memory_mb,
                                allow_fallback=self.allow_fallback, stdin=nonce + "\n")
            if result.isolation != self.isolation:
                self.isolation = result.isolation
                if result.isolation != "bwrap":
                    log.warning("code reward: %s", result.isolation)
            summary = {"passed": 0, "total": len(statements), "loaded": False}
            for line in result.stdout.splitlines():
                if line.startswith("@@" + nonce):
                    summary = json.loads(line[len(nonce) + 2:])
            scores.append(summary["passed"] / max(summary["total"], 1) if not result.timed_out else 0.0)
            self.last.append({**summary, "timed_out": result.timed_out, "seconds": result.seconds,
                              "isolation": result.isolation, "stderr": result.stderr[-500:]})
        return scores


# ---------------------------------------------------------------- a trained reward model

def reward_model(ref: str, project_root: Path | None = None) -> Reward:
    """Score (prompt, completion) with a model trained by `twin train reward` (a run dir, its model/
    dir or a registry ref NAME@ALIAS, resolved by `llmtwin.training.reward_model.RewardModel`)."""
    from llmtwin.training.reward_model import RewardModel

    rm = RewardModel.load(ref, project_root=project_root)

    def model_reward(prompts: list[str], completions: list[str], extras: dict[str, list]) -> list[float]:
        return [float(s) for s in rm.score(list(prompts), list(completions))]

    model_reward.__name__ = "model"
    return model_reward


# ---------------------------------------------------------------- specs

def parse_reward_spec(spec: str, project_root: Path | None = None) -> Reward:
    """A reward from its spec string: `exact`, `regex:PATTERN`, `code`, `model:REF` (registry refs need project_root)."""
    spec = spec.strip()
    kind, sep, arg = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "exact" and not sep:
        return exact_answer
    if kind == "regex":
        if not arg:
            raise TwinError(f"reward {spec!r}: regex needs a pattern, e.g. 'regex:^Answer:'")
        return regex_format(arg)
    if kind == "code" and not sep:
        return CodeTests()
    if kind == "model":
        if not arg.strip():
            raise TwinError(f"reward {spec!r}: model needs a reference, e.g. 'model:twin-reward@candidate'")
        return reward_model(arg.strip(), project_root)
    raise TwinError(f"reward {spec!r}: unknown; use exact, regex:PATTERN, code or model:REF")


def _text(x: Any) -> str:
    """A TRL prompt/completion (text, or conversational messages) as plain text."""
    if isinstance(x, str):
        return x
    if isinstance(x, list) and x and isinstance(x[0], dict):
        return str(x[-1].get("content", ""))
    return str(x)


def for_trl(reward: Reward, name: str) -> Callable[..., list[float]]:
    """`reward` with TRL's reward-function signature (prompts=, completions=, **columns)."""

    def trl_reward(prompts: list, completions: list, **kwargs: Any) -> list[float]:
        extras = {k: v for k, v in kwargs.items() if isinstance(v, list)}
        return reward([_text(p) for p in prompts], [_text(c) for c in completions], extras)

    trl_reward.__name__ = name
    return trl_reward


def spec_name(spec: str) -> str:
    """A short metric-safe name for a spec (regex patterns are dropped)."""
    return spec.split(":", 1)[0].strip().lower() or "reward"
