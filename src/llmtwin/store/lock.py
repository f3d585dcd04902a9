"""One writer at a time per store: an advisory file lock beside the store folder.

Every write to a store (an ingest from the CLI, the Python API or a server upload job, a repair
by `twin doctor`) holds the lock for its whole run. Readers never take it. The lock is `flock`
on `<store>.lock`, so it is released by the kernel when its holder dies (kill -9 included) and
two opens of it conflict even inside one process (the server's job thread against a CLI run in
another process, or two threads). The file names its holder (pid and command) for the message
of whoever finds it taken; its content is only informative.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from llmtwin.errors import TwinError


class StoreBusy(TwinError):
    """Another writer holds the store's lock."""


def lock_path(store_dir: Path) -> Path:
    """`<store>.lock` beside the store folder (a rebuild removes the folder, never the lock)."""
    return store_dir.parent / (store_dir.name + ".lock")


class WriterLock:
    """`with WriterLock(store_dir):` — exclusive; raises StoreBusy at once, or waits `wait` seconds
    (None: forever) calling `waiting(holder)` once when it has to wait."""

    def __init__(
        self,
        store_dir: Path,
        *,
        wait: float | None = 0.0,
        waiting: Callable[[str], None] | None = None,
    ) -> None:
        self.path = lock_path(store_dir)
        self.wait = wait
        self.waiting = waiting
        self._fd: int | None = None

    def holder(self) -> str:
        try:
            return self.path.read_text(encoding="utf-8", errors="replace").strip() or "unknown"
        except OSError:
            return "unknown"

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = None if self.wait is None else time.monotonic() + self.wait
        told = False
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    holder = self.holder()
                    if deadline is not None and time.monotonic() >= deadline:
                        raise StoreBusy(
                            f"another ingest is running on this project ({holder}); "
                            "wait for it to finish, or pass --wait to queue behind it"
                        ) from None
                    if not told and self.waiting is not None:
                        self.waiting(holder)
                        told = True
                    time.sleep(0.2)
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: {' '.join(sys.argv[:3])}\n".encode("utf-8", "replace"), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> WriterLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
