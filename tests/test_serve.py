"""The HTTP server end to end: a real uvicorn server on 127.0.0.1 (one per module, in a thread),
the official `openai` client for the OpenAI-compatible endpoints, plain HTTP for the rest and
for every error case, a real project ingested with the packaged models."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from llmtwin import Twin
from llmtwin.serve.keys import KeyStore

MARKER = re.compile(r"\[(\d+)\]")

DOCS = {
    "quokka.md": "# Quokka Field Guide\n\nQuokkas are small marsupials that live on Rottnest Island near Perth.\n\n"
    "## Diet\n\nQuokkas graze at night on grasses, sedges and the leaves of shrubs.\n",
    "tea.md": "# Tea Ceremony\n\nThe tea ceremony, called chanoyu, is the ritual preparation of powdered green tea "
    "named matcha. A host whisks the matcha in a bowl and serves it to guests in a tatami room.\n",
    "glacier.md": "# Glacier Report\n\nThe Aletsch glacier lost three kilometres of length since 1870, "
    "measured by the Swiss glacier monitoring network.\n",
}


class ServerThread:
    """uvicorn serving `app` on a free loopback port, in a daemon thread."""

    def __init__(self, app):
        import uvicorn

        from llmtwin.serve.app import bind

        self.sock = bind("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        self.thread = threading.Thread(
            target=lambda: asyncio.run(self.server.serve(sockets=[self.sock])), daemon=True
        )

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 120
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()


def served_project(root: Path, *, max_new_tokens: int, max_body_kb: int, queue_size: int | None = None) -> Twin:
    """A project of DOCS, ingested, set up for the server tests (generative answers: they hold the
    generation slot and its queue; extractive answers are tests/test_answers.py's)."""
    twin = Twin(root)
    cfg = twin.project.config
    cfg.llm.max_new_tokens = max_new_tokens
    cfg.generation.mode = "generative"
    if queue_size is not None:
        cfg.serve.queue_size = queue_size
    cfg.serve.max_body_kb = max_body_kb
    cfg.serve.max_upload_mb = 1.0
    docs = root / "docs"
    docs.mkdir()
    for name, text in DOCS.items():
        (docs / name).write_text(text, encoding="utf-8")
    twin.ingest([docs])
    return twin


@pytest.fixture(scope="module")
def project(tmp_path_factory, embedder):
    return served_project(tmp_path_factory.mktemp("serve"), max_new_tokens=32, max_body_kb=64, queue_size=3)


@pytest.fixture(scope="module")
def key(project):
    _, secret = KeyStore(project.project.state_dir / "keys.json").create("tests")
    return secret


@pytest.fixture(scope="module")
def server(project, key):
    from llmtwin.serve.app import create_app

    keys = KeyStore(project.project.state_dir / "keys.json")
    with ServerThread(create_app(project, keys=keys)) as srv:
        yield srv


@pytest.fixture(scope="module")
def http(server, key):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def client(server, key):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def llm_id(project):
    return project.llm.name


def assert_error(resp: httpx.Response, status: int | tuple[int, ...]):
    statuses = status if isinstance(status, tuple) else (status,)
    assert resp.status_code in statuses, (resp.status_code, resp.text)
    body = resp.json()
    assert isinstance(body["error"]["message"], str) and len(body["error"]["message"]) > 5, body
    return body["error"]


def sse_events(resp: httpx.Response) -> list[str]:
    """The `data:` payloads of a server-sent event stream, in order."""
    return [line[len("data: "):] for line in resp.iter_lines() if line.startswith("data: ")]


# ---------------------------------------------------------------- keys and health


def test_health_is_open_and_the_api_needs_a_key(server, key):
    assert httpx.get(server.url + "/healthz").json()["status"] == "ok"
    resp = httpx.get(server.url + "/v1/models")
    assert_error(resp, 401)
    assert resp.headers["www-authenticate"].startswith("Bearer")
    assert_error(httpx.get(server.url + "/v1/models", headers={"Authorization": "Bearer twk-wrong"}), 401)
    assert_error(httpx.post(server.url + "/v1/search", json={"query": "quokka"}), 401)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="twk-wrong", max_retries=0).models.list()
    # the UI itself holds no data and is open
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "<title>llmtwin</title>" in page.text
    assert httpx.get(server.url + "/static/app.js").status_code == 200


