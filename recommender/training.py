"""Training the hybrid from a graph store: interactions, splits, sources, tuning, artifacts.

`train_recommender` is what `shopgraph train` runs after the content artifacts:

1. snapshot the store; interactions become (user row, product row, ts) rows, minus an
   optional hold-out (a caller's own test split);
2. split the training rows for tuning (`tuning_split`: by default a time cut inside them,
   the latest 20 % of the period validates);
3. learn the history decay's half-life and ALS's parameters on that validation
   (`tune_sources`), fit every source on the fit part and tune the blend weights on the
   validation part (`HybridRecommender.tune`);
4. refit every source on all (non-held-out) interactions with those weights;
5. write a new artifact version under `WORKSPACE/artifacts/recommender/` and point
   `CURRENT` at it atomically, so a running server can swap models without a gap.

`build_sources` is the one place that says which sources a hybrid has and how each is
configured; the evaluation code uses it too, so what is measured is what is served.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from kg.export import GraphSnapshot, export_graph, product_catalog
from kg.schema import INTERACTED, PRODUCT, USER, DataError
from kg.store import GraphStore
from recommender.als import ALSRecommender
from recommender.base import Recommender
from recommender.baselines import ItemKNN, Popularity
from recommender.evaluation import protocol_split
from recommender.graph_filter import GraphFilterRecommender
from recommender.graph_paths import GraphPathRecommender, product_links
from recommender.history import DECAYS, DEFAULT_KIND_WEIGHTS, HistoryWeighting, history_matrix
from recommender.hybrid import HybridRecommender
from recommender.time_aware import RecentPopularity, Transitions
from recommender.tuning import best_on_grid, combinations, key, validation_scores

RECOMMENDER_DIR = ("artifacts", "recommender")
KEEP_VERSIONS = 2


@dataclass
class HybridConfig:
    """Everything that shapes a trained hybrid; defaults tuned on ml-100k's validation split."""

    half_life: float | None = 5.0  # recency weighting of histories; None = unweighted
    # "position": a user's k-th latest product weighs 0.5 ** (k / half_life); "time": a pair
    # weighs 0.5 ** ((t_ref - ts) / history_half_life_days) from the training cut t_ref,
    # the half-life learned on the validation rows over `history_grid_days` when None
    history_decay: str = "position"
    history_half_life_days: float | None = None
    history_grid_days: tuple[float, ...] = (365.0, 90.0, 30.0, 14.0, 7.0)
    # search ALS's parameters over `source_grid` on the same validation rows (9 ALS fits:
    # +17 s on ml100k-kg, an estimated +5 min on Complete Journey, which would break
    # `make demo`'s 10 minutes; and it did not raise the blend's validation NDCG on
    # ml100k-kg: docs/recommending.md). Off keeps `als` as given.
    tune_sources: bool = False
    source_grid: dict[str, tuple[Any, ...]] = field(default_factory=lambda: {
        "regularization": (1.0, 10.0, 50.0), "alpha": (1.0, 5.0, 20.0)})
    # confidence per (user, product) from interaction kind and count; None = 1 per pair
    kind_weights: dict[str, float] | None = field(
        default_factory=lambda: dict(DEFAULT_KIND_WEIGHTS))
    als: dict[str, Any] = field(default_factory=lambda: {
        "factors": 256, "regularization": 10.0, "alpha": 5.0, "iterations": 15})
    als_engine: str = "implicit"  # "spark": ALS fitted by Spark MLlib (recommender.spark_als)
    spark_master: str | None = None  # a Spark cluster URL; None = Spark local mode
    itemknn: dict[str, Any] = field(default_factory=lambda: {"neighbours": 200})
    gnn: dict[str, Any] | None = field(default_factory=lambda: {
        "dim": 64, "layers": 3, "epochs": 200, "learning_rate": 5e-3, "eval_every": 5,
        "patience": 3, "device": "auto", "pairs": "users"})
    gnn_kg_edges: bool = True  # widen the GNN's graph with the knowledge graph
    # the closed-form graph source (GF-CF over users + KG nodes): minutes on a CPU where the
    # GNN needs hours; None leaves it out
    graph_filter: dict[str, Any] | None = field(default_factory=lambda: {
        "factors": 256, "ideal_weight": 0.2, "item_exponent": 0.4, "kg_weight": 0.1})
    graph_paths: bool = True
    # time-aware sources (recommender.time_aware); None leaves one out. Trending's half-life
    # is learned on the validation rows and kept for the refit.
    trending: dict[str, Any] | None = field(default_factory=dict)
    transitions: dict[str, Any] | None = field(default_factory=dict)
    candidates: int = 200
    valid_ratio: float = 0.2
    # how tuning rows are drawn from the training rows: "global-time" (the latest
    # `valid_ratio` of the training period, as the model is served: trained up to a date,
    # asked about what follows), "per-user" (each user's latest share) or "random"
    valid_protocol: str = "global-time"
    max_tune_users: int = 3000
    threads: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def interaction_frame(snapshot: GraphSnapshot) -> pd.DataFrame:
    """Interactions as integer rows: user, item, ts (missing ts = 0), kind, count (and
    split)."""
    rels = snapshot.rels[INTERACTED.name]
    frame = pd.DataFrame({
        "user": pd.Index(snapshot.ids[USER]).get_indexer(rels["source"].astype(str)),
        "item": pd.Index(snapshot.ids[PRODUCT]).get_indexer(rels["target"].astype(str)),
        "ts": (pd.to_numeric(rels["ts"], errors="coerce").fillna(0).astype(np.int64)
               if "ts" in rels else np.zeros(len(rels), dtype=np.int64)),
        "kind": rels["key"].astype(str).to_numpy() if "key" in rels else "interaction",
        "count": (pd.to_numeric(rels["count"], errors="coerce").fillna(1).astype(np.int64)
                  if "count" in rels else np.ones(len(rels), dtype=np.int64)),
    })
    if "split" in rels:  # data sets that ship their own split (gowalla)
        frame["split"] = rels["split"].astype(str).to_numpy()
    return frame[(frame["user"] >= 0) & (frame["item"] >= 0)].reset_index(drop=True)


