"""Defects an adversarial probe found in the HTTP server, each checked end to end on real uvicorn
servers (as in test_serve.py): a server with API keys and one without (`--no-auth`), a real
project ingested with the packaged models, the real `twin` CLI for the keys.

- a page of another site cannot read (DNS rebinding: a foreign Host) or write (a cross-origin
  POST) a server without keys; cross-origin writes are refused by every server
- `twin keys revoke NAME` revokes every key of that name
- a long chat is fitted to the context in one pass (oldest turns out, blank turns dropped) and
  only a latest message that cannot fit is refused (400 naming it)
- client mistakes are 4xx, not 500: lone surrogates in JSON text, upload names that clash with
  a file or folder (nothing saved, nothing half done)
"""

from __future__ import annotations

import json

import httpx
import pytest

from llmtwin.errors import TwinError
from llmtwin.serve.keys import KeyStore
from test_serve import ServerThread, _multipart, _wait_job, assert_error, served_project

MAX_TOKENS = 4


@pytest.fixture(scope="module")
def project(tmp_path_factory, embedder):
    # max_body_kb: room for a 512-message chat
    return served_project(tmp_path_factory.mktemp("hardening"), max_new_tokens=16, max_body_kb=512)


@pytest.fixture(scope="module")
def keys(project):
    return KeyStore(project.project.state_dir / "keys.json")


@pytest.fixture(scope="module")
def key(keys):
    return keys.create("tests")[1]


@pytest.fixture(scope="module")
def keyed(project, keys, key):
    """A server that needs API keys."""
    from llmtwin.serve.app import create_app

    with ServerThread(create_app(project, keys=keys)) as srv:
        yield srv


@pytest.fixture(scope="module")
def open_server(project):
    """A server without API keys (what `twin serve --no-auth` runs), on 127.0.0.1."""
    from llmtwin.serve.app import create_app

    with ServerThread(create_app(project, keys=None)) as srv:
        yield srv


@pytest.fixture(scope="module")
def http(keyed, key):
    with httpx.Client(base_url=keyed.url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as client:
        yield client


def _uploads(project) -> set[str]:
    folder = project.project.root / "uploads"
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")} if folder.exists() else set()


# ---------------------------------------------------------------- 5. Host and Origin checks


def test_no_auth_server_answers_loopback_host_names_only(open_server):
    """A DNS-rebinding page reaches 127.0.0.1 under its own name: that Host is refused."""
    port = open_server.port
    with httpx.Client(base_url=open_server.url, timeout=60) as c:
        for host in (f"evil.example:{port}", "evil.example", f"localhost.evil.example:{port}", f"10.0.0.1:{port}"):
            for method, path, body in (("GET", "/v1/models", None), ("POST", "/v1/search", {"query": "quokka"}),
                                       ("GET", "/v1/status", None), ("GET", "/", None)):
                resp = c.request(method, path, json=body, headers={"Host": host})
                error = assert_error(resp, 403)
                assert error["code"] == "host_not_allowed" and host in error["message"], (host, path, error)
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LocalHost:{port}", f"127.3.2.1:{port}",
                     f"[::1]:{port}", "localhost"):
            resp = c.post("/v1/search", json={"query": "quokka", "k": 1}, headers={"Host": host})
            assert resp.status_code == 200, (host, resp.text)


def test_a_server_with_keys_may_be_reached_under_any_name(keyed, key):
    resp = httpx.get(keyed.url + "/v1/models", headers={"Host": "twin.lan", "Authorization": f"Bearer {key}"})
    assert resp.status_code == 200, resp.text


CROSS_SITE = [
    {"Origin": "http://evil.example"},
    {"Origin": "https://evil.example"},
    {"Origin": "null"},  # a sandboxed frame or a file:// page
    {"Origin": "http://127.0.0.1:1"},  # another server on this machine: another origin
    {"Origin": "http://localhost"},
    {"Sec-Fetch-Site": "cross-site"},
]