def test_keys_cli_create_list_revoke(project, server, twin_cli):
    root = project.project.root
    made = twin_cli("--project", root, "keys", "create", "--name", "ci", check=True)
    secret = made.stdout.strip()
    assert secret.startswith("twk-") and len(secret) > 40
    stored = (root / ".twin" / "keys.json").read_text()
    assert secret not in stored  # hashed, never stored in clear
    listed = json.loads(twin_cli("--project", root, "keys", "list", "--json", check=True).stdout)
    record = next(r for r in listed if r["name"] == "ci")
    assert record["revoked"] is None and "hash" not in record
    headers = {"Authorization": f"Bearer {secret}"}
    assert httpx.get(server.url + "/v1/models", headers=headers).status_code == 200
    twin_cli("--project", root, "keys", "revoke", record["id"], check=True)
    assert_error(httpx.get(server.url + "/v1/models", headers=headers), 401)  # at once, no restart
    bad = twin_cli("--project", root, "keys", "revoke", "no-such-key")
    assert bad.returncode == 2 and "no API key" in bad.stderr


def test_serve_refuses_no_auth_off_loopback_and_no_keys(tmp_path, twin_cli):
    twin_cli("init", tmp_path, check=True)
    no_keys = twin_cli("--project", tmp_path, "serve", "--port", "0")
    assert no_keys.returncode == 2 and "no API keys" in no_keys.stderr and "twin keys create" in no_keys.stderr
    # refused before anything is bound: no other address than loopback is ever used here
    off = twin_cli("--project", tmp_path, "serve", "--host", "0.0.0.0", "--no-auth")
    assert off.returncode == 2 and "loopback" in off.stderr


# ---------------------------------------------------------------- OpenAI-compatible endpoints


def test_models(client, llm_id, embedder):
    ids = [m.id for m in client.models.list().data]
    assert ids[:2] == ["twin-rag", llm_id] and embedder.name in ids
    assert client.models.retrieve("twin-rag").id == "twin-rag"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-nope")


def _check_citations(text: str, citations: list[dict], sources: list[dict], project: Twin):
    assert text.strip()
    by_n = {s["n"]: s for s in sources}
    stored = {c.chunk_id: c for c in project.store().get_chunks([s["chunk_id"] for s in sources])}
    assert set(stored) == {s["chunk_id"] for s in sources}  # every source is a real stored chunk
    assert {int(n) for n in MARKER.findall(text)} == {c["n"] for c in citations}
    for c in citations:
        assert by_n[c["n"]]["chunk_id"] == c["chunk_id"] and stored[c["chunk_id"]].text == c["text"]


def test_chat_rag_non_stream(client, project):
    resp = client.chat.completions.create(
        model="twin-rag", messages=[{"role": "user", "content": "What do quokkas graze on at night?"}]
    )
    extra = resp.model_extra
    assert resp.choices[0].finish_reason == "stop" and resp.usage.completion_tokens > 0
    _check_citations(resp.choices[0].message.content, extra["citations"], extra["sources"], project)
    assert extra["sources"][0]["source"] == "docs/quokka.md"
    assert extra["citations"], "the answer cites its source"
    assert extra["trace_id"] and "search" in extra["timings"]


def test_chat_rag_stream(client, project):
    stream = client.chat.completions.create(
        model="twin-rag", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "What is the tea ceremony called?"}],
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == "stop"
    extra = finals[0].model_extra
    _check_citations(text, extra["citations"], extra["sources"], project)
    assert extra["sources"][0]["doc_id"] == "docs/tea.md"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert chunks[0].choices[0].delta.role == "assistant"


def test_stream_is_sse_ending_with_done_and_arrives_in_pieces(http, llm_id):
    body = {"model": llm_id, "stream": True, "max_tokens": 24,
            "messages": [{"role": "user", "content": "Count from one to twenty in words."}]}
    arrivals = []
    with http.stream("POST", "/v1/chat/completions", json=body) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            if line.startswith("data: "):
                arrivals.append((time.perf_counter(), line[6:]))
    assert arrivals[-1][1] == "[DONE]"
    pieces = [(t, json.loads(d)) for t, d in arrivals[:-1]]
    contents = [(t, e["choices"][0]["delta"].get("content")) for t, e in pieces]
    texts = [(t, c) for t, c in contents if c]
    assert len(texts) >= 5  # token by token, not one block
    assert texts[-1][0] - texts[0][0] > 0.01  # spread over time as generated


