"""`/v1/chat/completions`: a plan (validated, before queueing), a generation thread, and the
OpenAI response shapes (one JSON object, or server-sent events ending with `data: [DONE]`).

The LLM generates in a thread of its own; its text reaches the event loop through an asyncio
queue (`emit` is Twin.ask's `on_text`, or called per piece of LLM.stream). When the client goes
away, the next `emit` raises inside the generating thread: the stream is closed, the LLM lock
released and the queue slot freed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from llmtwin.errors import TwinError
from llmtwin.serve.limits import ShuttingDown, Ticket, error_body
from llmtwin.serve.schemas import ChatRequest

log = logging.getLogger(__name__)

KEEPALIVE_S = 2.0  # a comment line this often while a stream waits in the queue


class ApiError(Exception):
    """A request the server refuses: an HTTP status and an OpenAI-shaped error body."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None, type_: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_

    def body(self) -> dict:
        return error_body(self.message, self.type, self.code, self.param)


class _Cancelled(Exception):
    """Raised inside the generating thread when its client has gone."""


Emit = Callable[[str], None]


@dataclass
class Plan:
    """What to run for one chat request: `run(emit, cancelled)` returns the final fields."""

    model: str
    rag: bool
    max_tokens: int
    run: Callable[[Emit, Callable[[], bool]], dict[str, Any]]
    include_usage: bool = False
    id: str = field(default_factory=lambda: "chatcmpl-" + secrets.token_hex(12))
    created: int = field(default_factory=lambda: int(time.time()))


def _text(content, index: int) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if part.type != "text" or part.text is None:
            raise ApiError(400, f"messages.{index}.content: only text parts are supported, got {part.type!r}", param=f"messages.{index}.content")
        parts.append(part.text)
    return "".join(parts)


def make_plan(body: ChatRequest, *, twin, llm, rag_model: str, server_max_tokens: int) -> Plan:
    """Check the request and decide what answers it; every refusal is an ApiError (4xx)."""
    rag = body.model == rag_model or body.rag is True
    if not rag and body.model != llm.name:
        raise ApiError(404, f"model {body.model!r} not found: use {rag_model!r} or {llm.name!r} (GET /v1/models)", param="model", code="model_not_found")
    if body.n != 1:
        raise ApiError(400, "n: only n=1 is supported", param="n")
    if body.tools:
        raise ApiError(400, "tools: tool calls are not supported", param="tools")
    if not rag and (body.k is not None or body.mode is not None or body.filters is not None):
        raise ApiError(400, f"k, mode and filters apply to retrieval: use model {rag_model!r} or rag=true", param="model")
    max_tokens = body.max_completion_tokens or body.max_tokens or twin.config.llm.max_new_tokens
    if max_tokens > server_max_tokens:
        raise ApiError(400, f"max_tokens={max_tokens} is over this server's limit of {server_max_tokens}", param="max_tokens")
    if max_tokens > llm.context_window - 64:
        raise ApiError(400, f"max_tokens={max_tokens} leaves no room for a prompt in the {llm.context_window}-token context", param="max_tokens")
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": _text(m.content, i)} for i, m in enumerate(body.messages)]
    temperature = float(body.temperature) if body.temperature is not None else None
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    if rag:
        last = messages[-1]
        if last["role"] != "user" or not last["content"].strip():
            raise ApiError(400, "messages: the last message must be the user's question", param="messages")
        question = last["content"]
        _fit(llm, [{"role": "system", "content": twin.config.generation.system_prompt},
                   {"role": "user", "content": question}], max_tokens)  # the sources come on top
        twin.store()  # nothing ingested yet: a TwinError (400) now, not an error mid-stream

        def run_rag(emit: Emit, cancelled: Callable[[], bool]) -> dict[str, Any]:
            answer = twin.ask(
                question, k=body.k, mode=body.mode, filters=body.filters, on_text=emit,
                max_new_tokens=max_tokens, temperature=temperature, cancelled=cancelled,
            )  # `cancelled` stops generation at the next token, even while sentences are held back
            completion = llm.count_tokens(answer.answer) if answer.answer else 0
            prompt = sum(llm.count_tokens(h.chunk.text) for h in answer.hits) + llm.count_tokens(question)
            return {
                "text": answer.answer,
                "finish_reason": "stop",
                "usage": _usage(prompt, completion),
                "extra": {
                    "citations": [c.to_dict() for c in answer.citations],
                    "sources": [_source(n, h) for n, h in enumerate(answer.hits, start=1)],
                    "abstained": answer.abstained,
                    "trace_id": answer.trace_id,
                    "timings": answer.timings,
                },
            }

        return Plan(body.model, True, max_tokens, run_rag, include_usage)

    if not any(m["content"].strip() for m in messages):
        raise ApiError(400, "messages: all messages are empty", param="messages")
    messages = _fit(llm, messages, max_tokens)
    stop = [body.stop] if isinstance(body.stop, str) else body.stop
    cfg = twin.config.llm
    penalty = float(body.repetition_penalty) if body.repetition_penalty is not None else cfg.repetition_penalty

    def run_plain(emit: Emit, cancelled: Callable[[], bool]) -> dict[str, Any]:
        pieces = llm.stream(
            messages, max_new_tokens=max_tokens,
            temperature=cfg.temperature if temperature is None else temperature,
            stop=stop or None, repetition_penalty=penalty,
        )
        out: list[str] = []
        try:
            for piece in pieces:
                out.append(piece)
                emit(piece)
        finally:
            pieces.close()  # releases the LLM at once when the client has gone
        text = "".join(out)
        completion = llm.count_tokens(text) if text else 0
        prompt = sum(llm.count_tokens(m["content"]) for m in messages)
        return {
            "text": text,
            "finish_reason": "length" if completion >= max_tokens else "stop",
            "usage": _usage(prompt, completion),
            "extra": {},
        }

    return Plan(body.model, False, max_tokens, run_plain, include_usage)


