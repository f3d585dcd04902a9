"""Exact and near-duplicate documents: a hash of the normalised text, then MinHash LSH.

Exact: `hashing.dedup_hash` (case-folded, NFKC, whitespace-collapsed text) seen before.
Near: Jaccard similarity of word shingles (`shingle_words` words of the normalised text)
estimated by MinHash (datasketch, 64-bit "affine64" scheme), candidates from MinHashLSH, each
confirmed by the estimated Jaccard >= threshold. The first document seen is the one kept.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from llmtwin.feature.hashing import dedup_hash, normalise_for_dedup
from llmtwin.types import Document, Duplicate

_WORDS = re.compile(r"\w+")
SHINGLE_BATCH = 20_000  # shingles hashed together (num_perm × this uint64s at a time: 20 MB at 128)
_SCHEME = "affine64"
_DTYPE = np.dtype("<u8")  # signature bytes: num_perm little-endian uint64


@dataclass
class _Kept:
    order: int  # registration order: ties go to the earliest kept document
    text_hash: str
    hashvalues: np.ndarray | None  # None: too short for a near-duplicate check


class Deduplicator:
    """Remembers the kept documents; `check` says whether a new one duplicates one of them."""

    def __init__(
        self, threshold: float = 0.8, num_perm: int = 128, shingle_words: int = 5, seed: int = 1
    ) -> None:
        from datasketch import MinHash, MinHashLSH

        if not 0.0 < threshold <= 1.0:
            raise ValueError("threshold must be in (0, 1]")
        if shingle_words < 1:
            raise ValueError("shingle_words must be >= 1")
        self.threshold = threshold
        self.num_perm = num_perm
        self.shingle_words = shingle_words
        self.seed = seed
        self._MinHash = MinHash
        self._permutations = MinHash(num_perm=num_perm, seed=seed, scheme=_SCHEME).permutations
        # LSH only proposes candidates (each is confirmed by its estimated Jaccard below), so its
        # bands are tuned against false negatives: the default weights miss ~60% of pairs at the
        # threshold and ~30% at threshold + 0.05 (16 bands of 8 rows for 0.8/128: ~5% and <1%).
        self._lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=(0.05, 0.95))
        self._docs: dict[str, _Kept] = {}
        self._by_hash: dict[str, list[str]] = {}  # dedup hash -> kept doc ids, in order
        self._order = 0

    # -- signatures ------------------------------------------------------------------------

    def _shingles(self, text: str) -> Iterator[list[bytes]]:
        """The text's word shingles in batches of at most SHINGLE_BATCH (repeats are harmless to a
        MinHash): a long text is never held as one set of shingles or one hash matrix (datasketch
        builds num_perm × batch uint64s: 8 GB for a 50 MB one-line file in one batch)."""
        words: list[str] = []
        k = self.shingle_words
        batch: list[bytes] = []
        for m in _WORDS.finditer(normalise_for_dedup(text)):
            words.append(m.group())
            if len(words) > k:
                del words[0]
            if len(words) == k:
                batch.append(" ".join(words).encode("utf-8"))
                if len(batch) >= SHINGLE_BATCH:
                    yield batch
                    batch = []
        if 0 < len(words) < k:  # shorter than one shingle: the whole text is the shingle
            batch.append(" ".join(words).encode("utf-8"))
        if batch:
            yield batch

    def _minhash(self, hashvalues: np.ndarray | None = None):
        return self._MinHash(
            num_perm=self.num_perm,
            seed=self.seed,
            hashvalues=hashvalues,
            permutations=self._permutations,
            scheme=_SCHEME,
        )

    def _hashvalues(self, text: str) -> np.ndarray | None:
        m = None
        for batch in self._shingles(text):
            if m is None:
                m = self._minhash()
            m.update_batch(batch)
        return None if m is None else np.asarray(m.hashvalues, dtype=_DTYPE)

    def signature(self, text: str) -> bytes:
        """MinHash of the text's shingles as `num_perm` little-endian uint64 (b"" for no words)."""
        hv = self._hashvalues(text)
        return b"" if hv is None else hv.tobytes()

    def signature_of(self, doc_id: str) -> bytes | None:
        """The signature of a kept document (what to persist after `check` kept it)."""
        kept = self._docs.get(doc_id)
        if kept is None:
            return None
        return b"" if kept.hashvalues is None else kept.hashvalues.tobytes()

    # -- the registry ----------------------------------------------------------------------

    def __contains__(self, doc_id: str) -> bool:
        return doc_id in self._docs

    def __len__(self) -> int:
        return len(self._docs)

    def _register(self, doc_id: str, text_hash: str, hashvalues: np.ndarray | None) -> None:
        if doc_id in self._docs:
            self.remove(doc_id)
        self._docs[doc_id] = _Kept(self._order, text_hash, hashvalues)
        self._order += 1
        self._by_hash.setdefault(text_hash, []).append(doc_id)
        if hashvalues is not None:
            self._lsh.insert(doc_id, self._minhash(hashvalues), check_duplication=False)

    def add(self, doc_id: str, text_hash: str, signature: bytes) -> None:
        """Register a kept document (e.g. loaded from the store).

        `text_hash` is `hashing.dedup_hash(text)`; `signature` is what `signature(text)` gave.
        A signature of the wrong size (made with another num_perm) or empty registers the
        document for exact duplicates only.
        """
        hv = None
        if signature and len(signature) == self.num_perm * _DTYPE.itemsize:
            hv = np.frombuffer(signature, dtype=_DTYPE).copy()
        self._register(doc_id, text_hash, hv)

    def remove(self, doc_id: str) -> None:
        """Forget a document (deleted from the store); unknown ids are ignored."""
        kept = self._docs.pop(doc_id, None)
        if kept is None:
            return
        ids = self._by_hash.get(kept.text_hash, [])
        if doc_id in ids:
            ids.remove(doc_id)
        if not ids:
            self._by_hash.pop(kept.text_hash, None)
        if kept.hashvalues is not None and doc_id in self._lsh:
            self._lsh.remove(doc_id)

    def check(self, doc: Document, keep_near: bool = False) -> Duplicate | None:
        """The duplicate record if `doc` repeats a kept document; else keep `doc` and return None.

        `keep_near`: a near duplicate is kept too (registered, so later copies of it are found)
        and still returned, for the caller to mark. A document checked again under its own id
        (an updated file) first forgets its old version.
        """
        if doc.doc_id in self._docs:
            self.remove(doc.doc_id)
        h = dedup_hash(doc.text)
        same = self._by_hash.get(h)
        if same:
            return Duplicate(doc.doc_id, doc.source, same[0], "exact", 1.0)
        hv = self._hashvalues(doc.text)
        if hv is not None:
            best: tuple[float, int, str] | None = None
            for key in self._lsh.query(self._minhash(hv)):
                kept = self._docs[key]
                j = float(np.count_nonzero(kept.hashvalues == hv)) / self.num_perm
                if j >= self.threshold and (best is None or (-j, kept.order) < (-best[0], best[1])):
                    best = (j, kept.order, key)
            if best is not None:
                near = Duplicate(doc.doc_id, doc.source, best[2], "near", round(best[0], 4))
                if keep_near:
                    self._register(doc.doc_id, h, hv)
                return near
        self._register(doc.doc_id, h, hv)
        return None
