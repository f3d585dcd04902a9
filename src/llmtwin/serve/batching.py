"""Query embeddings for concurrent searches on torch, off the event loop, batched.

One thread embeds every query waiting: under load, queries arrive while a batch is being
embedded and the next batch takes them all at once, so twenty concurrent searches cost about one
batch instead of twenty model calls. A lone query waits for nothing (there is no batching
window). Only for embedders with `batch_queries` (torch): on ONNX Runtime a padded batch costs
more per query than single runs (13.7 vs 17–19 ms of CPU here), so the server lets each search
embed its own query in its worker thread instead.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading

import numpy as np

log = logging.getLogger(__name__)


def _post(loop: asyncio.AbstractEventLoop, *args) -> None:
    try:
        loop.call_soon_threadsafe(_settle, *args)
    except RuntimeError:  # the event loop has closed (server shutting down)
        pass


def _settle(future: asyncio.Future, value=None, error: BaseException | None = None) -> None:
    if future.done():  # the request was cancelled (client gone)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


class QueryBatcher:
    def __init__(self, embedder, max_batch: int = 32):
        self.embedder = embedder
        self.max_batch = max_batch
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="query-embedder", daemon=True)
        self._thread.start()
        self.batches = 0
        self.queries = 0

    async def embed(self, text: str) -> np.ndarray:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((text, future, loop))
        return await future

    def stop(self) -> None:
        self._queue.put(None)

    def _embed(self, texts: list[str]) -> np.ndarray:
        # A batch of queries is a batch of passages when both get the same prefix (the packaged
        # embedder has none); otherwise embed them one by one, with the query prefix.
        if len(texts) > 1 and getattr(self.embedder, "query_prefix", "") == getattr(self.embedder, "passage_prefix", ""):
            return self.embedder.embed_passages(texts)
        return np.stack([self.embedder.embed_query(t) for t in texts])

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(nxt)
            try:
                vectors = self._embed([text for text, _, _ in batch])
            except Exception as e:  # settle every waiting request; the server answers each
                log.exception("query embedding failed")
                for _, future, loop in batch:
                    _post(loop, future, None, e)
                continue
            self.batches += 1
            self.queries += len(batch)
            for (_, future, loop), vector in zip(batch, vectors, strict=True):
                _post(loop, future, vector)
