"""LLM backends behind one small protocol: transformers, llama.cpp (GGUF), OpenAI-compatible HTTP.

All three take chat messages and stream text pieces. Shared behaviour callers can rely on:

- `temperature == 0` is greedy decoding; otherwise sampling seeded with the backend's seed
  (the seed is re-applied on every call, so the same call gives the same text).
- `stop` strings end generation; the stop string itself and anything after it are not returned.
  They are also enforced client-side, so a server that ignores `stop` still honours it.
- Blank (empty or whitespace) non-system messages are dropped. A prompt longer than
  `context_window - max_new_tokens` does not crash: the oldest turns are dropped first (the
  system messages and the last message stay), and if those alone are still too long, the last
  message is cut from the LEFT (its start is dropped, so a question at its end survives), with
  a logged warning. Each message is tokenized once for this, so fitting is linear in the prompt.
  If the system text alone does not fit, or `max_new_tokens` alone leaves no room, a TwinError
  says so; `fit(..., cut_last=False)` raises PromptTooLong instead of cutting the last message.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol, runtime_checkable

from llmtwin.errors import TwinError

log = logging.getLogger(__name__)

Message = dict[str, str]  # {"role": "system"|"user"|"assistant", "content": ...}

_MIN_PROMPT_ROOM = 16  # tokens a prompt needs at least (template tokens + a few of content)


class PromptTooLong(TwinError):
    """The system messages and the last message alone do not fit the prompt budget."""


@runtime_checkable
class LLM(Protocol):
    name: str
    context_window: int

    def stream(
        self,
        messages: list[Message],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        stop: list[str] | None = None,
        repetition_penalty: float = 1.0,
    ) -> Iterator[str]:
        """Text pieces as they are generated."""
        ...

    def complete(
        self,
        messages: list[Message],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        stop: list[str] | None = None,
        repetition_penalty: float = 1.0,
    ) -> str:
        """The whole generated text: "".join(stream(...))."""
        ...

    def count_tokens(self, text: str) -> int: ...


class _Base:
    """complete() and prompt fitting, shared by the backends."""

    name: str
    context_window: int

    def stream(
        self, messages, *, max_new_tokens, temperature=0.0, stop=None, repetition_penalty=1.0
    ) -> Iterator[str]:
        raise NotImplementedError

    def complete(
        self,
        messages: list[Message],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        stop: list[str] | None = None,
        repetition_penalty: float = 1.0,
    ) -> str:
        return "".join(
            self.stream(
                messages,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                stop=stop,
                repetition_penalty=repetition_penalty,
            )
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, context_window={self.context_window})"

    # -- backend hooks for fitting -------------------------------------------------------------
    def _prompt_tokens(self, messages: list[Message]) -> int:
        """Tokens of the whole templated prompt."""
        raise NotImplementedError

    def _cut_left(self, text: str, n_tokens: int) -> str:
        """`text` without its first `n_tokens` tokens."""
        raise NotImplementedError

    def fit(self, messages: list[Message], max_new_tokens: int, *, cut_last: bool = True) -> list[Message]:
        """The messages to send so that the templated prompt leaves `max_new_tokens` free.

        Blank non-system turns are dropped; then, if the prompt is too long, the oldest turns go
        first (system messages and the last message stay); then the last message loses its start
        (`cut_last`), or PromptTooLong says how far over it is. Every message is tokenized once,
        the whole prompt a few times: linear in the prompt, however many turns are dropped.
        """
        budget = self.context_window - max_new_tokens
        if budget < _MIN_PROMPT_ROOM:
            raise TwinError(
                f"{self.name}: max_new_tokens={max_new_tokens} leaves no room for the prompt in a "
                f"context window of {self.context_window} tokens"
            )
        messages = [dict(m) for m in messages if m["role"] == "system" or m["content"].strip()]
        total = self._prompt_tokens(messages)
        if total <= budget:
            return messages
        before = total
        kept, total = self._drop_oldest(messages, total, budget)
        if total > budget:
            kept, total = self._cut_last(kept, total, budget, cut_last)
        done = []
        if len(kept) < len(messages):
            done.append(f"dropped the {len(messages) - len(kept)} oldest of {len(messages)} messages")
        if kept[-1] != messages[-1]:
            done.append("dropped the start of the last message")
        log.warning(
            "%s: prompt of %d tokens exceeds %d (context %d - max_new_tokens %d); %s to fit",
            self.name, before, budget, self.context_window, max_new_tokens, " and ".join(done),
        )
        return kept

    def _drop_oldest(self, messages: list[Message], total: int, budget: int) -> tuple[list[Message], int]:
        """Drop the oldest droppable turns (not system, not the last) until the prompt fits or
        none is left, the turns kept beginning with a user's: (messages, their prompt tokens). How
        many go is estimated from each turn's tokens plus its share of the template, then checked
        on the whole prompt."""
        last = len(messages) - 1
        droppable = [i for i, m in enumerate(messages) if m["role"] != "system" and i != last]
        if not droppable:
            return messages, total
        keep_always = [m for i, m in enumerate(messages) if m["role"] == "system" or i == last]
        base = self._prompt_tokens(keep_always)
        cost = {i: self.count_tokens(messages[i]["content"]) for i in droppable}
        template = max(0, total - base - sum(cost.values())) / len(droppable)  # per turn
        first, room = len(droppable), budget - base  # keep droppable[first:], the newest turns
        while first > 0 and cost[droppable[first - 1]] + template <= room:
            first -= 1
            room -= cost[droppable[first]] + template
        while True:
            if 0 < first < len(droppable) and messages[droppable[first]]["role"] == "assistant":
                first += 1  # what is kept starts with a user turn, as chat templates expect
                continue
            gone = set(droppable[:first])
            kept = [m for i, m in enumerate(messages) if i not in gone]
            total = base if first == len(droppable) else self._prompt_tokens(kept)
            if total <= budget or first == len(droppable):
                return kept, total
            excess = total - budget  # the estimate was short (tokens merge across turns): more go
            while excess > 0 and first < len(droppable):
                excess -= cost[droppable[first]] + template
                first += 1

    def _cut_last(self, messages: list[Message], total: int, budget: int, cut: bool) -> tuple[list[Message], int]:
        """The system messages and the last message, with the start of the last cut off until
        the prompt fits; PromptTooLong if `cut` is False, TwinError if system text alone is too long."""
        last = messages[-1]
        if not cut:
            raise PromptTooLong(
                f"{self.name}: the latest message ({self.count_tokens(last['content'])} tokens) with the system "
                f"messages makes a prompt of {total} tokens, over the {budget} tokens left for one "
                f"(context_window {self.context_window} - max_new_tokens {self.context_window - budget}); "
                "shorten the message or ask for fewer new tokens"
            )
        messages = [dict(m) for m in messages]
        for _ in range(4):  # each round cuts by the excess; token merges at the cut may leave a few
            if last["role"] == "system" or not messages[-1]["content"]:
                break
            messages[-1]["content"] = self._cut_left(messages[-1]["content"], total - budget + 4)
            total = self._prompt_tokens(messages)
            if total <= budget:
                return messages, total
        raise TwinError(
            f"{self.name}: the prompt ({total} tokens) does not fit in {budget} tokens "
            f"(context_window {self.context_window} - max_new_tokens {self.context_window - budget}), "
            "even after dropping every earlier message and cutting the last; shorten the system prompt "
            "or raise llm.context_window"
        )


class _StopFilter:
    """Cuts a stream of text pieces at the first stop string, holding back possible prefixes."""

    def __init__(self, stop: list[str] | None):
        self.stop = [s for s in (stop or []) if s]
        self.pending = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        """Text safe to emit now; sets `stopped` once a stop string is seen."""
        if self.stopped:
            return ""
        if not self.stop:
            return piece
        self.pending += piece
        hits = [i for i in (self.pending.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.stopped = True
            out, self.pending = self.pending[: min(hits)], ""
            return out
        hold = 0  # longest tail of pending that could still start a stop string
        for s in self.stop:
            for k in range(min(len(s) - 1, len(self.pending)), hold, -1):
                if self.pending.endswith(s[:k]):
                    hold = k
                    break
        cut = len(self.pending) - hold
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out

    def flush(self) -> str:
        out, self.pending = ("" if self.stopped else self.pending), ""
        return out


def _set_torch_threads(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)


class TransformersLLM(_Base):
    """A local Hugging Face causal LM (float32, eval mode) with its chat template.

    `model` and `tokenizer` are public: training code reuses them. `threads` sets torch's thread
    count for the process (torch has one pool); None leaves torch's default. stream() yields
    whole words (TextIteratorStreamer flushes at spaces/newlines). Sampling seeds torch's global
    RNG with `seed` at the start of each call.
    """

    def __init__(
        self,
        model_dir: Path,
        *,
        context_window: int,
        threads: int | None = None,
        seed: int = 0,
        name: str,
        loaded: tuple | None = None,
    ):
        """`loaded`: an already built (model, tokenizer) to run instead of loading `model_dir`
        (e.g. a PEFT prompt-tuning model, which has no plain HF dir); `model_dir` then only names it."""
        from llmtwin.models.packaged import quiet_transformers, set_offline

        set_offline()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_dir = Path(model_dir)
        self.name = name
        self.context_window = context_window
        self.seed = seed
        _set_torch_threads(threads)
        if loaded is not None:
            self.model, self.tokenizer = loaded
        else:
            try:
                with quiet_transformers():
                    self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
                    self.model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch.float32)
            except (OSError, ValueError) as e:
                raise TwinError(f"cannot load a Hugging Face model from {self.model_dir}: {e}") from e
        self.model.eval()
        if self.tokenizer.chat_template is None:
            raise TwinError(f"{self.model_dir}: the tokenizer has no chat template (an instruct model is needed)")
        eos = self.model.generation_config.eos_token_id
        eos = list(eos) if isinstance(eos, (list, tuple)) else ([eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in eos:
            eos.append(self.tokenizer.eos_token_id)
        self.eos_token_ids = eos
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else (eos[0] if eos else 0)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def _render(self, messages: list[Message]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _prompt_tokens(self, messages: list[Message]) -> int:
        return self.count_tokens(self._render(messages))

    def _cut_left(self, text: str, n_tokens: int) -> str:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return self.tokenizer.decode(ids[n_tokens:]) if n_tokens < len(ids) else ""

    def _generation_config(self, max_new_tokens: int, temperature: float, repetition_penalty: float = 1.0):
        import copy

        cfg = copy.deepcopy(self.model.generation_config)
        cfg.max_new_tokens = max_new_tokens
        cfg.max_length = None
        cfg.eos_token_id = self.eos_token_ids
        cfg.pad_token_id = self.pad_token_id
        cfg.repetition_penalty = repetition_penalty if repetition_penalty != 1.0 else None
        if temperature > 0:
            cfg.do_sample = True
            cfg.temperature = temperature
        else:  # greedy; clear sampling knobs so transformers does not warn about unused ones
            cfg.do_sample = False
            cfg.temperature = None
            cfg.top_p = None
            cfg.top_k = None
            cfg.min_p = None
        return cfg

    def stream(
        self,
        messages: list[Message],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        stop: list[str] | None = None,
        repetition_penalty: float = 1.0,
    ) -> Iterator[str]:
        import torch
        from transformers import (
            StoppingCriteria,
            StoppingCriteriaList,
            TextIteratorStreamer,
        )

        messages = self.fit(messages, max_new_tokens)
        enc = self.tokenizer(self._render(messages), add_special_tokens=False, return_tensors="pt")
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        halt = threading.Event()  # set by the consumer: a stop string was seen, or it went away

        class _Halt(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), halt.is_set(), dtype=torch.bool)

        failure: list[Exception] = []

        def run() -> None:
            try:
                if temperature > 0:
                    torch.manual_seed(self.seed)
                with torch.inference_mode():
                    self.model.generate(
                        **enc,
                        generation_config=self._generation_config(max_new_tokens, temperature, repetition_penalty),
                        stopping_criteria=StoppingCriteriaList([_Halt()]),
                        streamer=streamer,
                    )
            except Exception as e:  # noqa: BLE001 - re-raised in the consumer's thread below
                failure.append(e)
                streamer.end()

        thread = threading.Thread(target=run, name=f"generate-{self.name}", daemon=True)
        thread.start()
        cut = _StopFilter(stop)
        try:
            for piece in streamer:
                out = cut.feed(piece)
                if out:
                    yield out
                if cut.stopped:
                    halt.set()
                    break
            else:
                tail = cut.flush()
                if tail:
                    yield tail
        finally:
            halt.set()  # the streamer's queue is unbounded: generate() ends at the next token
            thread.join()
        if failure:
            raise TwinError(f"{self.name}: generation failed: {failure[0]}") from failure[0]


def _cpu_has_amx() -> bool:
    """Whether this CPU reports Intel AMX tiles (Linux /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return any("amx_tile" in line for line in f if line.startswith("flags"))
    except OSError:
        return False


_PARAMS_LOCK = threading.Lock()


@contextmanager
def _without_extra_buffers(active: bool):
    """Load a llama.cpp model without its extra CPU buffer types (weight repacking, AMX tiles).

    On a CPU with AMX, a llama-cpp-python built with -march=native (0.3.35 and 0.3.36, built here
    on 2026-12-08) crashes with SIGSEGV in the first decode of any prompt longer than a few tokens;
    with `use_extra_bufts = False` it runs. llama-cpp-python's `Llama` does not take that setting,
    so the default model parameters it starts from are switched for the duration of the load."""
    if not active:
        yield
        return
    import llama_cpp.llama_cpp as lib

    with _PARAMS_LOCK:
        default = lib.llama_model_default_params

        def params():
            p = default()
            p.use_extra_bufts = False
            return p

        lib.llama_model_default_params = params
        try:
            yield
        finally:
            lib.llama_model_default_params = default


class LlamaCppLLM(_Base):
    """A GGUF model run by llama.cpp (llama-cpp-python), with the chat template from the GGUF.

    A llama.cpp context is not thread-safe: one generation runs at a time per instance, and other
    threads wait (the lock is held until a stream is exhausted or closed). llama.cpp reuses the KV
    cache of a shared prompt prefix between calls, so repeated system prompts prefill for free.
    """

    def __init__(
        self,
        gguf: Path,
        *,
        context_window: int,
        threads: int | None = None,
        seed: int = 0,
        name: str,
    ):
        try:
            import llama_cpp
        except ImportError as e:
            raise TwinError("llama.cpp backend needs llama-cpp-python: `pip install llama-cpp-python`") from e
        self.gguf = Path(gguf)
        self.name = name
        self.context_window = context_window
        self.seed = seed
        try:
            with _without_extra_buffers(_cpu_has_amx()):
                self.llama = llama_cpp.Llama(
                    model_path=str(self.gguf),
                    n_ctx=context_window,
                    n_threads=threads or os.cpu_count() or 1,
                    seed=seed,
                    flash_attn=True,  # prompt prefill 113 → 138 tokens/s for a 400-token RAG prompt here
                    verbose=False,
                )
        except (ValueError, RuntimeError) as e:
            raise TwinError(f"llama.cpp cannot load {self.gguf}: {e}") from e
        self._formatter = self._chat_formatter()
        self._lock = threading.Lock()

    def _chat_formatter(self):
        """The GGUF's own Jinja chat template (what create_chat_completion uses), for counting."""
        from llama_cpp import llama_chat_format

        template = self.llama.metadata.get("tokenizer.chat_template")
        if not template:
            return None

        def token(key: str) -> str:
            tid = self.llama.metadata.get(key)
            return self.llama.detokenize([int(tid)], special=True).decode("utf-8", "replace") if tid else ""

        return llama_chat_format.Jinja2ChatFormatter(
            template=template,
            eos_token=token("tokenizer.ggml.eos_token_id"),
            bos_token=token("tokenizer.ggml.bos_token_id"),
        )

    def count_tokens(self, text: str) -> int:
        return len(self.llama.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def _prompt_tokens(self, messages: list[Message]) -> int:
        if self._formatter is None:  # no template in the GGUF: content plus a per-message allowance
            return sum(self.count_tokens(m["content"]) + 8 for m in messages) + 8
        prompt = self._formatter(messages=messages).prompt
        return len(self.llama.tokenize(prompt.encode("utf-8"), add_bos=True, special=True))

    def _cut_left(self, text: str, n_tokens: int) -> str:
        ids = self.llama.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        if n_tokens >= len(ids):
            return ""
        return self.llama.detokenize(ids[n_tokens:]).decode("utf-8", "ignore")

    def stream(
        self,
        messages: list[Message],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        stop: list[str] | None = None,
        repetition_penalty: float = 1.0,
    ) -> Iterator[str]:
        messages = self.fit(messages, max_new_tokens)
        with self._lock:
            yield from self._stream_locked(messages, max_new_tokens, temperature, stop, repetition_penalty)

    def _stream_locked(self, messages, max_new_tokens, temperature, stop, repetition_penalty) -> Iterator[str]:
        try:
            chunks = self.llama.create_chat_completion(
                messages=messages,
                max_tokens=max_new_tokens,
                temperature=temperature,
                seed=self.seed,
                repeat_penalty=repetition_penalty,
                stop=list(stop) if stop else None,
                stream=True,
            )
        except ValueError as e:
            raise TwinError(f"{self.name}: {e}") from e
        cut = _StopFilter(stop)
        try:
            for chunk in chunks:
                piece = chunk["choices"][0]["delta"].get("content") or ""
                out = cut.feed(piece)
                if out:
                    yield out
                if cut.stopped:
                    return
            tail = cut.flush()
            if tail:
                yield tail
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()


class OpenAILLM(_Base):
    """Any OpenAI-compatible chat endpoint (vLLM, Ollama, llama.cpp server, OpenAI).

    `count_tokens` is an APPROXIMATION (len(text) // 4 + 1): the server's tokenizer is unknown
    here. Prompt fitting uses it too, so keep some headroom in `context_window` for such models.
    The API key comes from the environment variable `api_key_env`; if it is unset, "EMPTY" is
    sent (what local servers expect). Connection and API errors become TwinError naming base_url.
    """

    def __init__(self, base_url: str, model: str, api_key_env: str, *, context_window: int, name: str):
        import openai

        self.base_url = base_url
        self.model = model
        self.name = name
        self.context_window = context_window
        self.client = openai.OpenAI(
            base_url=base_url,
            api_key=os.environ.get(api_key_env) or "EMPTY",
            max_retries=1,
        )

    def count_tokens(self, text: str) -> int:
        return len(text) // 4 + 1

    def _prompt_tokens(self, messages: list[Message]) -> int:
        return sum(self.count_tokens(m["content"]) + 4 for m in messages) + 3

    def _cut_left(self, text: str, n_tokens: int) -> str:
        return text[n_tokens * 4 :]

    def _error(self, e: Exception) -> TwinError:
        import openai

        if isinstance(e, openai.APIConnectionError):
            return TwinError(f"cannot reach the LLM server at {self.base_url}: {e}")
        if isinstance(e, openai.APIStatusError):
            return TwinError(f"LLM server at {self.base_url} answered {e.status_code}: {e.message}")
        return TwinError(f"LLM server at {self.base_url}: {e}")

    def stream(
        self,
        messages: list[Message],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        stop: list[str] | None = None,
        repetition_penalty: float = 1.0,
    ) -> Iterator[str]:
        import openai

        messages = self.fit(messages, max_new_tokens)
        kwargs: dict = {"stop": list(stop)} if stop else {}
        if repetition_penalty != 1.0:  # not in the OpenAI API; vLLM and llama.cpp servers read it
            kwargs["extra_body"] = {"repetition_penalty": repetition_penalty}
        cut = _StopFilter(stop)
        try:
            chunks = self.client.chat.completions.create(
                model=self.model,
                messages=messages,
                max_tokens=max_new_tokens,
                temperature=temperature,
                stream=True,
                **kwargs,
            )
            with chunks:
                for chunk in chunks:
                    if not chunk.choices:
                        continue
                    out = cut.feed(chunk.choices[0].delta.content or "")
                    if out:
                        yield out
                    if cut.stopped:
                        return
            tail = cut.flush()
            if tail:
                yield tail
        except openai.OpenAIError as e:
            raise self._error(e) from e
