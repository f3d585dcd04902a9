"""API keys for `twin serve`: created once (the secret is shown only then), stored hashed.

The keys live in `.twin/keys.json` (mode 0600) as SHA-256 hashes of the secret. A secret is 32
random bytes, so a plain hash is enough (as for GitHub tokens): there is nothing to brute-force.
The server re-reads the file when it changes, so `twin keys revoke` takes effect at once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from llmtwin.errors import TwinError

PREFIX = "twk-"


@dataclass
class KeyRecord:
    id: str
    name: str
    hash: str  # sha256 hex of the secret
    hint: str  # the first characters of the secret, to recognise it in `twin keys list`
    created: str
    revoked: str | None = None

    def public(self) -> dict:
        d = asdict(self)
        del d["hash"]
        return d


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


class KeyStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._mtime: int | None = None
        self._records: list[KeyRecord] = []

    # -- file ---------------------------------------------------------------------------------
    def _load(self) -> list[KeyRecord]:
        """The records, re-read only when the file changed."""
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            self._mtime, self._records = None, []
            return self._records
        if mtime != self._mtime:
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                records = [KeyRecord(**r) for r in data.get("keys", [])]
            except (OSError, ValueError, TypeError) as e:
                raise TwinError(f"{self.path}: cannot read API keys: {e}") from e
            self._mtime, self._records = mtime, records
        return self._records

    def _save(self, records: list[KeyRecord]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"keys": [asdict(r) for r in records]}, f, indent=2)
        os.replace(tmp, self.path)
        self._mtime = None

    # -- commands -----------------------------------------------------------------------------
    def create(self, name: str = "default") -> tuple[KeyRecord, str]:
        """A new key: its record and the secret (shown once, never stored)."""
        secret = PREFIX + secrets.token_urlsafe(32)
        with self._lock:
            records = list(self._load())
            ids = {r.id for r in records}
            key_id = secrets.token_hex(4)
            while key_id in ids:
                key_id = secrets.token_hex(4)
            record = KeyRecord(
                id=key_id,
                name=name,
                hash=_digest(secret),
                hint=secret[: len(PREFIX) + 4] + "…",
                created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            )
            self._save(records + [record])
        return record, secret

    def list(self) -> list[KeyRecord]:
        with self._lock:
            return list(self._load())

    def revoke_all(self, name_or_id: str) -> list[KeyRecord]:
        """Revoke the key with this id, or else every active key with this name; returns the
        records revoked (a name whose keys are all revoked already: those records, unchanged).
        A TwinError if no key has this id or name."""
        with self._lock:
            records = list(self._load())
            matched = [r for r in records if r.id == name_or_id] or [r for r in records if r.name == name_or_id]
            if not matched:
                raise TwinError(f"no API key with id or name {name_or_id!r} (see `twin keys list`)")
            active = [r for r in matched if r.revoked is None]
            if active:
                now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
                for record in active:
                    record.revoked = now
                self._save(records)
            return active or matched

    # -- serving ------------------------------------------------------------------------------
    def has_active(self) -> bool:
        with self._lock:
            return any(r.revoked is None for r in self._load())

    def verify(self, secret: str) -> KeyRecord | None:
        """The active key whose secret this is, or None."""
        if not secret:
            return None
        digest = _digest(secret)
        with self._lock:
            records = self._load()
        found = None
        for record in records:  # compare with every record: no early exit to time
            if hmac.compare_digest(record.hash, digest) and record.revoked is None:
                found = record
        return found