def read_holdout(path: str | Path, snapshot: GraphSnapshot) -> pd.DataFrame:
    """A CSV of `user_id,product_id` rows as (user, item) rows; bad lines raise DataError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"hold-out file not found: {path}")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"not a readable CSV: {exc}", file=str(path)) from exc
    for column in ("user_id", "product_id"):
        if column not in table.columns:
            raise DataError(f"missing column {column!r} (header must be user_id,product_id)",
                            file=str(path), line=1, field=column)
    users = pd.Index(snapshot.ids[USER]).get_indexer(table["user_id"].str.strip())
    items = pd.Index(snapshot.ids[PRODUCT]).get_indexer(table["product_id"].str.strip())
    for column, rows in (("user_id", users), ("product_id", items)):
        bad = np.flatnonzero(rows < 0)
        if len(bad):
            value = table[column].iloc[bad[0]]
            raise DataError(f"unknown {column} {value!r}", file=str(path),
                            line=int(bad[0]) + 2, field=column)
    return pd.DataFrame({"user": users, "item": items})


def drop_pairs(frame: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """`frame` without any row whose (user, item) is in `pairs`."""
    if pairs.empty:
        return frame
    keys = frame["user"].to_numpy(np.int64) * (1 << 32) + frame["item"].to_numpy(np.int64)
    out = pairs["user"].to_numpy(np.int64) * (1 << 32) + pairs["item"].to_numpy(np.int64)
    return frame[~np.isin(keys, out)].reset_index(drop=True)


def tuning_split(frame: pd.DataFrame, protocol: str = "global-time", valid_ratio: float = 0.2
                 ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(fit rows, validation rows) of the training rows under `protocol`.

    Without timestamps (every ts equal) a time cut means nothing: the split falls back to a
    seeded random share of each user's rows, and says so in the validation frame's attrs.
    """
    if protocol == "global-time" and frame["ts"].nunique() < 2:
        protocol = "random"
    try:
        fit_part, valid = protocol_split(frame, protocol, 1.0 - valid_ratio)
    except ValueError:  # a cut leaving one side empty
        fit_part, valid = frame.iloc[:0], frame.iloc[:0]
    if valid.empty:  # e.g. a cut that leaves no returning user: fall back per user
        fit_part, valid = protocol_split(frame, "per-user", 1.0 - valid_ratio)
        protocol = "per-user"
    valid.attrs["protocol"] = protocol
    return fit_part, valid