def test_plain_model_answers_without_retrieval(client, llm_id):
    resp = client.chat.completions.create(
        model=llm_id, max_tokens=8, messages=[{"role": "system", "content": "Be brief."},
                                              {"role": "user", "content": "Say hello."}],
    )
    assert resp.choices[0].message.content.strip()
    assert "citations" not in resp.model_extra and "sources" not in resp.model_extra
    assert resp.usage.completion_tokens <= 8 and resp.choices[0].finish_reason in ("stop", "length")
    pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=llm_id, max_tokens=8, stream=True, messages=[{"role": "user", "content": "Say hello."}]) if c.choices]
    assert "".join(pieces).strip()


def test_rag_parameter_on_a_plain_model(client, llm_id):
    resp = client.chat.completions.create(
        model=llm_id, messages=[{"role": "user", "content": "How much length did the Aletsch glacier lose?"}],
        extra_body={"rag": True, "k": 2, "filters": {"source": "docs/glacier.md"}},
    )
    sources = resp.model_extra["sources"]
    assert sources and {s["source"] for s in sources} == {"docs/glacier.md"}


def test_embeddings_match_the_embedder(client, embedder):
    texts = ["quokkas on Rottnest Island", "matcha tea"]
    resp = client.embeddings.create(model=embedder.name, input=texts)  # the client asks for base64
    got = np.array([d.embedding for d in resp.data], dtype=np.float32)
    assert got.shape == (2, embedder.dim) and [d.index for d in resp.data] == [0, 1]
    np.testing.assert_allclose(got, embedder.embed_passages(texts), atol=1e-5)
    assert resp.usage.prompt_tokens > 0
    one = client.embeddings.create(model=embedder.name, input="matcha tea", encoding_format="float")
    np.testing.assert_allclose(one.data[0].embedding, got[1], atol=1e-5)
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="text-embedding-3-small", input="x")


# ---------------------------------------------------------------- search, chunks, ingest


def test_search(http):
    resp = http.post("/v1/search", json={"query": "What do quokkas eat?", "k": 2})
    assert resp.status_code == 200, resp.text
    data = resp.json()["data"]
    assert len(data) == 2 and data[0]["doc_id"] == "docs/quokka.md" and data[0]["rank"] == 1
    assert data[0]["score"] >= data[1]["score"]
    only = http.post("/v1/search", json={"query": "glacier", "mode": "bm25", "filters": ["source=docs/tea.md"]}).json()
    assert {h["source"] for h in only["data"]} <= {"docs/tea.md"}
    chunk = http.get("/v1/chunks/" + data[0]["chunk_id"]).json()
    assert chunk["text"] == data[0]["text"] and chunk["source"] == "docs/quokka.md"
    assert_error(http.get("/v1/chunks/nope"), 404)


def _wait_job(http, job_id: str, timeout: float = 90) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = http.get(f"/v1/ingest/{job_id}").json()
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish")


def test_upload_ingests_in_the_background(http, project):
    text = "# Zeppelin Notes\n\nThe Graf Zeppelin airship circled the globe in 1929 in twenty-one days.\n"
    resp = http.post("/v1/ingest", files=[("files", ("zeppelin.md", text.encode(), "text/markdown"))])
    assert resp.status_code == 202, resp.text
    job = resp.json()
    assert job["status"] in ("queued", "running", "done") and job["files"] == ["uploads/zeppelin.md"]
    assert resp.headers["location"] == f"/v1/ingest/{job['id']}"
    job = _wait_job(http, job["id"])
    assert job["status"] == "done", job
    assert job["report"]["added"] == ["uploads/zeppelin.md"] and job["progress"]["done"] == job["progress"]["total"] > 0
    assert (project.project.root / "uploads" / "zeppelin.md").read_text() == text
    hits = http.post("/v1/search", json={"query": "airship around the globe", "k": 1}).json()["data"]
    assert hits[0]["source"] == "uploads/zeppelin.md"
    assert any(j["id"] == job["id"] for j in http.get("/v1/ingest").json()["data"])
    assert_error(http.get("/v1/ingest/ingest-nope"), 404)


def _multipart(filename: str, content: bytes = b"# x\n\nhello\n") -> tuple[bytes, str]:
    """A multipart body written by hand, so the file name reaches the server exactly as given."""
    boundary = "llmtwinboundary"
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{filename}\"\r\n"
        f"Content-Type: text/markdown\r\n\r\n"
    ).encode() + content + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


