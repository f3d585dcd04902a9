"""Cross-encoder rerankers: a sentence-transformers CrossEncoder dir (the project's trained one by
default, see `twin tune reranker`), scoring (query, passage) pairs with raw logits."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

from llmtwin.errors import TwinError

if TYPE_CHECKING:
    import numpy as np


class CrossEncoderReranker:
    def __init__(self, path: Path, *, name: str, max_length: int = 256, batch_size: int = 16):
        from llmtwin.models.packaged import quiet_transformers, set_offline

        set_offline()
        import torch
        from sentence_transformers import CrossEncoder

        self.path = Path(path)
        self.name = name
        self.batch_size = batch_size
        try:
            with quiet_transformers():
                self.model = CrossEncoder(
                    str(self.path), device="cpu", local_files_only=True, max_length=max_length,
                    activation_fn=torch.nn.Identity(),
                )
        except (OSError, ValueError) as e:
            raise TwinError(f"cannot load a cross-encoder from {self.path}: {e}") from e
        self.model.eval()
        self._lock = threading.Lock()  # the fast tokenizer is not safe to share between threads

    def __repr__(self) -> str:
        return f"CrossEncoderReranker(name={self.name!r})"

    def score(self, query: str, texts: list[str]) -> np.ndarray:
        """One raw relevance logit per text (higher is more relevant)."""
        import numpy as np

        if not texts:
            return np.zeros(0, dtype=np.float32)
        # longest first: batches of similar length pad less
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        with self._lock:
            scores = self.model.predict(
                [(query, texts[i]) for i in order], batch_size=self.batch_size,
                convert_to_numpy=True, show_progress_bar=False,
            )
        out = np.empty(len(texts), dtype=np.float32)
        out[order] = np.asarray(scores, dtype=np.float32).reshape(-1)
        return out
