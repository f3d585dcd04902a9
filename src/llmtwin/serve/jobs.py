"""Background ingest jobs for `POST /v1/ingest`: one worker thread runs them in order.

A job goes queued → (waiting, while another process's ingest holds the store) → running (with progress: chunks embedded / total) → done (the ingest report)
or failed (the error). Ingests never run two at a time (they write the same store); searches
and chats go on beside them. The last `keep` jobs are remembered.
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmtwin.errors import TwinError

log = logging.getLogger(__name__)


@dataclass
class Job:
    id: str
    files: list[str]  # source names (relative to the project)
    paths: list[Path]
    status: str = "queued"  # queued, running, done, failed
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    done_chunks: int = 0
    total_chunks: int = 0
    report: dict[str, Any] | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "ingest.job",
            "status": self.status,
            "files": self.files,
            "created": round(self.created, 3),
            "started": round(self.started, 3) if self.started else None,
            "finished": round(self.finished, 3) if self.finished else None,
            "progress": {"done": self.done_chunks, "total": self.total_chunks},
            "report": self.report,
            "error": self.error,
        }


class IngestJobs:
    def __init__(self, twin, keep: int = 200):
        self.twin = twin
        self.keep = keep
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, paths: list[Path]) -> Job:
        project = self.twin.project
        job = Job(id="ingest-" + secrets.token_hex(6), files=[project.source_name(p) for p in paths], paths=paths)
        with self._lock:
            self._jobs[job.id] = job
            while len(self._jobs) > self.keep:
                oldest = next(iter(self._jobs.values()))
                if oldest.status in ("queued", "waiting", "running"):
                    break
                self._jobs.popitem(last=False)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="ingest-jobs", daemon=True)
                self._thread.start()
        self._queue.put(job)
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def list(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    def busy(self) -> bool:
        return any(j.status in ("queued", "waiting", "running") for j in self.list())

    def stop(self) -> None:
        self._queue.put(None)

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            job.status, job.started = "running", time.time()

            def progress(done: int, total: int, job: Job = job) -> None:
                job.done_chunks, job.total_chunks = done, total

            def waiting(holder: str, job: Job = job) -> None:
                job.status = "waiting"  # another writer (a CLI ingest) holds the store: queue behind it
                job.error = f"waiting for another ingest ({holder})"

            def progress_running(done: int, total: int, job: Job = job) -> None:
                job.status, job.error = "running", None
                progress(done, total)

            try:
                report = self.twin.ingest(job.paths, progress=progress_running, wait=None, waiting=waiting)
                job.report = report.to_dict()
                job.status = "done"
            except TwinError as e:
                job.error, job.status = str(e), "failed"
            except Exception as e:  # a bug, or the disk: report it on the job, keep serving
                log.exception("ingest job %s failed", job.id)
                job.error, job.status = f"internal error: {type(e).__name__}: {e}", "failed"
            finally:
                job.finished = time.time()