def history_weighting(config: HybridConfig, t_ref: float | None = None) -> HistoryWeighting:
    """How `config` weighs histories, with the training cut `t_ref` for a time decay."""
    if config.history_decay not in DECAYS:
        raise ValueError(f"history_decay must be one of {DECAYS}, not {config.history_decay!r}")
    if config.history_decay == "time":
        return HistoryWeighting("time", None, config.history_half_life_days, t_ref,
                                config.kind_weights)
    return HistoryWeighting("position", config.half_life, None, None, config.kind_weights)


def training_cut(frame: pd.DataFrame) -> float | None:
    """The latest timestamp of `frame` (its `t_ref`); None when it carries no times."""
    if frame.empty or "ts" not in frame or frame["ts"].nunique() < 2:
        return None
    return float(frame["ts"].max())


def tune_sources(config: HybridConfig, fit_part: pd.DataFrame, valid_matrix: sp.csr_matrix,
                 shape: tuple[int, int], log: Callable[[str], None] = print
                 ) -> tuple[HybridConfig, dict[str, Any]]:
    """The config with the time decay's half-life and (with `tune_sources`) ALS's parameters
    chosen on validation, and a report of every trial.

    Only `fit_part` (training rows before the validation cut) and `valid_matrix` (training
    rows after it) are read. The half-life is chosen first, by the mean validation NDCG@20 of
    ALS and item-kNN (the two sources that read the weights), longest first, a shorter one
    kept only if 1 % better (`tuning.best_on_grid`, as trending learns its half-life); then
    ALS's grid on the chosen weighting, by ALS's own NDCG@20.
    """
    report: dict[str, Any] = {}
    t_ref = training_cut(fit_part)
    started = time.perf_counter()
    learn_decay = (config.history_decay == "time" and config.history_half_life_days is None)
    if learn_decay and t_ref is None:  # no timestamps: a calendar decay means nothing
        config = _replace(config, history_decay="position")
        report["history_note"] = "no timestamps: positional decay kept"
        learn_decay = False
    if learn_decay:
        def decay_score(days: float) -> float:
            weighting = history_weighting(_replace(config, history_half_life_days=days), t_ref)
            fit = weighting.matrix(fit_part, shape)
            als = ALSRecommender(num_threads=config.threads, **config.als).fit(fit)
            knn = ItemKNN(weighted_history=True, **config.itemknn).fit(fit)
            return (validation_scores(als, fit, valid_matrix)[0]
                    + validation_scores(knn, fit, valid_matrix)[0]) / 2

        days, trials = best_on_grid(tuple(config.history_grid_days), decay_score, 0.01)
        config = _replace(config, history_half_life_days=float(days))
        report["history_half_life_days"] = float(days)
        report["history_grid"] = [[d, v] for d, v in trials]
        log("history half-life: " + ", ".join(f"{d:g} d {v:.4f}" for d, v in trials)
            + f" -> {days:g} days")
    if config.tune_sources and config.source_grid and config.als_engine == "implicit":
        fit = history_weighting(config, t_ref).matrix(fit_part, shape)
        grid = combinations(config.source_grid, config.als)

        def als_score(params: dict[str, Any]) -> float:
            model = ALSRecommender(num_threads=config.threads, **params).fit(fit)
            return validation_scores(model, fit, valid_matrix)[0]

        # the configured parameters first: another set must beat them by 1 %
        ordered = sorted(grid, key=lambda p: p != config.als)
        best, trials = best_on_grid(ordered, als_score, 0.01)
        config = _replace(config, als=dict(best))
        report["als"] = {k: best[k] for k in config.source_grid}
        report["als_grid"] = [[{k: p[k] for k in config.source_grid}, v] for p, v in trials]
        log("ALS grid: " + "; ".join(f"{key({k: p[k] for k in config.source_grid})} {v:.4f}"
                                     for p, v in trials) + f" -> {report['als']}")
    report["seconds"] = round(time.perf_counter() - started, 1)
    return config, report