@pytest.mark.parametrize("name", [
    "../evil.md", "../../evil.md", "a/../../evil.md", "/tmp/evil.md", "..\\evil.md",
    "C:evil.md", ".hidden.md", "sub/.git/evil.md", "..", "bad\x01name.md", "",
])
def test_upload_names_cannot_escape(http, project, name):
    body, ctype = _multipart(name)
    resp = http.post("/v1/ingest", content=body, headers={"content-type": ctype})
    assert_error(resp, 400)
    root = project.project.root
    assert not (root / "evil.md").exists() and not (root.parent / "evil.md").exists()
    assert not Path("/tmp/evil.md").exists()


def test_upload_in_a_subfolder_stays_inside(http, project):
    body, ctype = _multipart("notes/inner.md", b"# Inner\n\nA note kept in a subfolder of the uploads.\n")
    resp = http.post("/v1/ingest", content=body, headers={"content-type": ctype})
    assert resp.status_code == 202, resp.text
    assert _wait_job(http, resp.json()["id"])["status"] == "done"
    assert (project.project.root / "uploads" / "notes" / "inner.md").is_file()


def test_oversize_requests_are_413(http):
    big = b"# Big\n\n" + b"word " * 300_000  # 1.5 MB against a 1 MB limit
    assert_error(http.post("/v1/ingest", files=[("files", ("big.md", big, "text/markdown"))]), 413)

    def chunked():  # no Content-Length: the limit is counted while reading
        body, _ = _multipart("big.md", big)
        for i in range(0, len(body), 65536):
            yield body[i:i + 65536]

    _, ctype = _multipart("big.md")
    assert_error(http.post("/v1/ingest", content=chunked(), headers={"content-type": ctype}), 413)
    huge = {"model": "twin-rag", "messages": [{"role": "user", "content": "x" * 100_000}]}
    assert_error(http.post("/v1/chat/completions", json=huge), 413)


# ---------------------------------------------------------------- malformed requests: 4xx, never 500

