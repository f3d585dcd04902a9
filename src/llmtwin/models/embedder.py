"""Embedders behind one protocol: a local sentence-transformers model, or an OpenAI-compatible API.

Every embedder returns float32, L2-normalised vectors, in input order, so a dot product is the
cosine similarity. Prefixes (e.g. "query: " / "passage: " for e5-style models) are added here.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from llmtwin.errors import TwinError

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)


@runtime_checkable
class Embedder(Protocol):
    name: str
    dim: int
    max_tokens: int  # the longest input the model reads; longer text is truncated by the model

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        """float32 (n, dim), L2-normalised, in input order."""
        ...

    def embed_query(self, text: str) -> np.ndarray:
        """float32 (dim,), L2-normalised."""
        ...

    def embed_sentences(self, texts: list[str]) -> np.ndarray:
        """Short passages (sentence vectors, window and compression, lead quotes): like
        embed_passages, by the fastest path for short texts."""
        ...

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Embedder tokens per text, without special tokens."""
        ...


def _normalise(vectors) -> np.ndarray:
    import numpy as np

    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim == 1:
        v = v[None, :]
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.maximum(norms, 1e-12)


class SentenceTransformerEmbedder:
    """A local sentence-transformers model on CPU.

    Passages are sorted by length before batching (less padding: measured faster here) and the
    vectors are returned in input order.
    """

    def __init__(
        self,
        model_dir: Path,
        *,
        batch_size: int = 16,
        query_prefix: str = "",
        passage_prefix: str = "",
        name: str,
        query_runtime: str = "auto",
        query_int8: bool = True,
    ):
        from llmtwin.models import onnx_query

        self.model_dir = Path(model_dir)
        self.name = name
        self.batch_size = batch_size
        self.query_prefix = query_prefix
        self.passage_prefix = passage_prefix
        # One encode at a time: a fast tokenizer shared by threads fails with "Already borrowed"
        # (it is re-configured on every call), e.g. a server embedding queries during an ingest.
        self._lock = threading.Lock()
        self._model = None
        self._model_lock = threading.Lock()
        # The torch model loads on first use: queries on ONNX need only the folder's own files
        # (importing sentence-transformers and torch took 7 of a cold `twin ask`'s ~9 s here).
        self._layout = onnx_query.layout_of(self.model_dir)
        if self._layout is None:
            self.dim = int(self.model.get_embedding_dimension())
            self.max_tokens = int(self.model.max_seq_length or 512)
        else:
            self.dim, self.max_tokens = self._layout[2], self._layout[3]
        tokenizer_json = self.model_dir / "tokenizer.json"
        if tokenizer_json.exists():
            # The chunker's counter: batch-counts and is marked additive for whitespace-split
            # tokenizers, which spares the chunker from re-counting merged pieces.
            from llmtwin.feature.chunk import hf_token_counter

            self.count_tokens = hf_token_counter(tokenizer_json)  # type: ignore[method-assign]
        self.query_int8 = query_int8
        self.query_runtime = self._pick_query_runtime(query_runtime, tokenizer_json.exists())
        self._onnx = None
        self._onnx_lock = threading.Lock()

    @property
    def model(self):
        """The sentence-transformers model, loaded on first use (passages, export, torch queries)."""
        if self._model is None:
            with self._model_lock:
                if self._model is None:
                    from llmtwin.models.packaged import quiet_transformers, set_offline

                    set_offline()
                    from sentence_transformers import SentenceTransformer

                    try:
                        with quiet_transformers():
                            model = SentenceTransformer(str(self.model_dir), device="cpu", local_files_only=True)
                    except (OSError, ValueError) as e:
                        raise TwinError(f"cannot load a sentence-transformers model from {self.model_dir}: {e}") from e
                    model.eval()
                    self._model = model
        return self._model

    @property
    def tokenizer(self):
        return self.model.tokenizer

    def _pooling(self) -> tuple[str | None, bool, str]:
        """(pooling, normalise, why not exportable) from the folder's files, else from the model."""
        from llmtwin.models import onnx_query

        if self._layout is not None:
            pooling, normalise = self._layout[0], self._layout[1]
            return pooling, normalise, "" if pooling else "pooling other than mean or cls is not exported"
        return onnx_query.pooling_of(self.model)

    def _pick_query_runtime(self, wanted: str, has_tokenizer_json: bool) -> str:
        """"onnx" (models/onnx_query.py) or "torch"; `wanted` onnx fails loudly where it cannot run."""
        if wanted == "torch":
            return "torch"
        from llmtwin.models import onnx_query

        reason = ""
        if not onnx_query.available():
            reason = "onnxruntime and onnx are not installed (`pip install onnxruntime onnx`)"
        elif not has_tokenizer_json:
            reason = f"{self.model_dir} has no tokenizer.json"
        else:
            pooling, _, reason = self._pooling()
        if not reason:
            return "onnx"
        if wanted == "onnx":
            raise TwinError(f"embedder.query_runtime=onnx: {reason}")
        log.debug("query embeddings on torch: %s", reason)
        return "torch"

    def _onnx_encoder(self):
        if self._onnx is None:
            with self._onnx_lock:
                if self._onnx is None:
                    from llmtwin.models import onnx_query

                    pooling, normalise, _ = self._pooling()
                    with self._lock:  # an export runs the torch model
                        self._onnx = onnx_query.OnnxQueryEncoder(
                            lambda: self.model, self.model_dir, self.max_tokens, pooling, normalise,
                            int8=self.query_int8)
        return self._onnx

    @property
    def batch_queries(self) -> bool:
        """Whether concurrent queries are cheaper embedded as one padded batch (torch) or one by one (onnx)."""
        return self.query_runtime == "torch"

    def __repr__(self) -> str:
        return f"SentenceTransformerEmbedder(name={self.name!r}, dim={self.dim})"

    def _encode(self, texts: list[str]) -> np.ndarray:
        import numpy as np

        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        with self._lock:
            vectors = self.model.encode(
                [texts[i] for i in order],
                batch_size=self.batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        out[order] = vectors
        return out

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        return self._encode([self.passage_prefix + t for t in texts])

    def embed_sentences(self, texts: list[str]) -> np.ndarray:
        """Sentences one at a time on the ONNX query encoder, one per core, where queries run there:
        PyTorch's per-operator overhead dominates texts this short. On this CPU 421 sentences/s
        with the int8 copy (220 on fp32 ONNX) against 152 on PyTorch in batches; int8 vectors at
        cosine ≥ 0.987 to PyTorch's. Elsewhere: embed_passages."""
        import numpy as np

        if self.query_runtime != "onnx" or not texts:
            return self.embed_passages(texts)
        from concurrent.futures import ThreadPoolExecutor

        encoder = self._onnx_encoder()
        with ThreadPoolExecutor(max(1, min(os.cpu_count() or 1, 8))) as pool:
            vectors = list(pool.map(lambda t: encoder.encode(self.passage_prefix + t), texts))
        return _normalise(np.stack(vectors))

    def embed_query(self, text: str) -> np.ndarray:
        if self.query_runtime == "onnx":
            return _normalise(self._onnx_encoder().encode(self.query_prefix + text))[0]
        return self._encode([self.query_prefix + text])[0]

    def count_tokens(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        with self._lock:
            enc = self.tokenizer(list(texts), add_special_tokens=False, truncation=False, verbose=False)
        return [len(ids) for ids in enc["input_ids"]]


_WORD = re.compile(r"\w+")


class OpenAIEmbedder:
    """Any OpenAI-compatible /v1/embeddings endpoint (vLLM, Ollama, TEI, OpenAI).

    Vectors are L2-normalised here (servers differ). `dim` is discovered on the first call (reading
    `dim` before any embedding makes one small request). `count_tokens` is an APPROXIMATION:
    ceil(regex word count * 1.3), since the server's tokenizer is unknown. `max_tokens` is what the
    caller says the served model reads (default 512, common for BERT-style embedders).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str,
        *,
        batch_size: int = 16,
        name: str,
        max_tokens: int = 512,
        query_prefix: str = "",
        passage_prefix: str = "",
    ):
        import openai

        self.query_prefix = query_prefix
        self.passage_prefix = passage_prefix
        self.base_url = base_url
        self.model = model
        self.name = name
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        self._dim: int | None = None
        self.client = openai.OpenAI(
            base_url=base_url,
            api_key=os.environ.get(api_key_env) or "EMPTY",
            max_retries=1,
        )

    def __repr__(self) -> str:
        return f"OpenAIEmbedder(name={self.name!r}, base_url={self.base_url!r})"

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._embed(["dimension probe"])
        assert self._dim is not None
        return self._dim

    def _embed(self, texts: list[str]) -> np.ndarray:
        import numpy as np
        import openai

        if not texts:
            return np.zeros((0, self._dim or 0), dtype=np.float32)
        rows: list[list[float]] = []
        try:
            for start in range(0, len(texts), self.batch_size):
                batch = texts[start : start + self.batch_size]
                resp = self.client.embeddings.create(model=self.model, input=batch)
                data = sorted(resp.data, key=lambda d: d.index)
                if len(data) != len(batch):
                    raise TwinError(
                        f"embedding server at {self.base_url} returned {len(data)} vectors for {len(batch)} texts"
                    )
                rows.extend(d.embedding for d in data)
        except openai.APIConnectionError as e:
            raise TwinError(f"cannot reach the embedding server at {self.base_url}: {e}") from e
        except openai.APIStatusError as e:
            raise TwinError(f"embedding server at {self.base_url} answered {e.status_code}: {e.message}") from e
        except openai.OpenAIError as e:
            raise TwinError(f"embedding server at {self.base_url}: {e}") from e
        vectors = _normalise(rows)
        if self._dim is None:
            self._dim = int(vectors.shape[1])
        elif vectors.shape[1] != self._dim:
            raise TwinError(f"embedding server at {self.base_url} changed dimension: {vectors.shape[1]} != {self._dim}")
        return vectors

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        return self._embed([self.passage_prefix + t for t in texts])

    def embed_sentences(self, texts: list[str]) -> np.ndarray:
        return self.embed_passages(texts)

    def embed_query(self, text: str) -> np.ndarray:
        return self._embed([self.query_prefix + text])[0]

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [math.ceil(len(_WORD.findall(t)) * 1.3) for t in texts]


class StudentQueryEmbedder:
    """The project's embedder with its queries embedded by a distilled student
    (training/query_encoder.py): same name, dimension and stored vectors; only `embed_query` differs."""

    def __init__(self, base: SentenceTransformerEmbedder, student_dir: Path, *, student: str):
        self.base = base
        self.name, self.dim, self.max_tokens = base.name, base.dim, base.max_tokens
        self.student = student  # e.g. "query-encoder-v2": what searches report
        self._model = SentenceTransformerEmbedder(
            Path(student_dir), name=student, query_prefix=base.query_prefix,
            query_runtime="torch" if base.query_runtime == "torch" else "auto", query_int8=base.query_int8)

    def __repr__(self) -> str:
        return f"StudentQueryEmbedder(name={self.name!r}, student={self.student!r})"

    @property
    def batch_queries(self) -> bool:
        return False  # the server's batcher embeds with the base model: a student is never batched there

    def embed_query(self, text: str) -> np.ndarray:
        return self._model.embed_query(text)

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        return self.base.embed_passages(texts)

    def embed_sentences(self, texts: list[str]) -> np.ndarray:
        return self.base.embed_sentences(texts)

    def count_tokens(self, texts: list[str]) -> list[int]:
        return self.base.count_tokens(texts)
