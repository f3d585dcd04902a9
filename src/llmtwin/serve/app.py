"""The FastAPI app built from a Twin: OpenAI-compatible endpoints, llmtwin's own, and the web UI.

    POST /v1/chat/completions   chat (stream or not); model `twin-rag` (serve.rag_model) or
                                `rag: true` answers from the documents with `citations`/`sources`;
                                a registered model (`NAME@ALIAS`, `NAME`) answers without retrieval
    GET  /v1/models             the RAG model, the configured LLM, the embedder and registered models
    POST /v1/embeddings         vectors from the project's embedder
    POST /v1/search             hybrid / dense / BM25 search with filters
    POST /v1/ingest             upload files (multipart); ingested by a background job
    GET  /v1/ingest/{id}        the job's status and progress (GET /v1/ingest: all jobs)
    GET  /v1/chunks/{id}        one stored chunk (what a citation points at)
    GET  /v1/status             documents, chunks, store versions, queue
    GET  /healthz               liveness (no key needed)
    GET  /                      the web UI (static files, no build step)

Every error is `{"error": {"message", "type", "param", "code"}}` with a 4xx status for a request
the client can fix. `run()` is what `twin serve` calls.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import logging
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmtwin.errors import TwinError
from llmtwin.retrieval.disfluency import searched_question
from llmtwin.serve.batching import QueryBatcher
from llmtwin.serve.chat import ApiError, Generation, complete, make_plan, stream_events
from llmtwin.serve.jobs import IngestJobs
from llmtwin.serve.keys import KeyStore
from llmtwin.serve.limits import (
    GenerationQueue,
    QueueFull,
    RequestGuard,
    ShuttingDown,
    error_body,
    is_loopback,
    safe_upload_path,
)
from llmtwin.serve.schemas import ChatRequest, EmbeddingRequest, SearchRequest

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
MAX_UPLOAD_FILES = 100


class Server:
    """What the endpoints share: the Twin, the models (loaded once), the queue, the jobs."""

    def __init__(self, twin):
        self.twin = twin
        self.cfg = twin.config.serve
        self.queue = GenerationQueue(slots=1, max_waiting=self.cfg.queue_size)
        self.jobs = IngestJobs(twin)
        self.started = int(time.time())
        self._batcher: QueryBatcher | None = None
        self._batcher_checked = False
        self._lock = threading.Lock()
        self.ready = False
        self.loop = None  # the event loop, once serving
        self.generations: set[Generation] = set()  # running now (to stop them at shutdown)
        # Searches run on their own threads, one per core; the rest wait in the pool's queue, first
        # come first served, instead of running as threads that share the cores and the GIL: the
        # same throughput, a far shorter tail. A queued search whose client has gone is dropped.
        self.search_pool = ThreadPoolExecutor(self.cfg.search_slots or os.cpu_count() or 1, thread_name_prefix="search")

    @property
    def llm(self):
        return self.twin.llm

    @property
    def embedder(self):
        return self.twin.embedder

    @property
    def batcher(self) -> QueryBatcher | None:
        """Concurrent queries embedded as one batch — where that is cheaper (torch); None on ONNX,
        where a search embeds its own query in its worker thread. Decided once (on the event loop,
        per request, asking the embedder each time cost more than the rest of the routing)."""
        if self._batcher_checked:
            return self._batcher
        with self._lock:
            if not self._batcher_checked:
                if getattr(self.embedder, "batch_queries", False):
                    self._batcher = QueryBatcher(self.embedder)
                self._batcher_checked = True
            return self._batcher

    def warm(self) -> None:
        """Load the embedder, the LLM and the store now, not on the first request."""
        _ = self.batcher, self.llm  # properties that load the models
        try:
            self.twin.store()
            self.twin.search_explain("warm up", k=1)  # loads the in-memory index and the FTS reader
        except TwinError:
            pass  # nothing ingested yet: uploads will create the store
        self.ready = True

    def shutdown(self) -> None:
        """Stop every generation and refuse the queued ones (safe from a signal handler)."""
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._shutdown)

    def _shutdown(self) -> None:
        self.queue.close()
        for gen in list(self.generations):
            gen.stop()

    def close(self) -> None:
        self.search_pool.shutdown(wait=False, cancel_futures=True)
        self.jobs.stop()
        if self._batcher is not None:
            self._batcher.stop()

    def models(self) -> list[dict]:
        owned = "llmtwin"
        return [
            {"id": self.cfg.rag_model, "object": "model", "created": self.started, "owned_by": owned,
             "kind": "rag", "description": f"answers from the documents with citations ({self.llm.name})"},
            {"id": self.llm.name, "object": "model", "created": self.started, "owned_by": owned,
             "kind": "llm", "description": "the configured LLM, without retrieval"},
            {"id": self.embedder.name, "object": "model", "created": self.started, "owned_by": owned,
             "kind": "embedding", "dimensions": self.embedder.dim},
        ] + self.registered_models()

    def registered_models(self) -> list[dict]:
        """Registered models (`NAME@ALIAS`, `NAME` = latest): they answer without retrieval."""
        from llmtwin.registry.models import served_models

        try:
            served = served_models(self.twin.project.root, self.twin.config)
        except TwinError as e:
            log.warning("model registry unavailable: %s", e)
            return []
        return [
            {"id": m["id"], "object": "model", "created": self.started, "owned_by": "llmtwin-registry",
             "kind": "registered", "version": m["version"],
             "description": f"registered model version {m['version']} ({', '.join(m['kinds'])}), without retrieval"}
            for m in served
        ]

    def llm_for(self, model: str | None, rag: bool):
        """The LLM a chat request names: the configured one, or a registered model (loaded once)."""
        if rag or not model or model in (self.cfg.rag_model, self.llm.name):
            return self.llm
        if model not in {m["id"] for m in self.registered_models()}:
            return self.llm  # make_plan answers 404 naming the models there are
        from llmtwin.models.get import get_llm

        cfg = self.twin.config.llm.model_copy(
            update={"provider": "registry", "model": model, "path": str(self.twin.project.root), "backend": "auto"}
        )
        return get_llm(cfg, seed=self.twin.config.seed)


def create_app(twin, *, keys: KeyStore | None, warm: bool = True) -> FastAPI:
    """The app; `keys=None` serves without API keys (run() allows that on loopback only)."""
    server = Server(twin)
    cfg = server.cfg

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        import asyncio

        server.loop = asyncio.get_running_loop()
        if warm:
            await run_in_threadpool(server.warm)
        yield
        server.close()

    from llmtwin import __version__

    app = FastAPI(title="llmtwin", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server = server
    app.add_middleware(
        RequestGuard,
        keys=keys,
        max_body=cfg.max_body_kb * 1024,
        max_upload=int(cfg.max_upload_mb * 1024 * 1024),
        upload_paths=("/v1/ingest",),
        bound_host=cfg.host,
    )

    # ------------------------------------------------------------------ errors
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(TwinError)
    async def _twin_error(request: Request, exc: TwinError):
        return JSONResponse(error_body(str(exc)), status_code=400)

    @app.exception_handler(QueueFull)
    async def _queue_full(request: Request, exc: QueueFull):
        return JSONResponse(
            error_body(str(exc), "rate_limit_error", "queue_full"), status_code=429,
            headers={"Retry-After": str(exc.retry_after)},
        )

    @app.exception_handler(ShuttingDown)
    async def _shutting_down(request: Request, exc: ShuttingDown):
        return JSONResponse(error_body(str(exc), "server_error", "shutting_down"), status_code=503)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        ctype = request.headers.get("content-type", "")
        if request.method == "POST" and ctype and "json" not in ctype.lower():
            return JSONResponse(
                error_body(f"expected a JSON body (Content-Type: application/json), got {ctype.split(';')[0]!r}",
                           code="unsupported_media_type"),
                status_code=415,
            )
        return JSONResponse(error_body(*_validation_message(exc.errors())), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such endpoint: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        return JSONResponse(error_body(message), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}", "server_error"), status_code=500)

    # ------------------------------------------------------------------ OpenAI-compatible
    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": server.models()}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str):
        for model in server.models():
            if model["id"] == model_id:
                return model
        raise ApiError(404, f"model {model_id!r} not found", param="model", code="model_not_found")

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        llm = await run_in_threadpool(server.llm_for, body.model, body.rag is True)
        plan = await run_in_threadpool(  # counts the prompt's tokens: off the event loop
            lambda: make_plan(body, twin=twin, llm=llm, rag_model=cfg.rag_model, server_max_tokens=cfg.max_tokens)
        )
        ticket = server.queue.enter()  # QueueFull → 429 with Retry-After
        gen = Generation(plan)
        server.generations.add(gen)
        if body.stream:
            async def events():
                try:
                    async for event in stream_events(plan, ticket, gen):
                        yield event
                finally:
                    server.generations.discard(gen)

            return StreamingResponse(
                events(), media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        try:
            result = await complete(plan, ticket, gen, request.is_disconnected)
        finally:
            server.generations.discard(gen)
        if result is None:  # the client has gone; nobody reads this
            return Response(status_code=499)
        return fast_json(result)

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest):
        embedder = server.embedder
        if body.model != embedder.name:
            raise ApiError(404, f"embedding model {body.model!r} not found: this server embeds with {embedder.name!r}", param="model", code="model_not_found")
        if body.dimensions is not None and body.dimensions != embedder.dim:
            raise ApiError(400, f"dimensions: {embedder.name} gives {embedder.dim}-dimensional vectors", param="dimensions")
        texts = [body.input] if isinstance(body.input, str) else body.input
        for i, text in enumerate(texts):
            if not text.strip():
                raise ApiError(400, f"input[{i}] is empty", param="input")
        vectors = await run_in_threadpool(embedder.embed_passages, texts)
        tokens = sum(await run_in_threadpool(embedder.count_tokens, texts))
        data = []
        for i, v in enumerate(np.asarray(vectors, dtype=np.float32)):
            emb = base64.b64encode(v.astype("<f4").tobytes()).decode() if body.encoding_format == "base64" else v.tolist()
            data.append({"object": "embedding", "index": i, "embedding": emb})
        return fast_json({"object": "list", "data": data, "model": embedder.name,
                          "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    # ------------------------------------------------------------------ llmtwin's own
    @app.post("/v1/search")
    async def search(body: SearchRequest):
        if not body.query.strip():
            raise ApiError(400, "query is empty", param="query")
        mode = body.mode or twin.config.retrieval.mode
        started = time.perf_counter()
        vector = None
        # On torch, concurrent queries are embedded together (the batcher), except where a trained
        # query adapter or query encoder applies. Otherwise (ONNX: one query at a time is cheapest) search_explain
        # embeds the query in its own worker thread: one thread hop per search instead of three.
        batcher = server.batcher if mode != "bm25" else None
        if batcher is not None:
            cfg = twin.retrieval_config(body.retrieval)  # this request's adapter / query_encoder count
            if await run_in_threadpool(twin.plain_queries, cfg):
                vector = await batcher.embed(searched_question(body.query, cfg))
        embed_s = time.perf_counter() - started
        result = await asyncio.get_running_loop().run_in_executor(server.search_pool, lambda: twin.search_explain(
            body.query, k=body.k, mode=mode, filters=body.filters, query_vector=vector, retrieval=body.retrieval,
            first_stages=False,
        ))
        timings = {**({"embed_query": embed_s} if vector is not None else {}), **result.timings,
                   "total": time.perf_counter() - started}
        data = []
        for rank, hit in enumerate(result.hits, start=1):
            c = hit.chunk
            data.append({
                "rank": rank, "chunk_id": c.chunk_id, "doc_id": c.doc_id, "source": c.source,
                "heading_path": c.heading_path, "file_type": c.file_type, "index": c.index,
                "score": hit.score, "scores": hit.scores, "text": c.text,
            })
        return fast_json({"object": "list", "query": body.query, "mode": mode, "data": data,
                          "timings": {k: round(v * 1000, 2) for k, v in timings.items()}, "timings_unit": "ms"})

    @app.get("/v1/chunks/{chunk_id:path}")
    async def get_chunk(chunk_id: str):
        chunks = await run_in_threadpool(lambda: twin.store().get_chunks([chunk_id]))
        if not chunks:
            raise ApiError(404, f"no chunk {chunk_id!r}", param="chunk_id", code="chunk_not_found")
        return {"object": "chunk", **chunks[0].to_dict()}

    @app.post("/v1/ingest", status_code=202)
    async def ingest(request: Request):
        ctype = request.headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data"):
            raise ApiError(415, "expected multipart/form-data with one or more 'files' fields", code="unsupported_media_type")
        form = await request.form(max_files=MAX_UPLOAD_FILES, max_fields=MAX_UPLOAD_FILES + 10)
        try:
            uploads = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
            if not uploads:
                raise ApiError(400, "no files: send them as multipart 'files' fields", param="files")
            folder = twin.project.root / cfg.upload_dir
            targets: dict[Path, UploadFile] = {}
            for upload in uploads:
                target = safe_upload_path(folder, upload.filename)
                _check_type(upload.filename or "")
                if target in targets:
                    raise ApiError(400, f"file {upload.filename!r} is sent twice", param="files")
                targets[target] = upload
            await run_in_threadpool(_save_uploads, folder, targets)
        finally:
            await form.close()
        job = server.jobs.submit(list(targets))
        return JSONResponse(job.to_dict(), status_code=202, headers={"Location": f"/v1/ingest/{job.id}"})

    @app.get("/v1/ingest")
    async def list_jobs():
        return {"object": "list", "data": [j.to_dict() for j in reversed(server.jobs.list())]}

    @app.get("/v1/ingest/{job_id}")
    async def get_job(job_id: str):
        job = server.jobs.get(job_id)
        if job is None:
            raise ApiError(404, f"no ingest job {job_id!r}", param="job_id", code="job_not_found")
        return job.to_dict()

    @app.get("/v1/status")
    async def status():
        info = await run_in_threadpool(twin.status)
        return {**info, "queue": server.queue.stats(), "ingest_busy": server.jobs.busy()}

    @app.get("/healthz")
    async def healthz():
        batcher = server._batcher
        return {"status": "ok" if server.ready or not warm else "starting", "queue": server.queue.stats(),
                "auth": keys is not None,
                "query_embedding": {"batches": batcher.batches, "queries": batcher.queries} if batcher else None}

    # ------------------------------------------------------------------ web UI
    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon():
        return Response(status_code=204)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def fast_json(content, status_code: int = 200) -> Response:
    """JSON without FastAPI's jsonable_encoder walk (a third of a search's CPU time here), written by
    orjson: 5 instead of 50 µs for a 10-hit search response (UTF-8, NaN as null, numpy as lists)."""
    body = orjson.dumps(content, default=_plain, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)
    return Response(body, status_code=status_code, media_type="application/json")


def _validation_message(errors: list[dict]) -> tuple[str, str, str | None, str | None]:
    """(message, type, code, param) for pydantic's errors: bad JSON, or each bad field named."""
    parts: list[str] = []
    first: str | None = None
    bad_values = [_field_path(e) for e in errors if e.get("type") == "value_error"]
    for err in errors:
        loc = _field_path(err)
        if err.get("type") != "value_error" and any(v[: len(loc)] == loc for v in bad_values):
            continue  # another member of a union failed there: its value was wrong, not its type
        if err.get("type") == "json_invalid":
            detail = (err.get("ctx") or {}).get("error", "")
            return f"invalid JSON body: {detail}".rstrip(": "), "invalid_request_error", "invalid_json", None
        if err.get("type") == "missing" and not loc:
            return "a JSON request body is required", "invalid_request_error", "missing_body", None
        if not loc and err.get("type") in ("model_attributes_type", "dict_type"):
            return "the request body must be a JSON object", "invalid_request_error", "invalid_body", None
        where = ".".join(loc) or "body"
        first = first or where
        msg = err.get("msg", "invalid").removeprefix("Value error, ")
        for i, part in enumerate(parts):  # one line per field; a union's alternatives joined by "or"
            if part.startswith(where + ": "):
                if msg not in part:
                    parts[i] = f"{part} or {msg[0].lower()}{msg[1:]}"
                break
        else:
            parts.append(f"{where}: {msg}")
    message = "; ".join(parts[:4]) + (f" (and {len(parts) - 4} more)" if len(parts) > 4 else "")
    return message or "invalid request", "invalid_request_error", "invalid_value", first