def _replace(config: HybridConfig, **changes: Any) -> HybridConfig:
    return HybridConfig(**{**config.to_dict(), **changes})


def build_sources(config: HybridConfig, snapshot: GraphSnapshot | None,
                  features: np.ndarray | None = None
                  ) -> tuple[dict[str, Recommender], dict[str, dict[str, Any]]]:
    """The hybrid's sources and the extra `fit` arguments each needs (the GNN's graph)."""
    sources: dict[str, Recommender] = {
        "als": ALSRecommender(num_threads=config.threads, engine=config.als_engine,
                              spark_master=config.spark_master, **config.als),
        "copurchase": ItemKNN(weighted_history=history_weighting(config).weighted,
                              **config.itemknn),
        "popularity": Popularity(),
    }
    options: dict[str, dict[str, Any]] = {}
    if config.gnn is not None:
        from recommender.gnn import GraphRecommender

        sources["gnn"] = GraphRecommender(num_threads=config.threads, **config.gnn)
        graph = (snapshot.to_hetero_data() if snapshot is not None and config.gnn_kg_edges
                 else None)
        options["gnn"] = {"graph": graph, "product_features": features}
    if config.trending is not None:
        sources["trending"] = RecentPopularity(**config.trending)
    if config.transitions is not None:
        sources["transitions"] = Transitions(**config.transitions)
    links = product_links(snapshot) if snapshot is not None else {}
    if config.graph_filter is not None:
        sources["graph_filter"] = GraphFilterRecommender(**config.graph_filter)
        options["graph_filter"] = {
            "item_links": (sp.hstack([family.incidence for family in links.values()]).tocsr()
                           if links else None),
            "product_features": features}
    if config.graph_paths:
        for family, family_links in links.items():
            sources[f"kg_{family}"] = GraphPathRecommender(family_links)
    return sources, options


