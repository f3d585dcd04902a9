"""Trainer callbacks shared by the trainers: metrics.jsonl as steps happen, and a progress display.

Imported only inside training functions (it pulls in transformers).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from transformers import TrainerCallback

KEEP = ("loss", "eval_loss", "learning_rate", "grad_norm", "epoch", "reward", "kl", "tokens_per_s", "num_input_tokens_seen")


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop lines after `last_step` (a resumed run re-logs the steps after its checkpoint)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= last_step:
                keep.append(line)
        except ValueError:
            continue
    path.write_text("".join(k + "\n" for k in keep), encoding="utf-8")


class MetricsFile(TrainerCallback):
    """Append one JSON object per log event to metrics.jsonl, with tokens/s between log events."""

    def __init__(self, path: Path):
        self.path = path
        self._last: tuple[float, int] | None = None  # (time, tokens seen) at the previous log
        self.begin_tokens = 0  # tokens seen when this session started (a resumed run starts above 0)

    def on_train_begin(self, args, state, control, **kw):
        self.begin_tokens = state.num_input_tokens_seen
        self._last = (time.perf_counter(), state.num_input_tokens_seen)

    def on_log(self, args, state, control, logs=None, **kw):
        logs = dict(logs or {})
        now, seen = time.perf_counter(), state.num_input_tokens_seen
        if "loss" in logs and self._last is not None and now > self._last[0]:
            logs["tokens_per_s"] = (seen - self._last[1]) / (now - self._last[0])
            self._last = (now, seen)
        row = {"step": state.global_step}
        row.update({k: float(v) for k, v in logs.items() if isinstance(v, (int, float)) and (k in KEEP or k.startswith("eval_"))})
        if len(row) > 1:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")


class Progress(TrainerCallback):
    """A rich progress bar on stderr (step / total, loss, tokens/s); plain log lines when not a terminal."""

    def __init__(self, label: str = "Training"):
        self.label = label
        self.bar = None
        self.task = None
        self._start: tuple[float, int] | None = None
        self._loss: float | None = None
        self._eval: float | None = None

    def on_train_begin(self, args, state, control, **kw):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as Bar

        console = Console(stderr=True)
        self._start = (time.perf_counter(), state.num_input_tokens_seen)
        if console.is_terminal:
            self.bar = Bar(f"[bold]{self.label}", BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                           TimeRemainingColumn(), console=console, transient=True)
            self.bar.__enter__()
            self.task = self.bar.add_task(self.label, total=state.max_steps, completed=state.global_step, info="")

    def _info(self, state) -> str:
        parts = []
        if self._loss is not None:
            parts.append(f"loss {self._loss:.4f}")
        if self._eval is not None:
            parts.append(f"eval {self._eval:.4f}")
        if self._start is not None:
            dt = time.perf_counter() - self._start[0]
            if dt > 0:
                parts.append(f"{(state.num_input_tokens_seen - self._start[1]) / dt:.0f} tok/s")
        return "  ".join(parts)

    def on_log(self, args, state, control, logs=None, **kw):
        logs = logs or {}
        if "loss" in logs:
            self._loss = float(logs["loss"])
        if "eval_loss" in logs:
            self._eval = float(logs["eval_loss"])
        if self.bar is None and ("loss" in logs or "eval_loss" in logs):
            print(f"step {state.global_step}/{state.max_steps}  {self._info(state)}", file=sys.stderr, flush=True)

    def on_step_end(self, args, state, control, **kw):
        if self.bar is not None:
            self.bar.update(self.task, completed=state.global_step, info=self._info(state))

    def on_train_end(self, args, state, control, **kw):
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


class TimeLimit(TrainerCallback):
    """Stop training gracefully (the model is still saved) after `minutes` of training in this session."""

    def __init__(self, minutes: float):
        self.seconds = minutes * 60
        self.start = time.perf_counter()

    def on_train_begin(self, args, state, control, **kw):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        if time.perf_counter() - self.start >= self.seconds:
            control.should_training_stop = True
