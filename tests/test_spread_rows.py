"""The one-user fast path of the sparse scorers gives the batch path's scores."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recommender.base import spread_rows


def test_spread_rows_equals_the_sparse_product() -> None:
    rng = np.random.default_rng(4)
    matrix = sp.random(300, 200, density=0.05, format="csr", random_state=5, dtype=np.float32)
    for nnz in (0, 1, 7, 40):
        row = sp.csr_matrix((rng.random(nnz).astype(np.float32) + 0.1,
                             (np.zeros(nnz, int), rng.choice(300, nnz, replace=False))),
                            shape=(1, 300))
        expected = (row @ matrix).toarray()
        got = spread_rows(matrix, row)
        assert got.shape == (1, 200) and got.dtype == np.float32
        assert np.allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert spread_rows(matrix, sp.csr_matrix((2, 300))) is None  # several users: no fast path
