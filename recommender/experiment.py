"""Offline evaluation of every model side by side on one split: `shopgraph evaluate DATASET`.

Each data set has one split, built here and nowhere else, so the CLI, the benchmark
(`benchmarks/recommend.py`) and the peer runs all score the same test interactions:

- ``ml100k-kg``: each user's latest 20 % of ratings are test (per-user temporal split);
  tuning uses each user's latest 20 % of the training rows.
- ``gowalla``: LightGCN's published train/test split as shipped; tuning uses a seeded random
  20 % of each user's training items (the files carry no timestamps).
- ``completejourney``: the last 4 weeks of transactions are test, the 4 weeks before them
  validation (a global time cut, as a shop would deploy); pairs are built from the raw
  transactions, so a product bought before the cut is a training item even when it is
  bought again after it (and `evaluate` drops it from the user's test items).

Every model is fitted on the training split and scored by `recommender.evaluation.evaluate`
(all items ranked, training items excluded). Reported per model: the metrics at K, fit
seconds, seconds per epoch where a model has epochs, peak resident memory during the fit,
and single-user recommendation latency (p50/p99 over up to 200 test users).
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from kg.export import GraphSnapshot, export_graph
from kg.schema import PRODUCT, USER
from recommender.als import ALSRecommender
from recommender.base import Recommender
from recommender.baselines import BPRMF, ItemKNN, Popularity
from recommender.evaluation import (
    PROTOCOLS,
    evaluate,
    global_time_split,
    protocol_split,
    random_split_per_user,
    time_cut,
)
from recommender.graph_filter import GraphFilterRecommender
from recommender.history import HistoryWeighting, history_matrix
from recommender.time_aware import RecentPopularity
from recommender.training import HybridConfig, interaction_frame, tune_and_fit
from recommender.tuning import combinations, key, validation_scores

DATASETS = ("ml100k-kg", "gowalla", "completejourney")
MODELS = ("popularity", "trending", "itemknn", "bpr", "als", "graph_filter", "gnn", "hybrid")
WEEK = 7 * 24 * 3600
# each data set's protocol when none is asked for: the one its published numbers use
DEFAULT_PROTOCOLS = {"ml100k-kg": "per-user", "gowalla": "published",
                     "completejourney": "global-time"}

# baselines' parameters: the best of benchmarks/recommend_peers.py's grids on ml-100k
BASELINES: dict[str, dict[str, Any]] = {
    "popularity": {},
    "itemknn": {"neighbours": 200, "shrinkage": 0.0},
    "bpr": {"factors": 64, "learning_rate": 0.0025, "regularization": 0.001,
            "iterations": 200},
    "als": {"factors": 256, "regularization": 10.0, "alpha": 1.0, "iterations": 15},
    "trending": {},
    "graph_filter": {"factors": 256, "ideal_weight": 0.3},
}
# what each baseline is tuned over on the split's validation rows (never the test): every
# combination is fitted on the training rows minus the validation rows, the best NDCG@20 wins
# and is refitted on all training rows. Trending learns its half-life on the same rows.
GRIDS: dict[str, dict[str, tuple[Any, ...]]] = {
    "itemknn": {"neighbours": (50, 200, 800), "shrinkage": (0.0, 10.0)},
    "bpr": {"learning_rate": (0.0025, 0.01), "regularization": (0.001, 0.01)},
    "als": {"factors": (64, 256), "regularization": (1.0, 10.0, 50.0), "alpha": (1.0, 5.0)},
    "graph_filter": {"ideal_weight": (0.1, 0.3, 0.6), "item_exponent": (0.4, 0.5)},
}


@dataclass
class Split:
    """One data set's train/validation/test interactions over one snapshot's id maps."""

    dataset: str
    description: str
    snapshot: GraphSnapshot
    train: pd.DataFrame  # user, item, ts rows (integer rows of the snapshot's id maps)
    test: pd.DataFrame
    valid: pd.DataFrame  # a subset of `train` (the tuning split)
    half_life: float | None  # recency weighting for the hybrid (None: no timestamps)
    shape: tuple[int, int] = (0, 0)
    notes: list[str] = field(default_factory=list)
    protocol: str = "per-user"
    cut: float | None = None

    def matrices(self) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        """Binary train and test matrices (what the baselines fit and everything is scored on)."""
        return (history_matrix(self.train, self.shape, None),
                history_matrix(self.test, self.shape, None))


def load_split(dataset: str, data_dir: Path | None = None, progress: bool = False,
               protocol: str | None = None, cut: float | None = None) -> Split:
    """Import `dataset` into a throw-away embedded store and build its split.

    `protocol` is one of `PROTOCOLS` (per-user, global-time, random; gowalla also
    "published", its own split and default), `cut` the share of rows that trains (global-time:
    a quantile of timestamps, or a timestamp). Tuning rows come from the same protocol applied
    inside the training rows, never from the test.
    """
    from kg.embedded import EmbeddedStore
    from kg.importers import load_dataset

    if dataset not in DATASETS:
        raise ValueError(f"no evaluation split for {dataset!r}; choose one of {DATASETS}")
    protocol = protocol or DEFAULT_PROTOCOLS[dataset]
    allowed = ("published", "random") if dataset == "gowalla" else PROTOCOLS
    if protocol not in allowed:
        reason = " (its files carry no timestamps)" if dataset == "gowalla" else ""
        raise ValueError(f"protocol {protocol!r} is not available for {dataset}{reason}; "
                         f"choose one of {allowed}")
    with tempfile.TemporaryDirectory() as tmp:
        store = EmbeddedStore(Path(tmp) / "graph")
        load_dataset(dataset, store, data_dir, progress=progress)
        snapshot = export_graph(store)
        store.close()
    shape = (len(snapshot.ids[USER]), len(snapshot.ids[PRODUCT]))
    frame = interaction_frame(snapshot)
    if dataset == "gowalla":
        if protocol == "published":
            is_test = (frame["split"] == "test").to_numpy()
            train, test = frame[~is_test], frame[is_test]
            train, test = train.reset_index(drop=True), test.reset_index(drop=True)
            _, valid = random_split_per_user(train, 0.8)
            return Split(dataset, "LightGCN's published split (train.txt / test.txt); tuning "
                         "on a seeded random 20 % of each user's training items",
                         snapshot, train, test, valid[["user", "item", "ts"]], None, shape,
                         protocol=protocol)
        frame = frame.assign(ts=0)
    notes: list[str] = []
    if dataset == "completejourney":
        frame = _completejourney_transactions(snapshot, data_dir)
        notes.append("Complete Journey is simulated from real shopping patterns (84.51°).")
        if protocol == "global-time" and cut is None:
            at = int(frame["ts"].max()) - 4 * WEEK + 1
            train, test = global_time_split(frame, at)
            _, valid = global_time_split(train, at - 4 * WEEK)
            return Split(dataset, "global time cut: the last 4 weeks of transactions are "
                         "test, the 4 weeks before them validation; pairs from raw "
                         "transactions", snapshot, train, test, valid, 5.0, shape, notes,
                         protocol=protocol, cut=float(at))
    train, test = protocol_split(frame, protocol, cut)
    # the same protocol inside the training rows: a quantile cut stays a quantile, a
    # timestamp cut tunes on the latest 20 % of the training rows
    inner = cut if cut is None or cut < 1 else None
    _, valid = protocol_split(train, protocol, inner)
    share = 0.8 if cut is None else cut
    description = {
        "per-user": f"per-user temporal: each user's latest {1 - share:.0%} of interactions "
                    "are test; tuning on the latest part of each user's training rows",
        "random": f"random: a seeded {1 - share:.0%} of each user's interactions are test; "
                  "tuning on a random part of each user's training rows",
        "global-time": (f"global time cut at {time_cut(frame, cut)} "
                        f"({'quantile ' + format(share, 'g') if share < 1 else 'timestamp'}): "
                        "rows before it train, what users with history before it do after "
                        "it is test; tuning on the same cut inside the training rows"),
    }[protocol]
    # a random hold-out is drawn from the whole history, so weighting the latest items up
    # (what serves the future) biases against it: histories stay unweighted there
    half_life = None if dataset == "gowalla" or protocol == "random" else 5.0
    return Split(dataset, description, snapshot, train, test, valid, half_life, shape, notes,
                 protocol=protocol, cut=cut)


def _completejourney_transactions(snapshot: GraphSnapshot, data_dir: Path | None
                                  ) -> pd.DataFrame:
    from kg.importers.completejourney import TRANSACTION_COLUMNS, _read, default_dir

    raw = _read(data_dir or default_dir(), "transactions", TRANSACTION_COLUMNS)
    frame = pd.DataFrame({
        "user": pd.Index(snapshot.ids[USER]).get_indexer(raw["household_id"].astype(str)),
        "item": pd.Index(snapshot.ids[PRODUCT]).get_indexer(raw["product_id"].astype(str)),
        "ts": raw["transaction_timestamp"].astype("datetime64[s]").astype("int64"),
    })
    return frame[(frame["user"] >= 0) & (frame["item"] >= 0)].reset_index(drop=True)


class PeakMemory:
    """Peak resident memory (MB) of this process while the block runs, polled every 20 ms."""

    def __enter__(self) -> PeakMemory:
        self.peak_mb = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self._rss())

    def _poll(self) -> None:
        while not self._stop.wait(0.02):
            self.peak_mb = max(self.peak_mb, self._rss())

    @staticmethod
    def _rss() -> float:
        try:
            with open("/proc/self/statm") as f:
                pages = int(f.read().split()[1])
            import os

            return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
        except (OSError, ValueError):
            return float("nan")


def latency_ms(model: Recommender, train: sp.csr_matrix, users: np.ndarray, k: int = 20,
               n: int = 200, seed: int = 0) -> dict[str, float]:
    """p50/p99 of one-user `recommend` calls (what a request costs), in milliseconds."""
    rng = np.random.default_rng(seed)
    sample = rng.choice(users, min(n, len(users)), replace=False)
    times = []
    for user in sample:
        start = time.perf_counter()
        model.recommend(int(user), train[int(user)], k=k)
        times.append((time.perf_counter() - start) * 1000)
    return {"p50": float(np.percentile(times, 50)), "p99": float(np.percentile(times, 99))}


def _baseline(name: str, threads: int, params: dict[str, Any] | None = None) -> Recommender:
    params = BASELINES[name] if params is None else params
    if name == "popularity":
        return Popularity()
    if name == "trending":
        return RecentPopularity(**params)
    if name == "itemknn":
        return ItemKNN(**params)
    if name == "bpr":
        return BPRMF(num_threads=threads, **params)
    if name == "graph_filter":
        return GraphFilterRecommender(**params)
    return ALSRecommender(num_threads=threads, **params)


def tune_baseline(name: str, split: Split, threads: int = 1,
                  log: Callable[[str], None] = print) -> tuple[dict[str, Any], dict[str, Any]]:
    """The parameters of baseline `name` with the best validation NDCG@20 over `GRIDS`.

    Returns (parameters, {"grid": [[params, ndcg, recall], ...]}); a baseline without a grid
    keeps `BASELINES`. Trending returns the half-life it learned on the validation rows.
    """
    fit_rows = split.train.drop(index=split.valid.index)
    fit = history_matrix(fit_rows, split.shape, None)
    valid = history_matrix(split.valid, split.shape, None)
    if name == "trending":
        model = RecentPopularity().fit(fit, interactions=fit_rows, valid=valid)
        return ({"half_life_days": model.best_half_life_days},
                {"validation_ndcg": {str(k): v for k, v in model.validation.items()}})
    grid = GRIDS.get(name)
    if not grid:
        return dict(BASELINES[name]), {}
    trials = []
    for params in combinations(grid, BASELINES[name]):
        ndcg, recall = validation_scores(_baseline(name, threads, params).fit(fit), fit, valid)
        trials.append([params, ndcg, recall])
        log(f"  {name} {key({p: params[p] for p in grid})}: valid NDCG@20 {ndcg:.4f}")
    best = max(trials, key=lambda t: (t[1], t[2]))
    return dict(best[0]), {"grid": trials}


def run_models(split: Split, models: Sequence[str] = MODELS, config: HybridConfig | None = None,
               k: int = 20, prefitted: dict[str, tuple[Recommender, Recommender]] | None = None,
               log: Callable[[str], None] = print, tune: bool = True) -> dict[str, Any]:
    """Fit and score each model on `split`; the GNN row is the hybrid's own GNN source.

    With `tune`, every baseline's parameters are chosen on the split's validation rows
    (`tune_baseline`) before it is refitted on the training rows and tested; without, the
    fixed `BASELINES` are used (what a run that cannot afford the grid does: Gowalla's BPR)."""
    unknown = set(models) - set(MODELS)
    if unknown:
        raise ValueError(f"unknown models {sorted(unknown)}; choose from {MODELS}")
    config = config or HybridConfig(half_life=split.half_life)
    train, test = split.matrices()
    test_users = np.flatnonzero(np.diff((test - test.multiply(train)).tocsr().indptr) > 0)
    report: dict[str, Any] = {
        "dataset": split.dataset, "split": split.description, "protocol": split.protocol,
        "cut": split.cut, "notes": split.notes, "k": k,
        "shape": list(split.shape), "train": int(train.nnz), "test": int(test.nnz),
        "valid": int(len(split.valid)), "config": config.to_dict(), "models": {}}
    for name in models:
        if name in ("gnn", "hybrid"):
            continue
        log(f"{split.dataset}: fitting {name} ...")
        # trending's half-life is learned on validation even without grids: it costs seconds
        params, tuning = (tune_baseline(name, split, config.threads, log)
                          if tune or name == "trending" else (dict(BASELINES[name]), {}))
        model = _baseline(name, config.threads, params)
        fit_args = {"interactions": split.train} if name == "trending" else {}
        with PeakMemory() as memory:
            start = time.perf_counter()
            model.fit(train, **fit_args)
            seconds = time.perf_counter() - start
        report["models"][name] = _scored(model, train, test, k, seconds, memory.peak_mb,
                                         test_users, {"params": params, "tuning": tuning})
        log(f"  {name}: {_short(report['models'][name], k)}")
    if {"gnn", "hybrid"} & set(models):
        wanted_gnn = "gnn" in models
        log(f"{split.dataset}: tuning and fitting the hybrid ...")
        with PeakMemory() as memory:
            start = time.perf_counter()
            hybrid = tune_and_fit(config, split.snapshot, split.train, split.shape,
                                  valid=split.valid, prefitted=prefitted, log=log)
            seconds = time.perf_counter() - start
        # the hybrid's own weighting (its learned decay, its fixed training cut)
        weighted = HistoryWeighting.from_dict(hybrid.tuning["history"]).matrix(
            split.train, split.shape)
        if "hybrid" in models:
            report["models"]["hybrid"] = _scored(
                hybrid, weighted, test, k, seconds, memory.peak_mb, test_users,
                {"weights": hybrid.weights, "tuning": hybrid.tuning})
            log(f"  hybrid: {_short(report['models']['hybrid'], k)}")
        gnn = hybrid.sources.get("gnn")
        if wanted_gnn and gnn is not None:
            epochs = list(getattr(gnn, "epoch_seconds", []))
            extra = {"params": gnn.config(), "epochs": len(epochs),
                     "epoch_s": float(np.median(epochs)) if epochs else None,
                     "best_epoch_tuning": hybrid.tuning.get("gnn_best_epoch")}
            report["models"]["gnn"] = _scored(gnn, weighted, test, k, float(sum(epochs)),
                                              None, test_users, extra)
            log(f"  gnn: {_short(report['models']['gnn'], k)}")
    return report


def _scored(model: Recommender, train: sp.csr_matrix, test: sp.csr_matrix, k: int,
            seconds: float, peak_mb: float | None, users: np.ndarray, extra: dict[str, Any]
            ) -> dict[str, Any]:
    result = evaluate(model, train, test, k=k)
    return {"metrics": result, "train_s": round(seconds, 3),
            "peak_rss_mb": None if peak_mb is None else round(peak_mb, 1),
            "latency_ms": latency_ms(model, train, users, k), **extra}


def _short(entry: dict[str, Any], k: int) -> str:
    m = entry["metrics"]
    return (f"Recall@{k} {m[f'recall@{k}']:.4f} NDCG@{k} {m[f'ndcg@{k}']:.4f} "
            f"({entry['train_s']:.1f} s)")


def markdown_table(report: dict[str, Any]) -> str:
    """One row per model: the metrics, train time, epoch time, memory, latency."""
    k = report["k"]
    lines = [f"| model | Recall@{k} | NDCG@{k} | Precision@{k} | HitRate@{k} | MRR@{k} | "
             f"Coverage@{k} | train s | s/epoch | peak RSS MB | p50 ms | p99 ms |",
             "|---|" + "---:|" * 11]
    for name, entry in report["models"].items():
        m = entry["metrics"]
        epoch = entry.get("epoch_s")
        peak = entry.get("peak_rss_mb")
        lat = entry.get("latency_ms") or {}
        cells = [name] + [f"{m[f'{key}@{k}']:.4f}" for key in
                          ("recall", "ndcg", "precision", "hit_rate", "mrr", "coverage")]
        cells += [f"{entry['train_s']:.1f}", "-" if epoch is None else f"{epoch:.2f}",
                  "-" if peak is None else f"{peak:.0f}",
                  f"{lat['p50']:.2f}" if lat else "-", f"{lat['p99']:.2f}" if lat else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