@pytest.mark.parametrize("headers", CROSS_SITE, ids=lambda h: next(iter(h.values())))
def test_cross_origin_upload_to_a_no_auth_server_is_refused(open_server, project, headers):
    """The probe's case: a page on another site posts a multipart form to /v1/ingest."""
    before_files, before_jobs = _uploads(project), httpx.get(open_server.url + "/v1/ingest").json()["data"]
    body, ctype = _multipart("planted.md", b"# Planted\n\nA page of another site wrote this.\n")
    resp = httpx.post(open_server.url + "/v1/ingest", content=body, headers={"content-type": ctype, **headers})
    error = assert_error(resp, 403)
    assert error["code"] == "cross_origin" and "cross-origin POST" in error["message"]
    assert _uploads(project) == before_files and "planted.md" not in before_files
    assert httpx.get(open_server.url + "/v1/ingest").json()["data"] == before_jobs
    chat = {"model": "twin-rag", "messages": [{"role": "user", "content": "What do quokkas eat?"}]}
    assert_error(httpx.post(open_server.url + "/v1/chat/completions", json=chat, headers=headers), 403)


def test_cross_origin_writes_are_refused_with_a_key_too(keyed, key):
    headers = {"Authorization": f"Bearer {key}", "Origin": "http://evil.example"}
    error = assert_error(httpx.post(keyed.url + "/v1/search", json={"query": "quokka"}, headers=headers), 403)
    assert error["code"] == "cross_origin"


def test_same_origin_pages_and_clients_without_origin_keep_working(open_server, keyed, key, project):
    """The web UI (served by the app itself: same origin, as a browser sends it), curl and the
    openai client (no Origin) are answered as before."""
    ui = {"Origin": open_server.url, "Sec-Fetch-Site": "same-origin"}
    page = httpx.get(open_server.url + "/", headers={"Sec-Fetch-Site": "none"})
    assert page.status_code == 200 and "<title>llmtwin</title>" in page.text
    assert httpx.get(open_server.url + "/static/app.js").status_code == 200
    assert httpx.get(open_server.url + "/v1/models", headers={"Sec-Fetch-Site": "same-origin"}).status_code == 200
    resp = httpx.post(open_server.url + "/v1/search", json={"query": "quokka", "k": 1}, headers=ui)
    assert resp.status_code == 200, resp.text
    as_localhost = {"Host": f"localhost:{open_server.port}", "Origin": f"http://localhost:{open_server.port}"}
    assert httpx.post(open_server.url + "/v1/search", json={"query": "tea"}, headers=as_localhost).status_code == 200
    body, ctype = _multipart("same_origin.md", b"# Same origin\n\nThe web UI uploads this note about kites.\n")
    resp = httpx.post(open_server.url + "/v1/ingest", content=body, headers={"content-type": ctype, **ui})
    assert resp.status_code == 202, resp.text
    with httpx.Client(base_url=open_server.url, timeout=120) as c:
        assert _wait_job(c, resp.json()["id"])["status"] == "done"
    assert httpx.post(open_server.url + "/v1/search", json={"query": "quokka"}).status_code == 200  # curl
    keyed_ui = {"Authorization": f"Bearer {key}", "Origin": keyed.url, "Sec-Fetch-Site": "same-origin"}
    assert httpx.post(keyed.url + "/v1/search", json={"query": "quokka"}, headers=keyed_ui).status_code == 200


# ---------------------------------------------------------------- 8. revoking keys by name