def tune_and_fit(config: HybridConfig, snapshot: GraphSnapshot | None, frame: pd.DataFrame,
                 shape: tuple[int, int], features: np.ndarray | None = None,
                 valid: pd.DataFrame | None = None,
                 prefitted: Mapping[str, tuple[Recommender, Recommender]] | None = None,
                 log: Callable[[str], None] = print) -> HybridRecommender:
    """Tune weights on a validation split of `frame`, then refit on all of `frame`.

    `valid` (rows of `frame` to validate on) defaults to `tuning_split` under
    `config.valid_protocol`. Before the blend, `tune_sources` learns the time decay's
    half-life and ALS's parameters on the same rows; the refit keeps them, and the refit's
    weighting (with its training cut `t_ref`) is recorded in `tuning["history"]`. The GNN
    early-stops on the same validation rows during tuning and is refitted for its best epoch
    count. `prefitted[name]` replaces a source by two models trained elsewhere (e.g. a GNN on
    a GPU): one fitted on the fit
    part, used for tuning, and one fitted on all of `frame`.
    """
    prefitted = dict(prefitted or {})
    if valid is None:
        fit_part, valid = tuning_split(frame, config.valid_protocol, config.valid_ratio)
    elif valid.index.isin(frame.index).all():
        fit_part = frame.drop(index=valid.index)  # rows, not pairs: a repeat before stays
    else:
        fit_part = drop_pairs(frame, valid)
    valid_matrix = history_matrix(valid, shape, None)
    config, source_report = tune_sources(config, fit_part, valid_matrix, shape, log)
    fit_matrix = history_weighting(config, training_cut(fit_part)).matrix(fit_part, shape)
    sources, options = build_sources(config, snapshot, features)
    sources.update({name: pair[0] for name, pair in prefitted.items()})
    if "gnn" in options:
        options["gnn"] = {**options["gnn"], "valid": valid_matrix}
    _time_options(sources, options, fit_part, valid_matrix)
    model = HybridRecommender(sources, candidates=config.candidates)
    started = time.perf_counter()
    tuning = model.tune(fit_matrix, valid_matrix, options, prefitted=list(prefitted),
                        max_users=config.max_tune_users)
    log(f"tuned blend weights on {tuning['users']} validation users in "
        f"{time.perf_counter() - started:.1f} s: "
        + ", ".join(f"{k} {v:g}" for k, v in tuning["weights"].items() if v))
    if source_report:
        tuning["sources"] = source_report
    final_config = config
    if "gnn" in sources and "gnn" not in prefitted and config.gnn is not None:
        # refit for the epoch count that was best on validation; no validation data now
        best_epoch = getattr(sources["gnn"], "best_epoch", None) or config.gnn["epochs"]
        tuning["gnn_best_epoch"] = int(best_epoch)
        final_config = HybridConfig(**{**config.to_dict(), "gnn": {
            **config.gnn, "epochs": int(best_epoch)}})
    if "trending" in sources and config.trending is not None:
        best_half_life = float(sources["trending"].best_half_life_days)
        tuning["trending_half_life_days"] = best_half_life
        final_config = HybridConfig(**{**final_config.to_dict(), "trending": {
            **config.trending, "half_life_days": best_half_life}})
    sources, options = build_sources(final_config, snapshot, features)
    sources.update({name: pair[1] for name, pair in prefitted.items()})
    _time_options(sources, options, frame, None)
    final = HybridRecommender(sources, weights=tuning["weights"], candidates=config.candidates)
    final.tuning = tuning
    # the refit's training cut is fixed here and kept (tuning["history"]) for serving
    weighting = history_weighting(final_config, training_cut(frame))
    tuning["history"] = asdict(weighting)
    matrix = weighting.matrix(frame, shape)
    started = time.perf_counter()
    final.fit(matrix, options, prefitted=list(prefitted))
    log(f"refitted {len(sources)} sources on {matrix.nnz:,} interactions in "
        f"{time.perf_counter() - started:.1f} s")
    return final


def _time_options(sources: Mapping[str, Recommender], options: dict[str, dict[str, Any]],
                  rows: pd.DataFrame, valid: sp.csr_matrix | None) -> None:
    """The time-aware sources' fit arguments: the timestamped rows (and, while tuning, the
    validation matrix trending learns its half-life on)."""
    if "trending" in sources:
        options["trending"] = {"interactions": rows, **({"valid": valid} if valid is not None
                                                        else {})}
    if "transitions" in sources:
        options["transitions"] = {"interactions": rows}


# ---- artifacts ------------------------------------------------------------------------------
def recommender_dir(workspace: Path) -> Path:
    return Path(workspace).joinpath(*RECOMMENDER_DIR)


def current_version(workspace: Path) -> Path:
    """The directory `CURRENT` points at; FileNotFoundError when nothing was trained."""
    root = recommender_dir(workspace)
    pointer = root / "CURRENT"
    if not pointer.is_file():
        raise FileNotFoundError(f"no trained recommender in {root}: run `shopgraph train`")
    return root / pointer.read_text().strip()