def _field_path(err: dict) -> list[str]:
    """The fields of a pydantic error's location, without "body" and the union members' type tags
    ("content.str", "input.list[function-after[...]].1", "filters.dict[...].source")."""
    loc = [str(p) for p in err.get("loc", ()) if p != "body"]
    if loc and _is_type_tag(loc[-1]):
        loc = loc[:-1]
    return [p for p in loc if not ("[" in p and _is_type_tag(p))]


def _is_type_tag(part: str) -> bool:
    base = part.split("[", 1)[0]
    return (
        base in ("str", "int", "float", "bool", "list", "dict", "none", "literal")
        or base.startswith(("constrained-", "function-", "json-or-python"))
        or part[:1].isupper()
    )


def _check_type(filename: str) -> None:
    from llmtwin.feature.load import FILE_TYPES

    suffix = Path(filename).suffix.lower()
    if suffix not in FILE_TYPES:
        known = ", ".join(sorted({".md", ".txt", ".rst", ".html", ".pdf", ".json", ".jsonl"}))
        raise ApiError(415, f"{filename!r}: unsupported file type {suffix or '(none)'!r}; llmtwin reads {known} and source code", param="files", code="unsupported_file_type")


def _save_uploads(folder: Path, targets: dict[Path, UploadFile]) -> None:
    """Save every upload or none: each is written next to its target, then all are renamed into
    place. A name that clashes with a file or folder (`a.md` and `a.md/b.md`) is a 409 before
    anything is written; if a rename still fails (a concurrent upload), the files this request
    added are removed again."""
    _check_conflicts(folder, targets)
    parts: dict[Path, Path] = {}
    placed: list[Path] = []  # new files (none there before): removed if a later one fails
    try:
        for target, upload in targets.items():
            target.parent.mkdir(parents=True, exist_ok=True)
            parts[target] = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.part")
            _write_upload(upload, parts[target])
        for target, part in parts.items():
            existed = target.exists()
            os.replace(part, target)
            if not existed:
                placed.append(target)
    except (FileExistsError, NotADirectoryError, IsADirectoryError) as e:
        for target in placed:
            target.unlink(missing_ok=True)
        raise ApiError(409, f"cannot save the upload: {_shown(folder, Path(e.filename2 or e.filename or ''))} clashes with "
                       "a file or folder there (another upload?); nothing was saved", param="files",
                       code="upload_conflict") from e
    finally:
        for part in parts.values():
            part.unlink(missing_ok=True)