def test_keys_revoke_by_name_revokes_every_key_of_that_name(project, keyed, twin_cli):
    root = project.project.root
    secrets = [twin_cli("--project", root, "keys", "create", "--name", "laptop", check=True).stdout.strip()
               for _ in range(2)]
    for secret in secrets:
        assert httpx.get(keyed.url + "/v1/models", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    twin_cli("--project", root, "keys", "revoke", "laptop", check=True)
    for secret in secrets:
        assert_error(httpx.get(keyed.url + "/v1/models", headers={"Authorization": f"Bearer {secret}"}), 401)
    listed = json.loads(twin_cli("--project", root, "keys", "list", "--json", check=True).stdout)
    assert all(r["revoked"] for r in listed if r["name"] == "laptop")


def test_revoke_all_by_name_and_exactly_by_id(tmp_path):
    store = KeyStore(tmp_path / "keys.json")
    a, _ = store.create("dup")
    b, _ = store.create("dup")
    other, _ = store.create("other")
    assert [r.id for r in store.revoke_all(a.id)] == [a.id]  # an id names one key only
    state = {r.id: r.revoked for r in store.list()}
    assert state[a.id] and state[b.id] is None and state[other.id] is None
    c, _ = store.create("dup")
    assert [r.id for r in store.revoke_all("dup")] == [b.id, c.id]  # every active key of the name
    assert all(r.revoked for r in store.list() if r.name == "dup") and store.has_active()
    assert [r.id for r in store.revoke_all("dup")] == [a.id, b.id, c.id]  # again: already revoked, unchanged
    with pytest.raises(TwinError, match="no API key"):
        store.revoke_all("nobody")


# ---------------------------------------------------------------- 9. fitting long chats


def _count_tokenizer_calls(llm, monkeypatch) -> dict:
    """Count the LLM's tokenizer calls and the characters they read (a wrapper that delegates)."""
    seen = {"calls": 0, "chars": 0}
    owner, name = (llm.llama, "tokenize") if hasattr(llm, "llama") else (llm.tokenizer, "encode")  # llama.cpp / HF
    original = getattr(owner, name)

    def counted(text, *args, **kwargs):
        seen["calls"] += 1
        seen["chars"] += len(text)
        return original(text, *args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return seen


def _long_chat(n: int = 512) -> list[dict]:
    """A web-UI conversation of `n` messages: a system prompt, user/assistant turns (some
    assistant turns blank, as a stopped answer leaves them), the newest user question last."""
    messages = [{"role": "system", "content": "You are a terse assistant."}]
    for i in range(1, n - 1):
        if i % 2:
            messages.append({"role": "user", "content": f"Question {i}: tell me one fact about the number {i} please."})
        else:
            blank = i % 10 == 0
            messages.append({"role": "assistant", "content": " \n" if blank else f"Answer {i}: {i} is a number."})
    messages.append({"role": "user", "content": "Last question: what is the capital of France?"})
    assert len(messages) == n
    return messages


def test_a_512_message_chat_is_fitted_in_one_pass(llm, monkeypatch):
    messages = _long_chat()
    budget = llm.context_window - 32
    seen = _count_tokenizer_calls(llm, monkeypatch)
    fitted = llm.fit(messages, 32)
    calls, chars = seen["calls"], seen["chars"]
    monkeypatch.undo()
    prompt_chars = sum(len(m["content"]) for m in messages)
    # each message once, the whole prompt a few times: linear (the old loop re-read it per cut)
    assert calls <= len(messages) + 8, calls
    assert chars <= 6 * prompt_chars, (chars, prompt_chars)
    # the system prompt and the latest question stay; the newest turns that fit, oldest out
    assert fitted[0] == messages[0] and fitted[-1] == messages[-1]
    assert all(m["content"].strip() for m in fitted)
    turns = [m for m in messages[1:] if m["content"].strip()]
    kept = fitted[1:]
    assert kept == turns[len(turns) - len(kept):]  # a suffix: nothing cut, nothing reordered
    assert kept[0]["role"] == "user" and len(kept) > 50
    assert llm._prompt_tokens(fitted) <= budget
    assert llm._prompt_tokens([messages[0]] + turns[len(turns) - len(kept) - 3:]) > budget  # not many more fit


def test_fit_raises_prompt_too_long_for_a_latest_message_too_long(llm):
    from llmtwin.models.llm import PromptTooLong

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                {"role": "user", "content": "filler " * 3000 + "What is 2+2?"}]
    with pytest.raises(PromptTooLong, match="latest message"):
        llm.fit(messages, 32, cut_last=False)
    cut = llm.fit(messages, 32)  # a library caller (the RAG prompt) still gets its start cut off
    assert len(cut) == 2 and cut[-1]["content"].endswith("What is 2+2?")
    assert llm._prompt_tokens(cut) <= llm.context_window - 32


def test_long_web_ui_chat_is_answered(http, project, llm_id, monkeypatch):
    messages = _long_chat()
    seen = _count_tokenizer_calls(project.llm, monkeypatch)
    resp = http.post("/v1/chat/completions", json={"model": llm_id, "max_tokens": MAX_TOKENS, "messages": messages})
    calls, chars = seen["calls"], seen["chars"]
    monkeypatch.undo()
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["choices"][0]["message"]["content"].strip()
    assert 0 < body["usage"]["prompt_tokens"] <= project.llm.context_window - MAX_TOKENS
    assert chars <= 8 * sum(len(m["content"]) for m in messages), (calls, chars)


@pytest.fixture(scope="module")
def llm_id(project):
    return project.llm.name


@pytest.mark.parametrize("model", ["plain", "twin-rag"])
def test_a_latest_message_that_cannot_fit_is_400(http, llm_id, model):
    huge = "filler " * 3000 + "What is 2+2?"  # ~3000 tokens against a 2048-token context
    messages = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"},
                {"role": "user", "content": huge}]
    for stream in (False, True):
        resp = http.post("/v1/chat/completions", json={
            "model": llm_id if model == "plain" else model, "max_tokens": MAX_TOKENS, "stream": stream,
            "messages": messages})
        error = assert_error(resp, 400)
        assert error["code"] == "context_length_exceeded" and error["param"] == "messages"
        assert "latest message" in error["message"] and "system prompt" not in error["message"], error


