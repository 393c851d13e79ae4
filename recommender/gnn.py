"""The graph recommender: `encoders.gnn.LightGCNEncoder` behind the `Recommender` interface.

The encoder learns user and product embeddings (LightGCN over purchases and, optionally, the
knowledge graph); this wrapper adds what makes it a recommender: binarising the training
matrix, scoring by dot product, vectors for users unseen in training, item similarity,
early stopping on Recall@k (handed to the encoder as a callback, so that `encoders` never
imports `recommender`) and checkpoints. Hyper-parameters, the trained network and the
training record live on the encoder and are read and written through (`model.history`,
`model.item_embeddings`, ...), so callers see the same attributes as before the split.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import numpy as np
import scipy.sparse as sp

from encoders.gnn import CONFIG_FILE, LightGCNEncoder
from recommender.base import (
    Recommender,
    as_user_rows,
    binarised,
    cached_row_norms,
    cosine_neighbours,
)
from recommender.evaluation import evaluate

if TYPE_CHECKING:
    from torch_geometric.data import HeteroData


class _FromEncoder:
    """An attribute of the wrapped `LightGCNEncoder`, read and written through."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, model: GraphRecommender | None, owner: type | None = None) -> Any:
        return self if model is None else getattr(model.encoder, self.name)

    def __set__(self, model: GraphRecommender, value: Any) -> None:
        setattr(model.encoder, self.name, value)