def _publish(workspace: Path, write: Callable[[Path], None]) -> Path:
    """Write a new version with `write(directory)`, then flip `CURRENT` atomically."""
    root = recommender_dir(workspace)
    root.mkdir(parents=True, exist_ok=True)
    now = time.time_ns()  # names sort in time order: pruning keeps the newest
    name = time.strftime("v%Y%m%d-%H%M%S", time.gmtime(now // 10**9)) + f"-{now % 10**9:09d}"
    staging = root / f".{name}.tmp"
    write(staging)
    staging.rename(root / name)
    pointer = root / f".CURRENT.{name}.tmp"
    pointer.write_text(name)
    os.replace(pointer, root / "CURRENT")
    versions = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("v"))
    for stale in versions[:-KEEP_VERSIONS]:
        shutil.rmtree(stale, ignore_errors=True)
    return root / name


def train_recommender(store: GraphStore, workspace: Path, config: HybridConfig | None = None,
                      holdout: str | Path | None = None, log: Callable[[str], None] = print,
                      ) -> dict[str, Any]:
    """Train the hybrid on the store's interactions and publish it in the workspace."""
    config = config or HybridConfig()
    started = time.perf_counter()
    snapshot = export_graph(store)
    frame = interaction_frame(snapshot)
    held = read_holdout(holdout, snapshot) if holdout is not None else pd.DataFrame(
        columns=["user", "item"])
    frame = drop_pairs(frame, held)
    if frame.empty:
        raise ValueError("the store has no interactions to train on: load a data set first")
    shape = (len(snapshot.ids[USER]), len(snapshot.ids[PRODUCT]))
    features = _content_features(workspace, snapshot)
    log(f"training on {len(frame):,} interactions ({shape[0]:,} users x {shape[1]:,} "
        f"products){'' if features is None else ', GNN input = content vectors'}")
    model = tune_and_fit(config, snapshot, frame, shape, features, log=log)
    catalog = product_catalog(snapshot)
    summary = {"interactions": int(len(frame)), "held_out": int(len(held)),
               "users": shape[0], "products": shape[1], "config": config.to_dict(),
               "tuning": model.tuning, "content_features": features is not None,
               "seconds": round(time.perf_counter() - started, 1)}

    def write(directory: Path) -> None:
        model.save(directory / "hybrid")
        (directory / "ids.json").write_text(json.dumps(
            {"users": snapshot.ids[USER], "products": snapshot.ids[PRODUCT]}))
        _catalog_columns(catalog).to_parquet(directory / "catalog.parquet", index=False)
        kept = [c for c in ("user", "item", "ts", "kind", "count") if c in frame]
        frame[kept].to_parquet(directory / "history.parquet", index=False)
        (directory / "train.json").write_text(json.dumps(summary, indent=1, default=str))

    summary["version"] = _publish(Path(workspace), write).name
    return summary


def _catalog_columns(catalog: pd.DataFrame) -> pd.DataFrame:
    """What serving shows and filters on: id, title, brand, category, image, availability."""
    keep = [c for c in ("id", "title", "brand", "category", "image", "in_stock", "in_catalog")
            if c in catalog.columns]
    out = catalog[keep].copy()
    for column in ("title", "brand", "category", "image"):
        if column in out:
            out[column] = out[column].astype("string")
    return out


def _content_features(workspace: Path, snapshot: GraphSnapshot) -> np.ndarray | None:
    """The content vectors when `build_content` ran on this same catalog, else None."""
    from recommender.content import ContentArtifacts, content_dir

    directory = content_dir(Path(workspace))
    if not (directory / "meta.json").is_file():
        return None
    try:
        artifacts = ContentArtifacts.load(directory)
    except (FileNotFoundError, ValueError, KeyError):
        return None
    if artifacts.lexical or list(artifacts.ids) != list(snapshot.ids[PRODUCT]):
        return None  # a lexical (BM25 + graph) build has no vectors to feed the GNN
    return artifacts.content_vectors()

