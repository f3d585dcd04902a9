"""The query-embedding adapter (`twin tune adapter`): a linear map applied to query vectors only.

q' = normalise(W q). Passages keep their stored vectors, so an adapter needs no re-embedding and
can be switched on and off per request.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


class QueryAdapter:
    def __init__(self, path: Path, *, name: str):
        import numpy as np

        self.path = Path(path)
        self.name = name
        self.matrix = np.load(self.path / "adapter.npy").astype(np.float32)

    def __repr__(self) -> str:
        return f"QueryAdapter(name={self.name!r})"

    def __call__(self, vectors: np.ndarray) -> np.ndarray:
        """(dim,) or (n, dim) unit vectors → adapted unit vectors of the same shape."""
        import numpy as np

        v = np.asarray(vectors, dtype=np.float32)
        out = v @ self.matrix.T
        norms = np.linalg.norm(out, axis=-1, keepdims=True)
        return (out / np.maximum(norms, 1e-12)).astype(np.float32)
