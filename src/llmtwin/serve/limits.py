"""What keeps the server safe under load and bad input: the generation queue, the request guard
(Host and Origin checks, API keys and body size), loopback checks and upload names that cannot
escape their folder."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import math
import time
import unicodedata
from collections import deque
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from llmtwin.errors import TwinError

# ---------------------------------------------------------------- generation queue


class QueueFull(Exception):
    def __init__(self, retry_after: int):
        super().__init__(f"the generation queue is full; retry in {retry_after} s")
        self.retry_after = retry_after


class ShuttingDown(Exception):
    def __init__(self):
        super().__init__("the server is shutting down")


class Ticket:
    """A place in the generation queue. `wait()` until it runs; `done()` or `abandon()` once."""

    def __init__(self, queue: GenerationQueue, granted: bool):
        self.queue = queue
        self.future: asyncio.Future = asyncio.get_running_loop().create_future()
        self.state = "waiting"
        self.started = 0.0
        if granted:
            self._grant()

    def _grant(self) -> None:
        self.state = "running"
        self.started = time.perf_counter()
        if not self.future.done():
            self.future.set_result(True)

    async def wait(self, timeout: float | None = None) -> bool:
        """True once this ticket holds a slot; False if `timeout` passed first; ShuttingDown if the
        server stops while it waits."""
        try:
            granted = await asyncio.wait_for(asyncio.shield(self.future), timeout)
        except asyncio.TimeoutError:
            return False
        if not granted:
            raise ShuttingDown()
        return True

    def position(self) -> int:
        try:
            return self.queue._waiting.index(self) + 1
        except ValueError:
            return 0

    def done(self) -> None:
        """The generation this ticket ran has ended: free its slot (call on the event loop)."""
        if self.state == "running":
            self.state = "done"
            self.queue._finished(self, time.perf_counter() - self.started)

    def abandon(self) -> None:
        """The client went away before its generation started (waiting, or granted but not begun)."""
        if self.state == "waiting":
            self.state = "done"
            self.queue._remove(self)
        elif self.state == "running":
            self.state = "done"
            self.queue._finished(self, None)


class GenerationQueue:
    """`slots` generations at once (the LLM runs one at a time) and at most `max_waiting` queued.

    Everything here runs on the event loop thread, so no locks: a generation thread frees its
    slot with `loop.call_soon_threadsafe(ticket.done)`.
    """

    def __init__(self, slots: int = 1, max_waiting: int = 32):
        self.slots = slots
        self.max_waiting = max_waiting
        self.running = 0
        self._waiting: deque[Ticket] = deque()
        self._durations: deque[float] = deque(maxlen=20)
        self.served = 0
        self.rejected = 0
        self.closed = False

    def close(self) -> None:
        """The server is stopping: waiting tickets are refused (ShuttingDown), new ones too."""
        self.closed = True
        while self._waiting:
            ticket = self._waiting.popleft()
            ticket.state = "done"
            if not ticket.future.done():
                ticket.future.set_result(False)

    def enter(self) -> Ticket:
        """A ticket, or QueueFull (→ 429 with Retry-After) when every slot and place is taken."""
        if self.closed:
            raise ShuttingDown()
        if self.running + len(self._waiting) >= self.slots + self.max_waiting:
            self.rejected += 1
            raise QueueFull(self.retry_after())
        if self.running < self.slots and not self._waiting:
            self.running += 1
            return Ticket(self, granted=True)
        ticket = Ticket(self, granted=False)
        self._waiting.append(ticket)
        return ticket

    def retry_after(self) -> int:
        """Seconds until a place is likely free: the recent mean generation time × queue length."""
        mean = sum(self._durations) / len(self._durations) if self._durations else 2.0
        return max(1, min(120, math.ceil(mean * (len(self._waiting) + 1) / self.slots)))

    def _finished(self, ticket: Ticket, seconds: float | None) -> None:
        self.running -= 1
        if seconds is not None:
            self._durations.append(seconds)
            self.served += 1
        self._promote()

    def _remove(self, ticket: Ticket) -> None:
        try:
            self._waiting.remove(ticket)
        except ValueError:
            pass

    def _promote(self) -> None:
        while self._waiting and self.running < self.slots:
            ticket = self._waiting.popleft()
            self.running += 1
            ticket._grant()

    def stats(self) -> dict:
        return {
            "running": self.running,
            "waiting": len(self._waiting),
            "slots": self.slots,
            "max_waiting": self.max_waiting,
            "served": self.served,
            "rejected": self.rejected,
        }


# ---------------------------------------------------------------- request guard (ASGI middleware)


def error_body(message: str, type_: str = "invalid_request_error", code: str | None = None, param: str | None = None) -> dict:
    """The OpenAI error shape: {"error": {"message", "type", "param", "code"}}."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class RequestGuard:
    """Host and Origin checks (403), API keys for /v1/*, and request body limits (413) for every path.

    Without keys (`keys=None`, which the CLI allows on loopback only) a request must name the
    server by a loopback Host (localhost, 127.x.x.x, [::1]) or by `bound_host`: a web page that
    rebinds its own DNS name to 127.0.0.1 sends its own name and is refused. On every server a
    state-changing request (POST, PUT, PATCH, DELETE) sent by a page of another origin (its
    `Origin` differs from the Host it was sent to, or `Sec-Fetch-Site: cross-site`) is refused:
    the web UI served here is same-origin, and clients that are not browsers send no Origin.

    Bodies are limited by Content-Length before anything is read, and by counting while they
    are read (chunked uploads). `upload_paths` get `max_upload` bytes, everything else `max_body`.
    """

    def __init__(self, app, *, keys, max_body: int, max_upload: int, upload_paths: tuple[str, ...],
                 bound_host: str | None = None):
        self.app = app
        self.keys = keys
        self.max_body = max_body
        self.max_upload = max_upload
        self.upload_paths = upload_paths
        self.bound_host = (bound_host or "").strip("[]").lower()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        limit = self.max_upload if path in self.upload_paths else self.max_body
        refused = self._refused(scope)
        if refused is not None:
            declared = _declared_length(scope)
            if declared is not None and 0 < declared <= limit:  # read away: the client gets the 403, not a reset
                await _drain(receive)
            return await _reply(send, 403, refused[0], "permission_error", refused[1])
        if self.keys is not None and path.startswith("/v1/") and scope.get("method") != "OPTIONS":
            secret = _bearer(scope)
            if not secret:
                return await _reply(send, 401, "missing API key: send 'Authorization: Bearer <key>' (see `twin keys create`)", "authentication_error", "missing_api_key", auth=True)
            try:
                record = self.keys.verify(secret)
            except TwinError as e:
                return await _reply(send, 500, str(e), "server_error")
            if record is None:
                return await _reply(send, 401, "invalid or revoked API key", "authentication_error", "invalid_api_key", auth=True)
            scope.setdefault("state", {})["api_key_id"] = record.id
        length = _header(scope, b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                return await _reply(send, 400, "malformed Content-Length header")
            if declared > limit:
                if declared <= DRAIN_MAX:  # read it away first: a client still sending gets the 413, not a reset
                    await _drain(receive)
                return await _reply(send, 413, _too_large(limit), code="request_too_large")
        received = 0
        more = True
        started = False

        async def counted_receive():
            nonlocal received, more
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                more = message.get("more_body", False)
                if received > limit:
                    raise _TooLarge()
            return message

        async def tracked_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _TooLarge:
            if not started:
                if more:
                    await _drain(receive, received)
                await _reply(send, 413, _too_large(limit), code="request_too_large")

    def _refused(self, scope) -> tuple[str, str] | None:
        """(message, code) when the Host or Origin check refuses this request, else None."""
        host = _header(scope, b"host")
        if self.keys is None and host is not None and not host_allowed(host, self.bound_host):
            return (f"Host {host!r} is refused: a server without API keys answers only requests addressed "
                    "to a loopback name (localhost, 127.0.0.1, [::1]); use one of those in the URL",
                    "host_not_allowed")
        if scope.get("method") in STATE_CHANGING:
            origin = _header(scope, b"origin")
            fetch_site = (_header(scope, b"sec-fetch-site") or "").strip().lower()
            if fetch_site == "cross-site" or (origin is not None and not same_origin(origin, host)):
                return (f"cross-origin {scope.get('method')} refused: a web page of another origin "
                        f"({origin or 'Sec-Fetch-Site: cross-site'}) may not send requests that act on this server",
                        "cross_origin")
        return None


STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def split_host(host: str) -> tuple[str, int | None]:
    """(name, port) of a Host header value: lower case, IPv6 brackets removed; port None if absent
    or not a number."""
    host = host.strip().lower()
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif host.count(":") == 1:
        name, _, port = host.partition(":")
    else:
        name, port = host, ""
    return name, int(port) if port.isdigit() else None


def host_allowed(host: str, bound_host: str = "") -> bool:
    """Whether a server without keys answers a request with this Host header: a loopback name
    (localhost, 127.x.x.x, ::1, any port) or exactly the host the server is bound to."""
    name, _ = split_host(host)
    return is_loopback(name) or (bool(bound_host) and name == bound_host)


def same_origin(origin: str, host: str | None) -> bool:
    """Whether the `Origin` header names the same host and port as the `Host` header (a browser
    sends its page's origin; "null" — sandboxed frames, files — is never the same)."""
    if host is None:
        return False
    try:
        parts = urlsplit(origin.strip())
        origin_port = parts.port
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    default = 443 if parts.scheme == "https" else 80
    name, port = split_host(host)
    return parts.hostname.lower() == name and (origin_port or default) == (port or default)


class _TooLarge(Exception):
    pass


DRAIN_MAX = 256 * 1024 * 1024  # past this much, an oversize body is not read: the connection is closed


async def _drain(receive, received: int = 0) -> None:
    """Read and drop the rest of a request body (up to DRAIN_MAX)."""
    while received <= DRAIN_MAX:
        message = await receive()
        if message["type"] != "http.request":
            return
        received += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def _too_large(limit: int) -> str:
    size = f"{limit / 1024 / 1024:.1f} MiB" if limit >= 1024 * 1024 else f"{limit // 1024} KiB"
    return f"request body too large: the limit is {size}"


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _declared_length(scope) -> int | None:
    """The Content-Length a request declares; None when it declares none (or a malformed one)."""
    try:
        return int(_header(scope, b"content-length"))
    except (TypeError, ValueError):
        return None


def _bearer(scope) -> str:
    value = _header(scope, b"authorization") or ""
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return (_header(scope, b"x-api-key") or "").strip()


async def _reply(send, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None, auth: bool = False):
    body = json.dumps(error_body(message, type_, code)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if auth:
        headers.append((b"www-authenticate", b'Bearer realm="llmtwin"'))
    if status == 413:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------- addresses and file names


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


MAX_NAME_BYTES = 200  # one folder or file name in UTF-8: room for the ".NAME.PID.THREAD.part" it is written as


def safe_upload_path(folder: Path, filename: str | None) -> Path:
    """Where an uploaded file goes under `folder`, or a TwinError saying why its name is refused.

    A name may hold sub-folders ("notes/a.md", as a browser sends for a folder upload) but no
    absolute path, drive, '..', hidden part, backslash, control character or part longer than
    MAX_NAME_BYTES; and the resolved path must still lie inside `folder` (a symlink cannot lead out).
    """
    if not filename or not filename.strip():
        raise TwinError("an uploaded file has no file name")
    name = unicodedata.normalize("NFC", filename)
    if any(unicodedata.category(ch).startswith("C") for ch in name):
        raise TwinError(f"file name {filename!r} contains control characters")
    if "\\" in name:
        raise TwinError(f"file name {filename!r} contains a backslash")
    if len(name) > 255:
        raise TwinError("file name longer than 255 characters")
    pure = PurePosixPath(name)
    if pure.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise TwinError(f"file name {filename!r} is an absolute path")
    parts = pure.parts
    if not parts or any(p in ("", ".", "..") for p in parts):
        raise TwinError(f"file name {filename!r} must not contain '..' or '.' parts")
    if any(p.startswith(".") for p in parts):
        raise TwinError(f"file name {filename!r} has a hidden ('.'-prefixed) part")
    if any(len(p.encode("utf-8")) > MAX_NAME_BYTES for p in parts):  # else the file system refuses it (500)
        raise TwinError(f"file name {filename!r} has a part longer than {MAX_NAME_BYTES} bytes")
    root = folder.resolve()
    target = (root / pure).resolve()
    if target != root and root not in target.parents:
        raise TwinError(f"file name {filename!r} leads outside the upload folder")
    return target