def _write_upload(upload: UploadFile, path: Path) -> None:
    upload.file.seek(0)
    with open(path, "wb") as out:
        while block := upload.file.read(1 << 20):
            out.write(block)


def _check_conflicts(folder: Path, targets: dict[Path, UploadFile]) -> None:
    """A 409 naming the clash when a target is an existing folder, or a folder on its way is an
    existing file or another file of this upload (`a.md` with `a.md/b.md`)."""
    root = folder.resolve()
    for target, upload in targets.items():
        if target.is_dir():
            raise ApiError(409, f"file {upload.filename!r}: {_shown(root, target)} is a folder in the upload "
                           "folder; nothing was saved", param="files", code="upload_conflict")
        for parent in target.parents:
            if parent in targets:
                raise ApiError(409, f"file {upload.filename!r} would go inside {targets[parent].filename!r}, a "
                               "file of the same upload; nothing was saved", param="files", code="upload_conflict")
            if parent.exists() and not parent.is_dir():
                raise ApiError(409, f"file {upload.filename!r}: {_shown(root, parent)} is a file in the upload "
                               "folder, not a folder; nothing was saved", param="files", code="upload_conflict")
            if parent == root:
                break


def _shown(root: Path, path: Path) -> str:
    """`path` as a client names it: relative to the upload folder (never the server's absolute path)."""
    try:
        return repr(path.relative_to(root.resolve()).as_posix())
    except ValueError:
        return repr(path.name)


