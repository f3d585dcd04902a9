"""The Python API, mirroring the CLI: `Twin(project_dir).ingest(...)`, `.search(...)`, `.ask(...)`."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmtwin.config import TwinConfig
from llmtwin.errors import TwinError
from llmtwin.project import Project, open_project
from llmtwin.types import Answer, Hit, IngestReport

MODELS_MAX_AGE_S = 1.0  # a reranker, adapter or query encoder trained by another process is used within a second


class Twin:
    def __init__(self, project: str | Path | Project = ".", *, config: TwinConfig | None = None):
        self.project = project if isinstance(project, Project) else open_project(project)
        if config is not None:
            self.project.config = config
        self._store = None

    @property
    def config(self) -> TwinConfig:
        return self.project.config

    # -- models and store (lazy, once) ------------------------------------------
    @property
    def embedder(self):
        from llmtwin.models.get import get_embedder

        return get_embedder(self.config.embedder)

    @property
    def llm(self):
        from llmtwin.models.get import get_llm

        return get_llm(self.config.llm, seed=self.config.seed)

    def store(self, *, create: bool = False):
        """The store; `create=True` makes it with the configured embedder if it does not exist yet."""
        if self._store is None:
            from llmtwin.store.lancedb_store import LanceStore

            memory = {"memory_max_chunks": self.config.store.memory_max_chunks,
                      "memory_max_sentences": self.config.store.memory_max_sentences,
                      "memory_dtype": self.config.store.memory_dtype,
                      "memory_scan": self.config.store.memory_scan}
            if create:
                self._store = LanceStore(self.project.store_dir, self.embedder.name, self.embedder.dim, **memory)
            else:
                self._store = LanceStore(self.project.store_dir, **memory)
        return self._store

    def _checked_store(self):
        store = self.store()
        if store.embedder_name != self.embedder.name:
            raise TwinError(
                f"the store was embedded with {store.embedder_name}, the config asks for "
                f"{self.embedder.name}; run `twin ingest --rebuild PATH...`"
            )
        return store

    # -- feature pipeline -------------------------------------------------------
    def ingest(
        self,
        paths: list[str | Path] | str | Path,
        *,
        rebuild: bool = False,
        progress: Callable[[int, int], None] | None = None,
        wait: float | None = 0.0,
        waiting: Callable[[str], None] | None = None,
    ) -> IngestReport:
        """Ingest files and folders. One writer at a time per store: another ingest running (in
        any process) raises StoreBusy at once, or is waited for `wait` seconds (None: as long as
        it takes), `waiting(holder)` being called when the wait starts."""
        from llmtwin.feature.ingest import ingest
        from llmtwin.store.lock import WriterLock

        if isinstance(paths, (str, Path)):
            paths = [paths]
        resolved = [Path(p) if Path(p).is_absolute() else Path.cwd() / p for p in paths]
        for path in resolved:  # before --rebuild drops the store, and before any model loads
            if not os.path.lexists(path):
                raise TwinError(f"{path}: no such file or directory")
        with WriterLock(self.project.store_dir, wait=wait, waiting=waiting):
            if rebuild:
                self._store = None
                if self.project.store_dir.exists():
                    shutil.rmtree(self.project.store_dir)
            store = self.store(create=True)
            store.refresh()  # another process may have written since this handle last read
            self._checked_store()
            return ingest(self.project, resolved, store, self.embedder, progress=progress)

    def doctor(self, *, repair: bool = True, wait: float | None = 0.0) -> dict[str, Any]:
        """Check the store (duplicated rows, wrong chunk counts, orphan rows, the version log);
        with `repair`, fix what it found under the writer lock. Returns the check as a dict."""
        from llmtwin.store.doctor import check_store
        from llmtwin.store.lock import WriterLock

        if not self.project.store_dir.exists():
            raise TwinError(f"{self.project.store_dir}: nothing ingested yet; run `twin ingest PATH...` first")
        with WriterLock(self.project.store_dir, wait=wait):
            store = self.store()
            store.refresh()
            result = check_store(store, repair=repair, orphans=repair)
            out = result.to_dict()
            out["versions"] = len(store.versions())
            if repair and (result.repaired or result.orphans_deleted):
                out["store_version"] = store.commit_version(
                    {"doctor": {"repaired": len(result.repaired), "orphans_deleted": result.orphans_deleted},
                     "chunks_total": store.count_chunks()}
                ).version
        return out

    # -- inference pipeline -----------------------------------------------------
    def search_explain(
        self,
        query: str,
        *,
        k: int | None = None,
        mode: str | None = None,
        filters: dict[str, str] | list[str] | None = None,
        query_vector=None,
        retrieval: dict[str, Any] | None = None,
        first_stages: bool = True,
    ):
        """Search, then the configured post-retrieval stages (retrieval/pipeline.py).

        `retrieval` overrides `retrieval.*` fields for this request only, e.g. `{"mmr": True,
        "window": 1, "rerank": "off"}`. A given `query_vector` is used as is (no adapter): it must
        embed the question as searched: `disfluency.searched_question(query, cfg)`.
        `first_stages=False`: a hybrid search's dense and BM25 lists are not kept in `stages` (a
        caller that wants the hits only saves building ~200 of them).
        """
        from llmtwin.retrieval.before import Plan, plan, search_plan, uses_before
        from llmtwin.retrieval.pipeline import Pipeline
        from llmtwin.retrieval.search import parse_filters, search
        from llmtwin.retrieval.transforms import SubQuery

        cfg = self.retrieval_config(retrieval)
        mode = mode or cfg.mode
        if mode not in ("hybrid", "dense", "bm25"):
            raise TwinError(f"--mode {mode!r}: expected hybrid, dense or bm25")
        parsed = parse_filters(filters)  # a malformed filter fails before any model loads
        records = []
        if cfg.repair:  # the rest of the search sees the repaired question only
            from llmtwin.retrieval.disfluency import repair

            fix = repair(query)
            if fix.changed:
                records.append({"name": "repair", "question": query, "query": fix.text, "removed": fix.removed})
                query = fix.text
        k = k or cfg.k
        store = self._checked_store()
        reranker = self.reranker(cfg)
        embedder = self.query_embedder(cfg)  # the embedder, or it with a distilled query encoder
        timings: dict[str, float] = {}
        raw: list = [query_vector] if query_vector is not None else []

        def raw_vector():  # the query's own embedding, once (sentence-level stages compare with it)
            if not raw:
                t = time.perf_counter()
                raw.append(embedder.embed_query(query))
                timings["embed_query"] = time.perf_counter() - t
            return raw[0]

        pipeline = Pipeline(
            cfg, k=k, query=query, store=store, embedder=embedder, query_vector=raw_vector, reranker=reranker,
            llm=lambda: self.llm,
        )
        adapter = self.adapter(cfg) if query_vector is None and mode != "bm25" else None
        if uses_before(cfg):  # route → self-query → transforms, then each planned query searched and fused
            planned = plan(cfg, query, parsed, store=store, embedder=embedder, llm=lambda: self.llm,
                           query_vector=raw_vector)
        else:
            planned = Plan(query, parsed, [], [SubQuery(query)])

        def run_one(sub: SubQuery):
            vector = sub.vector
            if vector is None and sub.kind == "original" and sub.text == query:
                vector = query_vector
            if vector is None and mode != "bm25" and (adapter is not None or pipeline.after or len(planned.queries) > 1
                                                     or (raw and sub.text == query)):
                vector = raw_vector() if sub.text == query else embedder.embed_query(sub.text)
            if vector is not None and adapter is not None and sub.vector is None:
                t = time.perf_counter()
                vector = adapter(vector)
                timings["adapter"] = timings.get("adapter", 0.0) + time.perf_counter() - t
            return search(
                store,
                embedder,
                sub.text,
                k=pipeline.depth,
                mode=mode,  # type: ignore[arg-type]
                candidates=cfg.candidates,
                rrf_k=cfg.rrf_k,
                fusion=cfg.fusion,
                dense_weight=cfg.dense_weight,
                filters=planned.filters,
                query_vector=vector,
                sources=planned.sources,
                sentences=cfg.sentences,
                first_stages=first_stages,
            )

        result = search_plan(planned, run_one, cfg.rrf_k)
        result.timings = {**timings, **result.timings}
        first = mode if adapter is None else f"{mode}+{adapter.name}"
        if embedder is not self.embedder and mode != "bm25":
            first += f" ({embedder.student})"
        if len(planned.queries) > 1:
            first += f"×{len(planned.queries)}"
        pipeline.run(result, first)
        result.transforms[:0] = records
        result.timings.update({n: v for n, v in timings.items() if n not in result.timings})  # embedded late
        return result

    def retrieval_config(self, overrides: dict[str, Any] | None = None):
        """retrieval.* with per-request overrides, validated (a bad one is a TwinError naming it)."""
        from pydantic import ValidationError

        from llmtwin.config import RetrievalConfig

        cfg = self.config.retrieval
        if not overrides:
            return cfg
        unknown = sorted(set(overrides) - set(RetrievalConfig.model_fields))
        if unknown:
            raise TwinError(f"unknown retrieval option(s): {', '.join(unknown)}")
        try:
            return RetrievalConfig.model_validate({**cfg.model_dump(), **overrides})
        except ValidationError as e:
            err = e.errors()[0]
            raise TwinError(f"retrieval.{'.'.join(map(str, err['loc']))}: {err['msg']}") from e

    def reranker(self, cfg=None):
        """The cross-encoder the config asks for: reranker_path, else the project's latest trained one
        (`auto`: the latest whose held-out check beat hybrid order; `on`: the latest)."""
        from llmtwin.models.get import get_reranker
        from llmtwin.models.versions import latest

        cfg = cfg or self.config.retrieval
        if cfg.rerank == "off":
            return None
        if cfg.reranker_path:
            path = Path(cfg.reranker_path).expanduser()
            path = path if path.is_absolute() else self.project.root / path
            return get_reranker(path)
        path = latest(self.project.state_dir, "reranker", usable=cfg.rerank == "auto", max_age=MODELS_MAX_AGE_S)
        if path is None:
            if cfg.rerank == "on":
                raise TwinError(
                    "retrieval.rerank=on but this project has no trained reranker: run `twin tune reranker` "
                    "(or set retrieval.reranker_path to a cross-encoder dir)"
                )
            return None
        return get_reranker(path, f"reranker-{path.name}")

    def adapter(self, cfg=None):
        """The project's latest query adapter whose training check beat no adapter (adapter=auto)."""
        from llmtwin.models.get import get_adapter
        from llmtwin.models.versions import latest

        cfg = cfg or self.config.retrieval
        if cfg.adapter == "off":
            return None
        path = latest(self.project.state_dir, "adapter", usable=True, max_age=MODELS_MAX_AGE_S)
        if path is None:
            return None
        return get_adapter(path, f"adapter-{path.name}")

    def query_embedder(self, cfg=None):
        """The embedder with the project's latest distilled query encoder (retrieval.query_encoder:
        `auto`, the latest if its check passed; `on`, the latest), else the embedder itself."""
        from llmtwin.models.get import get_query_encoder
        from llmtwin.models.versions import latest

        cfg = cfg or self.config.retrieval
        if cfg.query_encoder == "off":
            return self.embedder
        path = latest(self.project.state_dir, "query_encoder", usable=cfg.query_encoder == "auto",
                      max_age=MODELS_MAX_AGE_S)
        if path is None:
            if cfg.query_encoder == "on":
                raise TwinError("retrieval.query_encoder=on but this project has no query encoder: "
                                "run `twin tune query-encoder`")
            return self.embedder
        return get_query_encoder(path, self.embedder, f"query-encoder-{path.name}")

    def plain_queries(self, cfg=None) -> bool:
        """Whether a question is searched with the embedder's own vector under `cfg` (default:
        retrieval.*): no trained adapter and no distilled query encoder applies. Only then may a
        caller embed questions itself (in a batch) and pass the vector, which is searched as is."""
        return self.adapter(cfg) is None and self.query_embedder(cfg) is self.embedder

    def search(self, query: str, **kwargs: Any) -> list[Hit]:
        kwargs.setdefault("first_stages", False)  # the hits only: no dense / BM25 lists to build
        return self.search_explain(query, **kwargs).hits

    def ask(
        self,
        question: str,
        *,
        k: int | None = None,
        mode: str | None = None,
        filters: dict[str, str] | list[str] | None = None,
        on_text: Callable[[str], None] | None = None,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        retrieval: dict[str, Any] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> Answer:
        """`max_new_tokens` / `temperature` override llm.* for this answer only (the server's per-request values);
        `retrieval` overrides retrieval.* (see search_explain). Generation stops early, at the next
        token, once `cancelled()` is true (a server's client has gone)."""
        from llmtwin.generation.answer import generate_answer
        from llmtwin.generation.prompt import build_messages, select_context
        from llmtwin.retrieval.pipeline import first_stage_score
        from llmtwin.trace import new_trace_id, write_trace

        started = time.perf_counter()
        result = self.search_explain(question, k=k, mode=mode, filters=filters, retrieval=retrieval)
        search_s = time.perf_counter() - started  # includes loading the embedder on first use
        gen = self.config.generation
        hits = [h for h in result.hits if first_stage_score(h) >= gen.min_score]  # rerank/MMR scores differ
        if self.answer_mode() == "extractive":
            return self._ask_extractive(question, result, hits, filters, on_text, started, search_s)
        t = time.perf_counter()
        llm = self.llm if hits else None  # nothing to answer from: abstain without loading the LLM
        load_s = time.perf_counter() - t
        context = select_context(hits, llm, gen.context_tokens)
        messages = build_messages(question, context, gen)
        t = time.perf_counter()
        llm_cfg = self.config.llm
        overrides = {"max_new_tokens": max_new_tokens, "temperature": temperature}
        if any(v is not None for v in overrides.values()):
            llm_cfg = llm_cfg.model_copy(update={k: v for k, v in overrides.items() if v is not None})
        lead = gen.lead_quote == "on" or (gen.lead_quote == "auto" and self.config.llm.provider != "openai")
        generated = generate_answer(
            question, messages, context, llm, llm_cfg, gen, self.embedder.embed_sentences, on_text, cancelled,
            lead_quote=lead,
        )
        timings = {f"search.{k}": v for k, v in result.timings.items()}
        timings.update({"search": search_s, "llm_load": load_s})
        timings["generate"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - started
        timings = {k: round(v, 4) for k, v in timings.items()}
        trace_id = new_trace_id()
        write_trace(
            self.project.traces_dir,
            trace_id,
            {
                **self._ask_record(question, result, filters, {"llm": llm.name if llm else None}),
                "mode": "generative",
                "context": [h.chunk.chunk_id for h in context],
                "prompt": messages,
                "output": generated.text,
                "citations": [c.chunk_id for c in generated.citations],
                "abstained": generated.abstained,
                "extractive": generated.extractive,
                "lead_quote": lead,
                "dropped_unsupported": generated.dropped,
                "timings": timings,
            },
        )
        return Answer(generated.text, generated.citations, context, trace_id, timings, generated.abstained)

    def _ask_record(self, question: str, result, filters, models: dict[str, Any]) -> dict[str, Any]:
        """What every answer's trace holds about its question and retrieval, whatever the mode."""
        from llmtwin.trace import hits_record

        return {
            "kind": "ask",
            "query": question,
            "store_version": self.store().current_version(),
            "models": {**models, "embedder": self.embedder.name},
            "config_hash": self.config_hash(),
            "filters": filters,
            "where": result.where,
            "pipeline": result.pipeline,
            "transforms": result.transforms,
            "stages": {name: hits_record(stage) for name, stage in result.stages.items()},
        }

    def answer_mode(self) -> str:
        """extractive or generative: `generation.mode`, where `auto` is extractive for the packaged
        135M model only."""
        mode = self.config.generation.mode
        if mode == "auto":
            return "extractive" if self.config.llm.provider == "packaged" else "generative"
        return mode

    def answer_selector(self):
        """The project's trained answer selector (`twin tune answers`), else the default weights."""
        from llmtwin.generation.extractive import Selector
        from llmtwin.models.versions import latest

        path = latest(self.project.state_dir, "answer-selector", usable=True, max_age=MODELS_MAX_AGE_S)
        if path is None:
            return Selector()
        selector = Selector.load(path / "selector.json")
        selector.source = f"answer-selector/{path.name}"
        return selector

    def _ask_extractive(self, question, result, hits, filters, on_text, started, search_s) -> Answer:
        """The answer is the sentence of the top chunks that answers the question (cited), or an
        abstention naming the closest sources: no LLM is loaded (generation/extractive.py)."""
        from llmtwin.generation.answer import insert_marker
        from llmtwin.generation.extractive import candidates, select
        from llmtwin.generation.prompt import source_label
        from llmtwin.retrieval.sentences import sentence_vectors
        from llmtwin.trace import new_trace_id, write_trace
        from llmtwin.types import Citation

        gen = self.config.generation
        t = time.perf_counter()
        asked = next((r["query"] for r in result.transforms if r.get("name") == "repair"), question)
        selector = self.answer_selector()
        cands = candidates(asked, hits, self.embedder.embed_query(asked), sentence_vectors(self.embedder),
                           gen.answer_chunks) if hits else None
        chosen = select(cands, selector, gen.answer_threshold) if cands is not None else None
        citations: list[Citation] = []
        if chosen is not None and chosen.sentence:
            n = chosen.hit_index + 1
            chunk = hits[chosen.hit_index].chunk
            text = insert_marker(chosen.sentence, n)
            citations = [Citation(n, chunk.chunk_id, chunk.doc_id, chunk.source, chunk.text)]
        else:
            closest = "; ".join(dict.fromkeys(source_label(h) for h in hits[: max(3, gen.answer_chunks)]))
            text = gen.abstain_text + (f" Closest sources: {closest}." if closest else "")
        if on_text:
            on_text(text)
        timings = {f"search.{k}": v for k, v in result.timings.items()}
        timings.update({"search": search_s, "generate": time.perf_counter() - t, "total": time.perf_counter() - started})
        timings = {k: round(v, 4) for k, v in timings.items()}
        abstained = not citations
        answerability = round(chosen.answerability, 4) if chosen is not None else 0.0
        trace_id = new_trace_id()
        write_trace(self.project.traces_dir, trace_id, {
            **self._ask_record(question, result, filters, {"llm": None, "answer_selector": selector.source}),
            "mode": "extractive",
            "candidates": [{"source": i + 1, "sentence": s, "p": round(p, 4)} for i, s, p in (chosen.ranked[:10] if chosen else [])],
            "output": text,
            "citations": [c.chunk_id for c in citations],
            "abstained": abstained,
            "answerability": answerability,
            "threshold": gen.answer_threshold,
            "timings": timings,
        })
        return Answer(text, citations, hits[: max(3, gen.answer_chunks)], trace_id, timings, abstained,
                      mode="extractive", answerability=answerability)

    # -- information ------------------------------------------------------------
    def config_hash(self) -> str:
        data = json.dumps(self.config.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(data.encode()).hexdigest()[:12]

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "project": str(self.project.root),
            "models": {"llm": _describe_llm(self.config), "embedder": _describe_embedder(self.config)},
        }
        try:
            store = self.store()
        except TwinError:
            out.update({"documents": 0, "duplicates": 0, "chunks": 0, "sentence_vectors": 0, "versions": []})
            return out
        records = store.documents()
        by_type: dict[str, int] = {}
        for r in records:
            if r.status == "stored":
                by_type[r.file_type] = by_type.get(r.file_type, 0) + 1
        out.update(
            {
                "store": str(self.project.store_dir),
                "store_embedder": store.embedder_name,
                "documents": sum(by_type.values()),
                "documents_by_type": by_type,
                "duplicates": sum(1 for r in records if r.status == "duplicate"),
                "chunks": store.count_chunks(),
                "sentence_vectors": store.sentences.count_rows(),
                "versions": [
                    {"version": v.version, "time": v.time, **v.summary} for v in store.versions()
                ],
            }
        )
        return out


def _describe_llm(config: TwinConfig) -> str:
    c = config.llm
    if c.provider == "packaged":
        return f"packaged SmolLM2-135M-Instruct (backend {c.backend})"
    if c.provider == "hf":
        return f"hf {c.path}"
    if c.provider == "registry":
        return f"registered model {c.model}"
    return f"openai {c.model} at {c.base_url}"


def _describe_embedder(config: TwinConfig) -> str:
    c = config.embedder
    if c.provider == "packaged":
        return "packaged all-MiniLM-L6-v2"
    if c.provider == "hf":
        return f"hf {c.path}"
    return f"openai {c.model} at {c.base_url}"