def _fit(llm, messages: list[dict], max_tokens: int) -> list[dict]:
    """The messages that fit the context with `max_tokens` to spare (blank turns and then the
    oldest turns dropped); a 400 when the system messages and the latest message alone do not."""
    from llmtwin.models.llm import PromptTooLong

    try:
        return llm.fit(messages, max_tokens, cut_last=False)
    except PromptTooLong as e:
        raise ApiError(400, f"messages: {e}", param="messages", code="context_length_exceeded") from e


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _source(n: int, hit) -> dict[str, Any]:
    c = hit.chunk
    return {
        "n": n, "chunk_id": c.chunk_id, "doc_id": c.doc_id, "source": c.source,
        "heading_path": c.heading_path, "score": hit.score, "text": c.text,
    }


class Generation:
    """One plan run in a thread; its events ("text", "done", "error", "cancelled") come to the loop."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.cancel = threading.Event()
        self.events: asyncio.Queue = asyncio.Queue()
        self.started = False

    def stop(self) -> None:
        """The server is stopping: end this generation and tell its client (call on the loop)."""
        self.cancel.set()
        self.events.put_nowait(("shutdown", None))

    def start(self, ticket: Ticket) -> None:
        loop = asyncio.get_running_loop()
        self.started = True

        def post(item) -> None:
            try:
                loop.call_soon_threadsafe(self.events.put_nowait, item)
            except RuntimeError:  # the loop has closed
                pass

        def emit(text: str) -> None:
            if self.cancel.is_set():
                raise _Cancelled()
            if text:
                post(("text", text))

        def run() -> None:
            try:
                result = self.plan.run(emit, self.cancel.is_set)
                post(("cancelled", None) if self.cancel.is_set() else ("done", result))
            except _Cancelled:
                post(("cancelled", None))
            except TwinError as e:
                post(("error", str(e)))
            except Exception as e:
                log.exception("generation failed")
                post(("error", f"internal error: {type(e).__name__}: {e}"))
            finally:
                try:
                    loop.call_soon_threadsafe(ticket.done)
                except RuntimeError:
                    pass

        threading.Thread(target=run, name="generate", daemon=True).start()


def _event(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _chunk(plan: Plan, delta: dict, finish: str | None = None, **extra) -> str:
    return _event({
        "id": plan.id, "object": "chat.completion.chunk", "created": plan.created, "model": plan.model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra,
    })


async def stream_events(plan: Plan, ticket: Ticket, gen: Generation) -> AsyncIterator[str]:
    """Server-sent events: the role, text pieces as generated, a final chunk with finish_reason
    (and citations/sources for RAG), optionally usage, then `data: [DONE]`."""
    try:
        yield _chunk(plan, {"role": "assistant", "content": ""})
        try:
            while not await ticket.wait(KEEPALIVE_S):
                yield f": queued, position {ticket.position()}\n\n"
        except ShuttingDown as e:
            yield _event(error_body(str(e), "server_error", "shutting_down"))
            yield "data: [DONE]\n\n"
            return
        gen.start(ticket)
        while True:
            kind, value = await gen.events.get()
            if kind == "text":
                yield _chunk(plan, {"content": value})
            elif kind == "done":
                yield _chunk(plan, {}, value["finish_reason"], **value["extra"])
                if plan.include_usage:
                    yield _event({
                        "id": plan.id, "object": "chat.completion.chunk", "created": plan.created,
                        "model": plan.model, "choices": [], "usage": value["usage"],
                    })
                break
            elif kind == "error":
                yield _event(error_body(value, "server_error" if value.startswith("internal error") else "invalid_request_error"))
                break
            elif kind == "shutdown":
                yield _event(error_body("the server is shutting down", "server_error", "shutting_down"))
                break
            else:  # cancelled: nobody is listening
                return
        yield "data: [DONE]\n\n"
    finally:
        if gen.started:
            gen.cancel.set()
        else:
            ticket.abandon()


async def complete(plan: Plan, ticket: Ticket, gen: Generation, is_disconnected) -> dict | None:
    """The whole answer as one chat.completion object (None if the client went away)."""
    try:
        while not await ticket.wait(0.5):
            if await is_disconnected():
                return None
        gen.start(ticket)
        while True:
            try:
                kind, value = await asyncio.wait_for(gen.events.get(), 0.5)
            except asyncio.TimeoutError:
                if await is_disconnected():
                    return None
                continue
            if kind == "done":
                return {
                    "id": plan.id, "object": "chat.completion", "created": plan.created, "model": plan.model,
                    "choices": [{
                        "index": 0, "message": {"role": "assistant", "content": value["text"]},
                        "finish_reason": value["finish_reason"],
                    }],
                    "usage": value["usage"],
                    **value["extra"],
                }
            if kind == "error":
                if value.startswith("internal error"):
                    raise ApiError(500, value, type_="server_error")
                raise ApiError(400, value)
            if kind == "shutdown":
                raise ShuttingDown()
            if kind == "cancelled":
                return None
    finally:
        if gen.started:
            gen.cancel.set()
        else:
            ticket.abandon()