class GraphRecommender(Recommender):
    """LightGCN with BPR; KG edges and product features are optional extras to `fit`."""

    name = "lightgcn"

    # hyper-parameters (see `LightGCNEncoder`)
    dim = _FromEncoder()
    layers = _FromEncoder()
    epochs = _FromEncoder()
    batch_size = _FromEncoder()
    learning_rate = _FromEncoder()
    regularization = _FromEncoder()
    seed = _FromEncoder()
    device = _FromEncoder()
    edge_weights = _FromEncoder()
    eval_every = _FromEncoder()
    patience = _FromEncoder()
    init_std = _FromEncoder()
    prune_kg_leaves = _FromEncoder()
    num_threads = _FromEncoder()
    verbose = _FromEncoder()
    sampling = _FromEncoder()
    fanout = _FromEncoder()
    max_full_nnz = _FromEncoder()
    chunk_rows = _FromEncoder()
    pairs = _FromEncoder()
    # shapes, trained state and training record
    n_users = _FromEncoder()
    n_items = _FromEncoder()
    offsets = _FromEncoder()
    feature_dim = _FromEncoder()
    network = _FromEncoder()
    user_embeddings = _FromEncoder()
    item_embeddings = _FromEncoder()
    epoch_seconds = _FromEncoder()  # wall time of each training epoch
    epoch_cpu_seconds = _FromEncoder()  # this process's CPU time of each epoch
    history = _FromEncoder()  # validation results, one per evaluation
    best_epoch = _FromEncoder()
    sampling_used = _FromEncoder()  # "full" or "neighbour", set by fit
    max_batch_nodes = _FromEncoder()  # most nodes one training batch propagated over

    def __init__(
        self, dim: int = 64, layers: int = 3, epochs: int = 50, batch_size: int = 2048,
        learning_rate: float = 1e-3, regularization: float = 1e-4, seed: int | None = 0,
        device: str = "auto", edge_weights: dict[str, float] | None = None,
        eval_every: int = 5, patience: int = 3, eval_k: int = 20, init_std: float = 0.1,
        prune_kg_leaves: bool = True, num_threads: int | None = None, verbose: bool = False,
        sampling: str = "auto", fanout: int | Sequence[int] = 10,
        max_full_nnz: int = 5_000_000, chunk_rows: int = 1 << 16,
        pairs: str = "users",
    ) -> None:
        self.encoder = LightGCNEncoder(
            dim=dim, layers=layers, epochs=epochs, batch_size=batch_size,
            learning_rate=learning_rate, regularization=regularization, seed=seed,
            device=device, edge_weights=edge_weights, eval_every=eval_every,
            patience=patience, init_std=init_std, prune_kg_leaves=prune_kg_leaves,
            num_threads=num_threads, verbose=verbose, sampling=sampling, fanout=fanout,
            max_full_nnz=max_full_nnz, chunk_rows=chunk_rows, pairs=pairs)
        self.eval_k = eval_k
        self._fallback_user: np.ndarray | None = None
        self._active_users = np.zeros(0, dtype=bool)

    # ---- configuration ---------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """Hyper-parameters (what `__init__` takes), JSON-serialisable."""
        return {**self.encoder.config(), "eval_k": self.eval_k}

    def resolve_sampling(self, nnz: int) -> str:
        """"full" or "neighbour" for an adjacency with `nnz` stored entries ("auto": full
        while nnz <= max_full_nnz, where one full product per batch is cheap)."""
        return self.encoder.resolve_sampling(nnz)

    # ---- training --------------------------------------------------------------------------
    def fit(
        self, user_items: sp.csr_matrix, graph: HeteroData | None = None,
        product_features: np.ndarray | None = None, valid: sp.csr_matrix | None = None,
    ) -> Self:
        """Train on `user_items` (+ KG edges of `graph`, + `product_features`).

        With `valid` (same shape), Recall@`eval_k` is measured every `eval_every` epochs
        (training items excluded) and the best epoch's parameters are kept; training stops
        after `patience` evaluations without improvement.
        """
        matrix = binarised(self._fitted_on(user_items))
        if valid is not None and sp.csr_matrix(valid).shape != matrix.shape:
            raise ValueError(f"valid has shape {valid.shape}, user_items {matrix.shape}")
        active = np.diff(matrix.indptr) > 0
        metric = f"recall@{self.eval_k}"
        validate = None if valid is None else self._recall(matrix, valid, active, metric)
        self.encoder.fit(matrix, graph, product_features, validate=validate, metric=metric)
        self._set_active(active)
        return self

    def _recall(self, matrix: sp.csr_matrix, valid: sp.csr_matrix, active: np.ndarray,
                metric: str) -> Callable[[np.ndarray, np.ndarray], float]:
        """The encoder's validation callback: Recall@`eval_k` on `valid` (training items
        excluded) of a scoring-only model over the embeddings the encoder just computed."""

        def recall(user_embeddings: np.ndarray, item_embeddings: np.ndarray) -> float:
            probe = type(self).from_embeddings(user_embeddings, item_embeddings, active)
            return evaluate(probe, matrix, valid, k=self.eval_k)[metric]

        return recall

    def _set_active(self, active: np.ndarray) -> None:
        """Which users trained with interactions; the others score as their history's mean
        product, or without history as the mean trained user."""
        self._active_users = np.asarray(active, dtype=bool)
        self._fallback_user = (self.user_embeddings[self._active_users].mean(0)
                               if self._active_users.any()
                               else np.zeros(self.dim, dtype=np.float32))

    @classmethod
    def from_embeddings(cls, user_embeddings: np.ndarray, item_embeddings: np.ndarray,
                        active_users: np.ndarray, **config: Any) -> GraphRecommender:
        """A scoring-only model from final embeddings trained elsewhere (e.g. on a GPU
        machine by `benchmarks/gowalla_gnn.py`); it cannot be refitted or saved."""
        users = np.asarray(user_embeddings, dtype=np.float32)
        items = np.asarray(item_embeddings, dtype=np.float32)
        if users.ndim != 2 or items.ndim != 2 or users.shape[1] != items.shape[1]:
            raise ValueError(f"embeddings must be 2-D with one width: users {users.shape}, "
                             f"items {items.shape}")
        if len(active_users) != len(users):
            raise ValueError(f"active_users has {len(active_users)} rows for {len(users)} "
                             "users")
        model = cls(**{**config, "dim": users.shape[1]})
        model.user_embeddings, model.item_embeddings = users, items
        model.n_users, model.n_items = len(users), len(items)
        model._set_active(active_users)
        return model

    # ---- scoring ---------------------------------------------------------------------------
    def score(self, user_rows: np.ndarray, user_items: sp.csr_matrix) -> np.ndarray:
        """Dot products of final embeddings (see `user_vectors` for unseen users)."""
        return self.user_vectors(user_rows, user_items) @ self.item_embeddings.T

    def user_vectors(self, user_rows: np.ndarray, user_items: sp.csr_matrix) -> np.ndarray:
        """Final user embeddings, the query side of a k-NN search over `item_embeddings`.

        A user unseen in training (or trained without interactions) gets the mean final
        embedding of the products in the history passed in, or, without history, the mean
        trained user (a learned popularity).
        """
        self._check_fitted()
        rows = as_user_rows(user_rows)
        users = np.empty((len(rows), self.dim), dtype=np.float32)
        known = rows < self.n_users
        known[known] = self._active_users[rows[known]]
        users[known] = self.user_embeddings[rows[known]]
        histories = sp.csr_matrix(user_items)
        for slot in np.flatnonzero(~known):
            history = histories[slot].indices
            users[slot] = (self.item_embeddings[history].mean(0) if len(history)
                           else self._fallback_user)
        return users

    def similar_items(self, item: int, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Cosine over the final product embeddings."""
        self._check_fitted()
        return cosine_neighbours(self.item_embeddings, item, k,
                                 cached_row_norms(self, self.item_embeddings))

    def embed_new_products(self, features: np.ndarray) -> np.ndarray:
        """Final embeddings for products added after training, from their features alone
        (see `LightGCNEncoder.embed_new_products`); score them against `user_embeddings`."""
        self._check_fitted()
        return self.encoder.embed_new_products(features)

    # ---- persistence -----------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write `config.json` (hyper-parameters, shapes, node ranges) and `state.pt`
        (parameters, final embeddings and which users trained, plain tensors: loadable with
        weights_only)."""
        self._check_fitted()
        return self.encoder.save(directory, config=self.config(),
                                 extra={"active_users": self._active_users})

    @classmethod
    def load(cls, directory: str | Path, device: str | None = None) -> GraphRecommender:
        """A fitted model from `save`'s directory: scores without the training graph."""
        directory = Path(directory)
        meta = json.loads((directory / CONFIG_FILE).read_text())
        config = dict(meta["config"])
        if device is not None:
            config["device"] = device
        model = cls(**config)
        extra = model.encoder.load_state(directory)
        model._set_active(extra["active_users"])
        return model