# ---------------------------------------------------------------- 10. client mistakes are 4xx


def _raw_json(http, path: str, text: str) -> httpx.Response:
    """POST a JSON body written by hand (so a lone surrogate escape reaches the server as sent)."""
    return http.post(path, content=text.encode("utf-8"), headers={"content-type": "application/json"})


LONE = '"what \\ud800 do quokkas eat?"'  # JSON text: a high surrogate with no low one


@pytest.mark.parametrize("path,body,field", [
    ("/v1/chat/completions", '{"model": "twin-rag", "messages": [{"role": "user", "content": %s}]}' % LONE,
     "messages.0.content"),
    ("/v1/chat/completions", '{"model": "LLM", "max_tokens": 4, "messages": [{"role": "user", "content": %s}]}' % LONE,
     "messages.0.content"),
    ("/v1/chat/completions", '{"model": "LLM", "max_tokens": 4, "stream": true, '
                             '"messages": [{"role": "user", "content": %s}]}' % LONE, "messages.0.content"),
    ("/v1/chat/completions", '{"model": "LLM", "max_tokens": 4, "messages": [{"role": "user", '
                             '"content": [{"type": "text", "text": %s}]}]}' % LONE, "messages.0.content.0.text"),
    ("/v1/chat/completions", '{"model": "LLM", "max_tokens": 4, "stop": [%s], '
                             '"messages": [{"role": "user", "content": "hi"}]}' % LONE, "stop.0"),
    ("/v1/embeddings", '{"model": "EMBEDDER", "input": %s}' % LONE, "input"),
    ("/v1/embeddings", '{"model": "EMBEDDER", "input": ["fine", %s]}' % LONE, "input.1"),
    ("/v1/search", '{"query": %s}' % LONE, "query"),
    ("/v1/search", '{"query": "quokka", "filters": {"source": %s}}' % LONE, "filters.source"),
    ("/v1/search", '{"query": "quokka", "mode": "bm25", "filters": [%s]}' % LONE, "filters.0"),
], ids=["rag", "plain", "plain-stream", "content-part", "stop", "embed", "embed-list", "search", "filter",
        "filter-list"])
