"""Candidate retrieval by k-NN in an embedding space, through a faiss `VectorIndex`.

An embedding source (the GNN) scores a user's products by the dot product of a user vector
and each product vector, so its best products are the nearest neighbours of the user vector
under inner product. `EmbeddingRetriever` answers that from a faiss index: exact (flat) below
30,000 products, IVF at and above (`IVF_MIN_ITEMS`), on the GPU when faiss-gpu sees one (see
`recommender/index.py`), which is what keeps candidate generation sub-linear for catalogs far
larger than the data sets here.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recommender.index import DEFAULT_EXACT_THRESHOLD, VectorIndex


class EmbeddingRetriever:
    """The `n` products with the largest inner product with each user vector, unseen only."""

    def __init__(self, item_vectors: np.ndarray, kind: str = "auto",
                 exact_threshold: int = DEFAULT_EXACT_THRESHOLD,
                 use_gpu: bool | None = None) -> None:
        vectors = np.ascontiguousarray(item_vectors, dtype=np.float32)
        self.source_vectors = item_vectors  # what the index was built from (staleness check)
        self.index = VectorIndex.build([str(i) for i in range(len(vectors))], vectors,
                                       metric="ip", kind=kind, exact_threshold=exact_threshold,
                                       use_gpu=use_gpu)

    def candidates(self, user_vectors: np.ndarray, history: sp.csr_matrix, n: int
                   ) -> np.ndarray:
        """Item rows (users x n, best first, -1 where fewer exist), history items left out.

        Each query asks for `n` plus the longest history in the batch, so every user still
        gets `n` unseen products after their own are dropped.
        """
        history = sp.csr_matrix(history)
        n = min(n, len(self.index))
        lengths = np.diff(history.indptr)
        extra = int(lengths.max()) if len(lengths) else 0
        _, found = self.index.search_positions(user_vectors, min(n + extra, len(self.index)))
        out = np.full((len(user_vectors), n), -1, dtype=np.int64)
        for row in range(len(user_vectors)):
            seen = history.indices[history.indptr[row]:history.indptr[row + 1]]
            kept = found[row][(found[row] >= 0) & ~np.isin(found[row], seen)][:n]
            out[row, : len(kept)] = kept
        return out