# ---------------------------------------------------------------------- twin serve


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: a free one), so the real address can be printed."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as e:
        sock.close()
        raise TwinError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def check_auth(host: str, keys: KeyStore, no_auth: bool) -> None:
    if no_auth:
        if not is_loopback(host):
            raise TwinError(f"--no-auth is allowed on loopback addresses only (127.0.0.1, ::1), not {host}")
    elif not keys.has_active():
        raise TwinError(
            "no API keys: create one with `twin keys create`, or serve without keys on this machine "
            "only with `twin serve --no-auth`"
        )


def run(twin, *, no_auth: bool = False, log_level: str = "warning") -> None:
    """`twin serve`: check the keys rule, bind, load the models, serve until interrupted."""
    import uvicorn

    cfg = twin.config.serve
    keys = KeyStore(twin.project.state_dir / "keys.json")
    check_auth(cfg.host, keys, no_auth)
    # Before torch loads: OpenMP threads that spin while waiting starve everything else on a
    # busy machine (measured: a query embedding took 377 ms instead of 14 ms at load 7 on 2 cores).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    sock = bind(cfg.host, cfg.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    app = create_app(twin, keys=None if no_auth else keys)
    state: Server = app.state.server

    class _Uvicorn(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets=sockets)  # runs the lifespan: models and store loaded
            if self.started:
                # Everything loaded so far lives as long as the server: out of the cyclic GC's
                # reach, a full collection under load takes ~0 instead of ~350 ms (630k objects
                # here), a pause every request in flight would wait out.
                gc.collect()
                gc.freeze()
                print(f"llmtwin: ready on http://{shown}:{port}/", flush=True)

        def handle_exit(self, sig, frame):  # Ctrl-C / SIGTERM: end the streams, then stop
            state.shutdown()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, log_level=log_level, access_log=False, timeout_graceful_shutdown=5)
    server = _Uvicorn(config)
    print(f"llmtwin: loading models, then serving http://{shown}:{port}/ "
          f"({'no API keys' if no_auth else 'API keys required'})", flush=True)
    try:
        server.run(sockets=[sock])  # uvloop and httptools when installed
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