USER = [{"role": "user", "content": "What do quokkas eat?"}]
BAD_CHAT = {
    "bad JSON": ("{not json", 400),
    "not an object": ("[1, 2]", 400),
    "empty body": ("", 400),
    "missing messages": ({"model": "twin-rag"}, 400),
    "messages not a list": ({"model": "twin-rag", "messages": "hi"}, 400),
    "empty messages": ({"model": "twin-rag", "messages": []}, 400),
    "content a number": ({"model": "twin-rag", "messages": [{"role": "user", "content": 5}]}, 400),
    "unknown role": ({"model": "twin-rag", "messages": [{"role": "wizard", "content": "x"}]}, 400),
    "max_tokens a string": ({"model": "twin-rag", "messages": USER, "max_tokens": "5"}, 400),
    "max_tokens zero": ({"model": "twin-rag", "messages": USER, "max_tokens": 0}, 400),
    "max_tokens too big": ({"model": "twin-rag", "messages": USER, "max_tokens": 10**6}, 400),
    "stream a number": ({"model": "twin-rag", "messages": USER, "stream": 1}, 400),
    "temperature too high": ({"model": "twin-rag", "messages": USER, "temperature": 9}, 400),
    "n=2": ({"model": "twin-rag", "messages": USER, "n": 2}, 400),
    "unknown model": ({"model": "gpt-nope", "messages": USER}, 404),
    "last message not the user's": ({"model": "twin-rag", "messages": USER + [{"role": "assistant", "content": "hm"}]}, 400),
    "image part": ({"model": "twin-rag", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400),
    "bad filter": ({"model": "twin-rag", "messages": USER, "filters": ["nokey"]}, 400),
    "filters a number": ({"model": "twin-rag", "messages": USER, "filters": 3}, 400),
}


@pytest.mark.parametrize("case", list(BAD_CHAT))
def test_malformed_chat_requests_are_4xx(http, case):
    body, status = BAD_CHAT[case]
    if isinstance(body, str):
        resp = http.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    else:
        resp = http.post("/v1/chat/completions", json=body)
    error = assert_error(resp, status)
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize("path,kwargs,status", [
    ("/v1/search", {"json": {"query": ""}}, 400),
    ("/v1/search", {"json": {"query": "   "}}, 400),
    ("/v1/search", {"json": {"query": "x", "top_k": 3}}, 400),
    ("/v1/search", {"json": {"query": "x", "k": "3"}}, 400),
    ("/v1/search", {"json": {"query": "x", "k": 0}}, 400),
    ("/v1/search", {"json": {"query": "x", "mode": "magic"}}, 400),
    ("/v1/search", {"json": {"query": "x", "filters": ["=red"]}}, 400),
    ("/v1/search", {"json": {"query": ["x"]}}, 400),
    ("/v1/search", {"content": b"query=x", "headers": {"content-type": "text/plain"}}, 415),
    ("/v1/embeddings", {"json": {"model": "all-minilm-l6-v2", "input": [1, 2, 3]}}, 400),
    ("/v1/embeddings", {"json": {"model": "all-minilm-l6-v2", "input": ""}}, 400),
    ("/v1/embeddings", {"json": {"model": "all-minilm-l6-v2", "input": []}}, 400),
    ("/v1/embeddings", {"json": {"model": "all-minilm-l6-v2", "input": "x", "dimensions": 3}}, 400),
    ("/v1/embeddings", {"json": {"input": "x"}}, 400),
    ("/v1/ingest", {"json": {"files": ["a.md"]}}, 415),
    ("/v1/ingest", {"files": [("other", (None, "x"))]}, 400),
    ("/v1/ingest", {"files": [("files", ("logo.png", b"\x89PNG....", "image/png"))]}, 415),
    ("/v1/ingest", {"content": b"--x\r\ngarbage", "headers": {"content-type": "multipart/form-data; boundary=x"}}, 400),
])
def test_malformed_requests_are_4xx(http, path, kwargs, status):
    assert_error(http.post(path, **kwargs), status)


def test_unknown_paths_and_methods(http):
    assert_error(http.get("/v1/nothing"), 404)
    assert_error(http.delete("/v1/models"), 405)
    assert_error(http.get("/v1/chat/completions"), 405)


# ---------------------------------------------------------------- under load


def test_full_queue_answers_429_with_retry_after(server, key, llm_id):
    """1 generating + 3 waiting fit (serve.queue_size=3); of 7 at once, the rest get 429."""
    body = {"model": llm_id, "stream": True, "max_tokens": 32,
            "messages": [{"role": "user", "content": "Write a long story about a cat."}]}
    start = threading.Barrier(7)

    def one(_):
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as c:
            start.wait()
            with c.stream("POST", "/v1/chat/completions", json=body) as resp:
                if resp.status_code != 200:
                    resp.read()
                    return resp.status_code, resp.headers.get("retry-after"), None
                return 200, None, sse_events(resp)[-1]

    with ThreadPoolExecutor(7) as pool:
        results = list(pool.map(one, range(7)))
    ok = [r for r in results if r[0] == 200]
    limited = [r for r in results if r[0] == 429]
    assert len(ok) + len(limited) == 7 and len(limited) >= 1 and len(ok) >= 4, results
    assert all(r[2] == "[DONE]" for r in ok)
    assert all(r[1] and int(r[1]) >= 1 for r in limited)


def _queue(server) -> dict:
    return httpx.get(server.url + "/healthz").json()["queue"]


@pytest.mark.parametrize("rag", [False, True], ids=["plain", "rag"])
def test_client_disconnect_frees_the_slot(server, http, llm_id, rag):
    body = {"model": "twin-rag" if rag else llm_id, "stream": True, "max_tokens": 1000,
            "messages": [{"role": "user", "content": "Write a very long essay about " +
                          ("quokkas and the sea." if rag else "the history of the sea.")}]}
    with httpx.Client(base_url=server.url, headers=http.headers, timeout=60) as c:
        with c.stream("POST", "/v1/chat/completions", json=body) as resp:
            for line in resp.iter_lines():  # leaving this loop closes the connection
                if rag and line.startswith("data: "):
                    time.sleep(0.5)  # retrieval done, generating (RAG text comes a sentence at a time)
                elif not ('"content": "' in line and '"content": ""' not in line):
                    continue
                assert _queue(server)["running"] == 1  # generating: now hang up
                break
    t = time.perf_counter()
    while _queue(server)["running"] and time.perf_counter() - t < 10:
        time.sleep(0.05)
    freed = time.perf_counter() - t
    # 1000 tokens would take ≥ 14 s; the slot is freed at the next token. With the lead quote a RAG
    # client can hang up while the prompt is still being read (prefill, ~3 s here), which cannot stop.
    assert _queue(server)["running"] == 0 and freed < 8, freed
    resp = http.post("/v1/chat/completions", json={"model": llm_id, "max_tokens": 4, "messages": USER})
    assert resp.status_code == 200


def test_a_queued_client_that_leaves_gives_its_place_back(server, http, llm_id):
    body = {"model": llm_id, "stream": True, "max_tokens": 1000,
            "messages": [{"role": "user", "content": "Write a very long essay about the history of the sea."}]}
    with httpx.Client(base_url=server.url, headers=http.headers, timeout=60) as a, \
            httpx.Client(base_url=server.url, headers=http.headers, timeout=60) as b:
        with a.stream("POST", "/v1/chat/completions", json=body) as first:
            first_lines = first.iter_lines()  # kept: a dropped iterator closes the connection
            next(first_lines)  # generating
            with b.stream("POST", "/v1/chat/completions", json=body) as second:
                second_lines = second.iter_lines()
                next(second_lines)  # the role chunk; then it waits in the queue
                assert _queue(server)["waiting"] == 1 and _queue(server)["running"] == 1
                second_lines.close()
            t = time.perf_counter()
            while _queue(server)["waiting"] and time.perf_counter() - t < 5:
                time.sleep(0.05)
            assert _queue(server)["waiting"] == 0 and _queue(server)["running"] == 1
    t = time.perf_counter()
    while _queue(server)["running"] and time.perf_counter() - t < 5:
        time.sleep(0.05)
    assert _queue(server) | {"served": 0, "rejected": 0} == {
        "running": 0, "waiting": 0, "slots": 1, "max_waiting": 3, "served": 0, "rejected": 0}


def test_search_and_chat_concurrently_without_errors(server, key, llm_id):
    headers = {"Authorization": f"Bearer {key}"}
    questions = ["What do quokkas eat?", "What is matcha?", "How long is the Aletsch glacier?"]

    def chat(i):
        with httpx.Client(base_url=server.url, headers=headers, timeout=120) as c:
            model = "twin-rag" if i % 2 == 0 else llm_id
            body = {"model": model, "stream": True, "max_tokens": 16,
                    "messages": [{"role": "user", "content": questions[i % 3]}]}
            with c.stream("POST", "/v1/chat/completions", json=body) as resp:
                return resp.status_code, sse_events(resp)[-1]

    def searches(i):
        with httpx.Client(base_url=server.url, headers=headers, timeout=60) as c:
            return [c.post("/v1/search", json={"query": questions[(i + j) % 3]}).status_code for j in range(10)]

    with ThreadPoolExecutor(9) as pool:
        chats = [pool.submit(chat, i) for i in range(3)]
        finds = [pool.submit(searches, i) for i in range(6)]
        chat_results = [f.result() for f in chats]
        search_results = [s for f in finds for s in f.result()]
    assert chat_results == [(200, "[DONE]")] * 3
    assert search_results == [200] * 60


def test_shutdown_ends_streams_and_refuses_new_chats(project, llm_id):
    """What Ctrl-C / SIGTERM does in `twin serve` (Server.shutdown), on a second server."""
    from llmtwin.serve.app import create_app

    app = create_app(project, keys=None)
    body = {"model": llm_id, "stream": True, "max_tokens": 1000,
            "messages": [{"role": "user", "content": "Write a very long essay about the history of the sea."}]}
    with ServerThread(app) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        with c.stream("POST", "/v1/chat/completions", json=body) as resp:
            events = []
            for line in resp.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                    if len(events) == 3:
                        app.state.server.shutdown()
        assert events[-1] == "[DONE]" and json.loads(events[-2])["error"]["code"] == "shutting_down"
        assert len(events) < 30  # stopped, not run to 1000 tokens
        assert_error(c.post("/v1/chat/completions", json={**body, "stream": False}), 503)
        assert c.post("/v1/search", json={"query": "quokka"}).status_code == 200  # the rest still answers


@pytest.mark.model
def test_query_batcher_embeds_waiting_queries_as_one_batch():
    """On torch (query_runtime=torch) the server embeds concurrent queries together; each request
    still gets its own query's vector."""
    from llmtwin.config import EmbedderConfig
    from llmtwin.models.get import get_embedder
    from llmtwin.serve.batching import QueryBatcher

    embedder = get_embedder(EmbedderConfig(query_runtime="torch"))
    assert embedder.batch_queries
    batcher = QueryBatcher(embedder)
    texts = [f"what do quokkas eat in season {i}?" for i in range(12)]

    async def main():
        with embedder._lock:  # the worker's first batch waits here, so the others queue up behind it
            tasks = [asyncio.ensure_future(batcher.embed(t)) for t in texts]
            await asyncio.sleep(0.3)
        return await asyncio.gather(*tasks)

    try:
        vectors = asyncio.run(main())
    finally:
        batcher.stop()
    for text, vector in zip(texts, vectors, strict=True):
        assert float(vector @ embedder.embed_query(text)) > 0.9999
    assert batcher.queries == 12 and batcher.batches <= 2
