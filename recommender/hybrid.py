"""The hybrid recommender: candidates from several sources, one blended ranking, reasons.

Sources are ordinary `Recommender`s: ALS over user history, the GNN (LightGCN over the
user-product graph plus the knowledge graph), co-purchase (ItemKNN over the same history),
knowledge-graph paths (`graph_paths`: same brand, category, attributes, external KG
relations) and popularity. For a user:

1. every source scores all products; each source's scores are standardised per user
   (z-scores), so a dot product, a co-occurrence count and a path count become comparable;
2. each source with a non-zero weight proposes its `candidates` best unseen products; the
   union is the candidate set, everything else is out (score -inf). An embedding source
   (one with `user_vectors`, i.e. the GNN) proposes the nearest neighbours of the user's
   vector from a faiss index (`retrieval.EmbeddingRetriever`), the others their top scores;
3. a candidate's score is the weighted sum of its z-scores. The weights are tuned on a
   validation split by coordinate ascent on NDCG@k (`tune`), never on the test split;
4. `explain` names, for a recommended product, the sources that contributed most and the
   history product (and graph node) behind each: "bought together with X", "same brand as
   Y", a knowledge-graph path.

`mmr` re-ranks a list for diversity (maximal marginal relevance) with one knob.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
import scipy.sparse as sp

from recommender.base import (
    SCORE_CELLS,
    Reason,
    Recommender,
    as_user_rows,
    binarised,
    top_k,
)
from recommender.baselines import ItemKNN, Popularity
from recommender.graph_paths import GraphPathRecommender
from recommender.retrieval import EmbeddingRetriever

DEFAULT_GRID = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0)
META_FILE = "hybrid.json"


def _source_types() -> dict[str, type[Recommender]]:
    """Classes a saved hybrid may contain, by name (imported lazily: the GNN needs torch)."""
    from recommender.als import ALSRecommender
    from recommender.baselines import BPRMF
    from recommender.gnn import GraphRecommender
    from recommender.graph_filter import GraphFilterRecommender
    from recommender.time_aware import RecentPopularity, Transitions

    return {cls.__name__: cls for cls in (ALSRecommender, GraphRecommender, ItemKNN,
                                           Popularity, GraphPathRecommender, BPRMF,
                                           GraphFilterRecommender, RecentPopularity,
                                           Transitions)}


def zscores(scores: np.ndarray) -> np.ndarray:
    """Per-row standardisation; a constant row becomes zeros. Works in place on a copy."""
    scores = np.asarray(scores, dtype=np.float32)
    mean = scores.mean(axis=1, keepdims=True)
    std = scores.std(axis=1, keepdims=True)
    std[std == 0] = 1.0
    return (scores - mean) / std


class HybridRecommender(Recommender):
    """A weighted blend of source recommenders over the union of their candidates."""

    name = "hybrid"

    def __init__(self, sources: Mapping[str, Recommender],
                 weights: Mapping[str, float] | None = None, candidates: int = 200) -> None:
        if not sources:
            raise ValueError("a hybrid needs at least one source")
        if candidates < 1:
            raise ValueError("candidates must be >= 1")
        self.sources = dict(sources)
        self.weights = {name: 1.0 for name in self.sources}
        if weights is not None:
            self.set_weights(weights)
        self.candidates = int(candidates)
        self.tuning: dict[str, Any] = {}
        self._retrievers: dict[str, EmbeddingRetriever] = {}
        self._retrievers_lock = threading.Lock()

    def set_weights(self, weights: Mapping[str, float]) -> None:
        """Replace the blend weights; unknown sources or negative weights are errors."""
        unknown = set(weights) - set(self.sources)
        if unknown:
            raise ValueError(f"weights for unknown sources {sorted(unknown)}; "
                             f"sources are {sorted(self.sources)}")
        if any(w < 0 for w in weights.values()):
            raise ValueError("weights must be >= 0")
        if not any(w > 0 for w in weights.values()):
            raise ValueError("at least one weight must be > 0")
        self.weights = {name: float(weights.get(name, 0.0)) for name in self.sources}

    @property
    def active(self) -> list[str]:
        return [name for name, w in self.weights.items() if w > 0]

    # ---- training --------------------------------------------------------------------------
    def fit(self, user_items: sp.csr_matrix,
            options: Mapping[str, Mapping[str, Any]] | None = None,
            prefitted: Collection[str] = ()) -> Self:
        """Fit every source on `user_items`; `options[name]` are extra `fit` arguments (the
        GNN's graph and features), sources named in `prefitted` are kept as they are."""
        matrix = self._fitted_on(user_items)
        options = options or {}
        for name, source in self.sources.items():
            if name in prefitted:
                if (source.n_users, source.n_items) != matrix.shape:
                    raise ValueError(f"prefitted source {name} has shape "
                                     f"{(source.n_users, source.n_items)}, not {matrix.shape}")
                continue
            source.fit(matrix, **dict(options.get(name, {})))
        return self

    def tune(self, fit_matrix: sp.csr_matrix, valid_matrix: sp.csr_matrix,
             options: Mapping[str, Mapping[str, Any]] | None = None,
             prefitted: Collection[str] = (), k: int = 20, max_users: int = 3000,
             grid: tuple[float, ...] = DEFAULT_GRID, rounds: int = 3, seed: int = 0,
             ) -> dict[str, Any]:
        """Fit the sources on `fit_matrix` and choose weights maximising NDCG@k on
        `valid_matrix` (its items the user has in `fit_matrix` excluded).

        Coordinate ascent from the best single source: each round tries every grid value for
        every weight, keeping a change only when NDCG@k (ties: Recall@k) improves. Scores
        are computed once, on at most `max_users` validation users, and only at each user's
        candidates, so a trial costs a weighted sum and a top-k. The sources stay fitted on
        `fit_matrix`: refit on the whole training split with `fit` before testing.
        """
        from recommender.evaluation import ranking_metrics

        self.fit(fit_matrix, options, prefitted)
        fit_matrix = sp.csr_matrix(fit_matrix)
        truth = binarised(valid_matrix)
        truth = (truth - truth.multiply(binarised(fit_matrix))).tocsr()
        truth.eliminate_zeros()
        users = np.flatnonzero(np.diff(truth.indptr) > 0)
        if not len(users):
            raise ValueError("the validation split has no user with an unseen item")
        if len(users) > max_users:
            users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
        names = list(self.sources)
        items, z, proposed = self._gather(users, fit_matrix[users], names)
        truth = truth[users]

        def quality(weights: dict[str, float]) -> tuple[float, float]:
            w = np.array([weights.get(n, 0.0) for n in names], dtype=np.float32)
            blended = np.tensordot(w, z, axes=1)
            allowed = (proposed & (w > 0)[:, None, None]).any(axis=0) & (items >= 0)
            blended[~allowed] = -np.inf
            cols, values = top_k(blended, k)
            ranked = np.where(cols >= 0, np.take_along_axis(items, np.maximum(cols, 0), 1), -1)
            ranked[np.isneginf(values)] = -1
            result = ranking_metrics(ranked, truth, k, fit_matrix.shape[1])
            return result[f"ndcg@{k}"], result[f"recall@{k}"]

        single = {n: quality({n: 1.0}) for n in names}
        best_name = max(single, key=single.__getitem__)
        weights = {n: (1.0 if n == best_name else 0.0) for n in names}
        best = single[best_name]
        trials = 0
        for _ in range(rounds):
            improved = False
            for name in names:
                for value in grid:
                    if value == weights[name]:
                        continue
                    trial = {**weights, name: value}
                    if not any(v > 0 for v in trial.values()):
                        continue
                    trials += 1
                    result = quality(trial)
                    if result > best:
                        best, weights, improved = result, trial, True
            if not improved:
                break
        self.set_weights(weights)
        self.tuning = {
            "k": k, "users": int(len(users)), "trials": trials, "weights": dict(weights),
            f"valid_ndcg@{k}": best[0], f"valid_recall@{k}": best[1],
            "single": {n: {f"ndcg@{k}": v[0], f"recall@{k}": v[1]} for n, v in single.items()},
        }
        return self.tuning

    def _gather(self, user_rows: np.ndarray, history: sp.csr_matrix, names: list[str]
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per user, the union of every source's candidates and each source's z-score there.

        Returns item rows (users x width, -1 = empty slot), z-scores (sources x users x
        width) and which source proposed each slot (sources x users x width)."""
        width = len(names) * min(self.candidates, self.n_items)
        items = np.full((len(user_rows), width), -1, dtype=np.int64)
        z = np.zeros((len(names), len(user_rows), width), dtype=np.float32)
        proposed = np.zeros((len(names), len(user_rows), width), dtype=bool)
        step = max(1, SCORE_CELLS // max(self.n_items, 1))
        for lo in range(0, len(user_rows), step):
            hi = min(lo + step, len(user_rows))
            part = history[lo:hi]
            scores = self._zscores(user_rows[lo:hi], part, names)
            tops = [self._source_candidates(name, user_rows[lo:hi], part, s)
                    for name, s in zip(names, scores)]
            merged = np.sort(np.concatenate(tops, axis=1), axis=1)
            merged[:, 1:][merged[:, 1:] == merged[:, :-1]] = -1  # duplicates
            items[lo:hi, : merged.shape[1]] = merged
            safe = np.maximum(items[lo:hi], 0)
            for s, (source_scores, top) in enumerate(zip(scores, tops)):
                z[s, lo:hi] = np.take_along_axis(source_scores, safe, axis=1)
                member = np.zeros(source_scores.shape, dtype=bool)
                _mark(member, top)
                proposed[s, lo:hi] = np.take_along_axis(member, safe, axis=1)
        return items, z, proposed

    # ---- scoring ---------------------------------------------------------------------------
    def _zscores(self, user_rows: np.ndarray, history: sp.csr_matrix, names: list[str]
                 ) -> list[np.ndarray]:
        return [zscores(self.sources[name].score(user_rows, history)) for name in names]

    def _candidates(self, scores: np.ndarray, history: sp.csr_matrix) -> np.ndarray:
        """A source's best `candidates` items per user, the user's history excluded."""
        masked = scores.copy()
        if history.nnz:
            masked[np.repeat(np.arange(history.shape[0]), np.diff(history.indptr)),
                   history.indices] = -np.inf
        ids, _ = top_k(masked, min(self.candidates, self.n_items))
        return ids

    def _source_candidates(self, name: str, user_rows: np.ndarray, history: sp.csr_matrix,
                           z: np.ndarray) -> np.ndarray:
        """Source `name`'s candidates: k-NN from its faiss index if it embeds users and
        items, else the top of its scores `z`."""
        retriever = self.retriever(name)
        if retriever is None:
            return self._candidates(z, history)
        queries = self.sources[name].user_vectors(user_rows, history)  # type: ignore[attr-defined]
        return retriever.candidates(queries, history, min(self.candidates, self.n_items))

    def retriever(self, name: str) -> EmbeddingRetriever | None:
        """The faiss k-NN retriever over source `name`'s item vectors (built on first use,
        rebuilt after a refit); None for a source without user and item vectors."""
        source = self.sources[name]
        vectors = getattr(source, "item_embeddings", None)
        if not hasattr(source, "user_vectors") or not isinstance(vectors, np.ndarray):
            return None
        with self._retrievers_lock:
            retriever = self._retrievers.get(name)
            if retriever is None or retriever.source_vectors is not vectors:
                retriever = self._retrievers[name] = EmbeddingRetriever(vectors)
        return retriever

    def source_scores(self, user_rows: np.ndarray | int, user_items: sp.csr_matrix
                      ) -> dict[str, np.ndarray]:
        """Each active source's z-scores, (users x items) — what `score` blends."""
        self._check_fitted()
        rows = as_user_rows(user_rows)
        history = self._check_user_items(rows, user_items)
        names = self.active
        return dict(zip(names, self._zscores(rows, history, names)))

    def score(self, user_rows: np.ndarray, user_items: sp.csr_matrix) -> np.ndarray:
        return self.blend(user_rows, user_items, restrict=True)

    def blend(self, user_rows: np.ndarray | int, user_items: sp.csr_matrix,
              restrict: bool = True) -> np.ndarray:
        """Weighted z-scores over all items; with `restrict`, -inf outside the candidates.

        Serving with filters passes `restrict=False`, so a narrow filter (one brand) can
        still fill a list from products no source put in its top `candidates`.
        """
        self._check_fitted()
        rows = as_user_rows(user_rows)
        history = sp.csr_matrix(user_items)
        names = self.active
        blended = np.zeros((len(rows), self.n_items), dtype=np.float32)
        allowed = np.zeros(blended.shape, dtype=bool)
        for name, z in zip(names, self._zscores(rows, history, names)):
            blended += np.float32(self.weights[name]) * z
            if restrict:
                _mark(allowed, self._source_candidates(name, rows, history, z))
        if restrict:
            # the user's own items stay scored: `recommend(exclude_seen=False)` may show them
            allowed[np.repeat(np.arange(len(rows)), np.diff(history.indptr)),
                    history.indices] = True
            blended[~allowed] = -np.inf
        return blended

    def similar_items(self, item: int, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Items similar to `item`: every source's neighbour list, merged by rank.

        Each source that knows item similarity gives its `3k` nearest items, scored by rank
        (1 for its best neighbour down towards 0), and the lists are summed with equal
        weights: the blend weights rank items for a user, which is not this question. A
        product nobody bought has no co-purchase neighbours but still gets graph-path ones
        (same brand, category, attributes) and, with content features, GNN ones.
        """
        self._check_fitted()
        scores = np.zeros(self.n_items, dtype=np.float32)
        found = np.zeros(self.n_items, dtype=bool)
        for source in self.sources.values():
            try:
                ids, values = source.similar_items(item, 3 * k)
            except NotImplementedError:
                continue
            ids = ids[np.isfinite(values)]
            if not len(ids):
                continue
            scores[ids] += np.linspace(1.0, 0.0, len(ids) + 1)[:-1]
            found[ids] = True
        scores[~found] = -np.inf
        scores[item] = -np.inf
        ids, values = top_k(scores[None, :], k)
        keep = ids[0] >= 0
        return ids[0][keep], values[0][keep]

    # ---- persistence -----------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Each source in its own format under `directory`, plus `hybrid.json` last."""
        self._check_fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        types = _source_types()
        files = {}
        for name, source in self.sources.items():
            kind = type(source).__name__
            if kind not in types or not hasattr(source, "save"):
                raise TypeError(f"source {name} ({kind}) cannot be saved")
            files[name] = {"type": kind, "file": Path(source.save(directory / name)).name}
        meta = {"weights": self.weights, "candidates": self.candidates, "sources": files,
                "n_users": self.n_users, "n_items": self.n_items, "tuning": self.tuning}
        (directory / META_FILE).write_text(json.dumps(meta, indent=1))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> HybridRecommender:
        """A fitted hybrid from `save`'s directory."""
        directory = Path(directory)
        meta_file = directory / META_FILE
        if not meta_file.is_file():
            raise FileNotFoundError(f"no trained recommender in {directory} (missing "
                                    f"{META_FILE}): run `shopgraph train` first")
        meta = json.loads(meta_file.read_text())
        types = _source_types()
        sources = {name: types[info["type"]].load(directory / info["file"])
                   for name, info in meta["sources"].items()}
        model = cls(sources, meta["weights"], meta["candidates"])
        model.n_users, model.n_items = int(meta["n_users"]), int(meta["n_items"])
        model.tuning = meta.get("tuning", {})
        return model

    # ---- explanations ----------------------------------------------------------------------
    def explain(self, user_row: int, history: sp.csr_matrix, item: int, limit: int = 2
                ) -> list[Reason]:
        """The `limit` sources contributing most to `item`'s score for this user, with the
        history product (and graph node) each one points at."""
        return self.explain_items(user_row, history, [item], limit)[0]

    def explain_items(self, user_row: int, history: sp.csr_matrix, items: Sequence[int],
                      limit: int = 2) -> list[list[Reason]]:
        """`explain` for several items of one user, scoring every source once rather than
        once per item (on Complete Journey a full scoring pass costs ~20 ms)."""
        self._check_fitted()
        rows = as_user_rows(user_row)
        history = self._check_user_items(rows, history)
        seen = history.indices
        scores = self.source_scores(rows, history)
        out = []
        for item in items:
            contributions = sorted(((float(self.weights[name] * z[0, item]), name)
                                    for name, z in scores.items()), reverse=True)
            # sources that pushed the item up; at least the strongest one, whatever its sign
            chosen = [c for c in contributions if c[0] > 0][:limit] or contributions[:1]
            out.append([self._source_reason(name, value, seen, item) for value, name in chosen])
        return out

    def _source_reason(self, name: str, value: float, seen: np.ndarray, item: int) -> Reason:
        source = self.sources[name]
        if callable(getattr(source, "reason", None)):  # the source knows its own reasons
            return source.reason(seen, item, name, value) or Reason(name, value)
        if isinstance(source, Popularity) or not len(seen):
            return Reason(name, value)
        if isinstance(source, ItemKNN) and source.similarity is not None:
            column = source.similarity[seen][:, [item]].toarray().ravel()
            return Reason(name, value, int(seen[int(np.argmax(column))]))
        vectors = _item_vectors(source)
        if vectors is None:
            return Reason(name, value)
        target = vectors[item] / (np.linalg.norm(vectors[item]) or 1.0)
        own = vectors[seen]
        cosine = own @ target / np.maximum(np.linalg.norm(own, axis=1), 1e-10)
        return Reason(name, value, int(seen[int(np.argmax(cosine))]))

    def item_vectors(self) -> np.ndarray | None:
        """Item vectors for diversity: the GNN's final embeddings, else ALS's factors."""
        for name in ("gnn", "als", *self.sources):
            vectors = _item_vectors(self.sources.get(name))
            if vectors is not None:
                return vectors
        return None


def _mark(mask: np.ndarray, items: np.ndarray) -> None:
    """Set mask[r, items[r, j]] for every real item (item -1 marks an empty slot)."""
    rows, cols = np.nonzero(items >= 0)
    mask[rows, items[rows, cols]] = True


def _item_vectors(source: Recommender | None) -> np.ndarray | None:
    for attribute in ("item_embeddings", "item_factors"):
        vectors = getattr(source, attribute, None)
        if isinstance(vectors, np.ndarray):
            return vectors
    return None


def mmr(items: np.ndarray, scores: np.ndarray, vectors: np.ndarray | None, k: int,
        diversity: float) -> tuple[np.ndarray, np.ndarray]:
    """Maximal marginal relevance: greedily pick argmax (1-d) rel - d max cos(selected).

    `items`/`scores` are a ranked candidate list (best first); relevance is the score scaled
    to [0, 1] over that list. `diversity` 0 keeps the order, 1 picks only by dissimilarity
    (after the first). Returns the re-ranked first `k` items and their original scores.
    """
    if not 0.0 <= diversity <= 1.0:
        raise ValueError("diversity must be between 0 and 1")
    items, scores = np.asarray(items), np.asarray(scores, dtype=np.float64)
    keep = items >= 0
    items, scores = items[keep], scores[keep]
    k = min(k, len(items))
    if diversity == 0.0 or vectors is None or k <= 1:
        return items[:k], scores[:k]
    span = scores.max() - scores.min()
    relevance = (scores - scores.min()) / span if span > 0 else np.ones_like(scores)
    unit = vectors[items] / np.maximum(np.linalg.norm(vectors[items], axis=1, keepdims=True),
                                       1e-10)
    chosen = [0]
    closest = unit @ unit[0]  # max cosine to the chosen set, per candidate
    available = np.ones(len(items), dtype=bool)
    available[0] = False
    while len(chosen) < k:
        value = (1 - diversity) * relevance - diversity * closest
        value[~available] = -np.inf
        pick = int(np.argmax(value))
        chosen.append(pick)
        available[pick] = False
        closest = np.maximum(closest, unit @ unit[pick])
    order = np.array(chosen)
    return items[order], scores[order]