def test_lone_surrogates_are_400(http, llm_id, embedder, path, body, field):
    body = body.replace('"LLM"', json.dumps(llm_id)).replace('"EMBEDDER"', json.dumps(embedder.name))
    error = assert_error(_raw_json(http, path, body), 400)
    assert error["type"] == "invalid_request_error" and error["param"] == field, error
    assert error["message"].startswith(f"{field}: not valid Unicode text: a lone surrogate"), error
    assert http.get("/healthz").status_code == 200  # the same connection answers on


def test_invalid_utf8_json_is_400(http):
    body = b'{"query": "caf\xe9 au lait"}'  # Latin-1 bytes where UTF-8 is required
    resp = http.post("/v1/search", content=body, headers={"content-type": "application/json"})
    assert assert_error(resp, 400)["type"] == "invalid_request_error"


def test_upload_of_a_file_and_a_file_inside_it_is_409_and_saves_nothing(http, project):
    """`conf.md` and `conf.md/inner.md` in one upload: before, conf.md was saved (never ingested)
    and the request failed with a 500."""
    before_files, before_jobs = _uploads(project), http.get("/v1/ingest").json()["data"]
    files = [("files", ("conf.md", b"# Conf\n\nThe conference is in May.\n", "text/markdown")),
             ("files", ("conf.md/inner.md", b"# Inner\n\nA note inside.\n", "text/markdown"))]
    error = assert_error(http.post("/v1/ingest", files=files), 409)
    assert "conf.md" in error["message"] and error["code"] == "upload_conflict"
    assert _uploads(project) == before_files  # nothing saved, not even a part file
    assert http.get("/v1/ingest").json()["data"] == before_jobs  # and no job


def test_upload_clashing_with_an_earlier_upload_is_409(http, project):
    root = project.project.root / "uploads"
    first = http.post("/v1/ingest", files=[("files", ("conf2.md", b"# Conf 2\n\nMeet in June.\n", "text/markdown"))])
    assert first.status_code == 202, first.text
    assert _wait_job(http, first.json()["id"])["status"] == "done"
    error = assert_error(http.post("/v1/ingest", files=[
        ("files", ("conf2.md/inner.md", b"# Inner\n\nInside.\n", "text/markdown"))]), 409)
    assert "'conf2.md'" in error["message"] and "is a file" in error["message"]
    assert (root / "conf2.md").read_bytes() == b"# Conf 2\n\nMeet in June.\n"
    folder = http.post("/v1/ingest", files=[("files", ("box.md/inner.md", b"# Box\n\nA note in a box.\n", "text/markdown"))])
    assert folder.status_code == 202, folder.text
    assert _wait_job(http, folder.json()["id"])["status"] == "done"
    before = _uploads(project)
    error = assert_error(http.post("/v1/ingest", files=[
        ("files", ("ok.md", b"# Ok\n\nFine on its own.\n", "text/markdown")),
        ("files", ("box.md", b"# Box\n\nA file where a folder is.\n", "text/markdown"))]), 409)
    assert "'box.md'" in error["message"] and "is a folder" in error["message"]
    assert _uploads(project) == before  # ok.md, sent first, was not saved either


@pytest.mark.parametrize("name", ["\u00e9" * 200 + ".md", "a" * 250 + ".md", "notes/" + "b" * 240 + "/x.md"],
                         ids=["400-bytes", "253-chars", "long-folder"])
def test_upload_names_too_long_for_the_file_system_are_400(http, project, name):
    """A name part over the file system's 255 bytes (or too long for its `.part` file) was a 500."""
    before = _uploads(project)
    body, ctype = _multipart(name)
    error = assert_error(http.post("/v1/ingest", content=body, headers={"content-type": ctype}), 400)
    assert "longer than" in error["message"]
    assert _uploads(project) == before
