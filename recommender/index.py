"""A vector index over faiss for product search and GNN/ALS neighbour retrieval.

`VectorIndex` maps string ids (product ids, user ids) to float32 vectors and answers top-k
queries, optionally restricted by attribute filters and exclusions:

* kind "flat": exact search (`IndexFlatIP` / `IndexFlatL2`); "hnsw": approximate search with
  `IndexHNSWFlat` (M=32, efConstruction=80, efSearch 128 by default, tunable per index);
  "ivf": approximate search with `IndexIVFFlat` whose coarse quantizer is an `IndexHNSWFlat`
  over the centroids (faiss "IVF{nlist}_HNSW32,Flat"); "auto": flat below `ivf_min_items`
  items (`IVF_MIN_ITEMS`, chosen from `benchmarks/ann_index.py`), IVF at and above, since exact
  search is fast and needs no tuning below that size and IVF is clearly faster above it.
* IVF: nlist = 4 * sqrt(n) (bounded by n / 39, faiss' minimum of training points per list, and
  by `IVF_MAX_NLIST`), k-means trained on a seeded sample of `IVF_TRAIN_PER_LIST` rows per list.
  nprobe is tuned at build time: the smallest on a 1, 2, 3, 4, 6, 8, 12, ... grid whose
  recall@20 against exact search reaches `target_recall` (0.95) + `IVF_TUNING_MARGIN` (0.02) on
  `IVF_RECALL_QUERIES` (200) seeded self-queries: rows of the indexed vectors, each query's own
  row left out of both result lists. That nprobe and the recall it measured are kept with the
  index (`params`, saved in meta.json), so every IVF index says how exact it is. Should no
  nprobe reach the target (vectors without cluster structure), "ivf" warns and "auto" builds
  the flat index instead; "auto" also does so when the target needs more than
  `IVF_MAX_PROBE_SHARE` (1/4) of the lists (then IVF is no faster than exact search: measured
  on ALS item factors, 800 of 800 lists), and says why in `params["ivf_rejected"]`.
  The lists hold full vectors ("Flat"), not PQ codes: the catalogs here (up to ~1M items of
  64-384 dims, 0.25-1.5 GB) fit in memory, and PQ would cost recall that re-ranking would have to
  buy back; PQ is the step for tens of millions of items. The HNSW quantizer makes the coarse
  assignment (adding vectors, the first step of each query) sub-linear in nlist.
* metric "ip" scores by inner product (higher is better) and "l2" by squared Euclidean distance
  (lower is better). Vectors are never normalised here: pass unit vectors for cosine similarity.
* Flat and IVF indexes move to the GPU when faiss-gpu sees one (`use_gpu=None`), falling back
  to the CPU on any failure; `device` says which is used (the GPU IVF copy inherits the tuned
  nprobe; the IVF GPU path has not been run on a GPU in this project's tests). HNSW always
  stays on the CPU because faiss has no GPU HNSW. Filtered or excluding searches always run on
  the CPU copy, because faiss GPU indexes do not take `IDSelector`s; only unrestricted searches
  use the GPU.
* Filters and exclusions become a faiss `IDSelectorBatch` passed through `SearchParameters`, so
  faiss skips disallowed items during the search instead of the caller over-fetching and
  dropping them: a filter keeping 1% of the catalog still yields k results when k exist. For
  HNSW, a filter that keeps at most `exact_threshold` items is answered exactly by scanning the
  HNSW's flat storage with the selector (a graph walk where most nodes are filtered out loses
  recall), and any query row that HNSW answers with fewer than k results is redone exactly.
  IVF does the same; its exact scan visits every inverted list (the lists hold the full
  vectors, so no second flat copy is kept).

Searches never mutate the index (efSearch and nprobe are passed per call), so one index may
serve concurrent readers. Indexes are built once and never updated in place: rebuild to change them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pandas as pd

FORMAT = "shopgraph-vector-index"
FORMAT_VERSION = 1
INDEX_FILE = "index.faiss"
IDS_FILE = "ids.json"
ATTRIBUTES_FILE = "attributes.parquet"
META_FILE = "meta.json"

HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
DEFAULT_EF_SEARCH = 128
DEFAULT_EXACT_THRESHOLD = 20_000

# IVF: "auto" switches from exact to IVF at this many items (benchmarks/results/ann_index.md)
IVF_MIN_ITEMS = 30_000
IVF_QUANTIZER_M = 32  # HNSW links per centroid in the coarse quantizer
IVF_QUANTIZER_EF = 64  # the quantizer's efSearch floor (raised to 2 * nprobe)
IVF_MAX_NLIST = 65_536
IVF_TRAIN_PER_LIST = 50  # k-means sample: rows per list (faiss wants >= 39)
IVF_RECALL_QUERIES = 200
IVF_RECALL_K = 20
DEFAULT_TARGET_RECALL = 0.95
# nprobe is tuned to target + margin on 200 queries: the mean recall of 200 queries has a
# standard error near 0.01, so the margin keeps the recall of unseen queries at the target
IVF_TUNING_MARGIN = 0.02
DEFAULT_SEED = 0
# "auto" keeps IVF only when its tuned nprobe scans at most this share of the lists
IVF_MAX_PROBE_SHARE = 0.25

# Filter keys whose values are category paths: {"category": "Apparel"} matches "Apparel" itself
# and every path below it ("Apparel > Topwear", ...) but not "Apparel Accessories".
PATH_COLUMNS = frozenset({"category"})
PATH_SEPARATOR = " > "

METRICS = ("ip", "l2")
KINDS = ("flat", "hnsw", "ivf")

Result = list[tuple[str, float]]


class CorruptIndexError(ValueError):
    """A saved index directory exists but cannot be read back (missing or inconsistent files)."""


def _as_matrix(values: Any, what: str, dim: int | None = None) -> np.ndarray:
    """Validates a 2-D finite float array and returns it as C-contiguous float32 (faiss input)."""
    arr = np.asarray(values)
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{what} must be a floating-point array, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{what} must be 2-D (rows x dim), got shape {arr.shape}")
    if arr.shape[1] == 0:
        raise ValueError(f"{what} have dimension 0")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{what} have dimension {arr.shape[1]}, the index has dimension {dim}")
    with np.errstate(over="ignore"):  # overflow becomes inf, reported just below
        arr = np.ascontiguousarray(arr, dtype=np.float32)
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise ValueError(
            f"{what} contain NaN or infinite values (or overflow float32) in {bad.size} row(s), "
            f"first row {int(bad[0])}"
        )
    return arr


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def _is_many(value: Any) -> bool:
    """A filter value that means "any of" (list, set, tuple, array), as opposed to a scalar."""
    return isinstance(value, Collection) and not isinstance(value, str | bytes)


def _gpu_available() -> bool:
    """faiss-gpu is installed and sees at least one GPU (faiss-cpu reports 0 GPUs)."""
    get_num_gpus = getattr(faiss, "get_num_gpus", None)
    if get_num_gpus is None or not hasattr(faiss, "index_cpu_to_all_gpus"):
        return False
    try:
        return int(get_num_gpus()) > 0
    except Exception:  # noqa: BLE001 - a broken GPU runtime means "no GPU"
        return False


def _to_gpu(cpu_index: Any, kind: str, use_gpu: bool | None) -> Any | None:
    """A GPU copy of a flat or IVF index, or None to stay on the CPU (always a safe fallback)."""
    if use_gpu is False:
        return None
    if kind == "hnsw":
        if use_gpu:
            warnings.warn("faiss has no GPU HNSW; the HNSW index stays on the CPU", stacklevel=3)
        return None
    if not _gpu_available():
        if use_gpu:
            warnings.warn("use_gpu=True but faiss sees no GPU (faiss-cpu installed?); using CPU",
                          stacklevel=3)
        return None
    try:
        return faiss.index_cpu_to_all_gpus(cpu_index)
    except Exception as exc:  # noqa: BLE001 - any GPU failure falls back to the CPU
        warnings.warn(f"moving the index to the GPU failed ({exc}); using CPU", stacklevel=3)
        return None


def _check_ids(ids: Sequence[str], rows: int) -> list[str]:
    if isinstance(ids, str | bytes):
        raise TypeError("ids must be a sequence of strings, not a single string")
    ids = list(ids)
    bad = [i for i in ids if not isinstance(i, str)]
    if bad:
        raise TypeError(f"ids must be strings; got {len(bad)} non-string id(s), e.g. {bad[0]!r} "
                        f"({type(bad[0]).__name__})")
    ids = [str(i) for i in ids]  # plain str, also from numpy str_ elements
    if len(ids) != rows:
        raise ValueError(f"{len(ids)} ids for {rows} vectors")
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dupes = [i for i in ids if i in seen or seen.add(i)]
        raise ValueError(f"ids must be unique; {len(dupes)} duplicate(s), e.g. {dupes[0]!r}")
    return ids


def ivf_nlist(count: int) -> int:
    """Inverted lists for `count` vectors: 4 * sqrt(count), at least 39 training rows per list.

    Why 4 * sqrt(n): a query scans nprobe lists of ~n / nlist vectors after comparing with the
    nlist centroids, so the two costs balance near sqrt(n); a few times more lists keeps each
    scanned list short, which the HNSW quantizer makes affordable.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    return int(max(1, min(round(4 * np.sqrt(count)), count // 39, IVF_MAX_NLIST)))


def _self_recall(exact: np.ndarray, approx: np.ndarray, rows: np.ndarray, k: int) -> float:
    """Mean recall@k of `approx` against `exact` for self-queries, the query's own row left out."""
    hits = []
    for row, true, found in zip(rows, exact, approx):
        true_set = set(true[(true >= 0) & (true != row)][:k].tolist())
        if not true_set:
            continue
        found_set = set(found[(found >= 0) & (found != row)][:k].tolist())
        hits.append(len(true_set & found_set) / len(true_set))
    return float(np.mean(hits)) if hits else 1.0


def _nprobe_grid(nlist: int) -> list[int]:
    """1, 2, 3, 4, 6, 8, 12, 16, ... (powers of two and 1.5 times them), ending at nlist."""
    grid = {nlist}
    power = 1
    while power < nlist:
        grid.update({power, min(nlist, power * 3 // 2 or 1)})
        power *= 2
    return sorted(grid)


def _ivf_params(nprobe: int, selector: Any = None) -> Any:
    quantizer = faiss.SearchParametersHNSW(efSearch=max(IVF_QUANTIZER_EF, 2 * nprobe))
    if selector is None:
        return faiss.SearchParametersIVF(nprobe=nprobe, quantizer_params=quantizer)
    return faiss.SearchParametersIVF(nprobe=nprobe, quantizer_params=quantizer, sel=selector)


def _ivf_exact(ivf: Any, q: np.ndarray, k: int, selector: Any = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k from an IVF-Flat index: every inverted list scanned (they hold the vectors).

    Uses `search_preassigned` with all lists assigned to every query, in chunks that keep the
    assignment matrix (queries x nlist) near 4M entries.
    """
    nlist = int(ivf.nlist)
    n = q.shape[0]
    scores = np.empty((n, k), dtype=np.float32)
    positions = np.empty((n, k), dtype=np.int64)
    params = (faiss.SearchParametersIVF(nprobe=nlist) if selector is None
              else faiss.SearchParametersIVF(nprobe=nlist, sel=selector))
    chunk = max(1, 4_000_000 // nlist)
    for start in range(0, n, chunk):
        part = np.ascontiguousarray(q[start:start + chunk])
        m = part.shape[0]
        assign = np.ascontiguousarray(np.broadcast_to(np.arange(nlist, dtype=np.int64),
                                                      (m, nlist)))
        coarse = np.zeros((m, nlist), dtype=np.float32)
        d = np.empty((m, k), dtype=np.float32)
        i = np.empty((m, k), dtype=np.int64)
        ivf.search_preassigned_c(m, faiss.swig_ptr(part), k, faiss.swig_ptr(assign),
                                 faiss.swig_ptr(coarse), faiss.swig_ptr(d), faiss.swig_ptr(i),
                                 False, params)
        scores[start:start + m], positions[start:start + m] = d, i
    return scores, positions


def _build_ivf(x: np.ndarray, faiss_metric: int, seed: int, target_recall: float
               ) -> tuple[Any, dict[str, Any]]:
    """A trained, filled IVF-Flat index with HNSW quantizer and its tuned nprobe (see module)."""
    n, dim = x.shape
    nlist = ivf_nlist(n)
    quantizer = faiss.IndexHNSWFlat(dim, IVF_QUANTIZER_M, faiss_metric)
    ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss_metric)
    # k-means assigns with a flat index (faiss would otherwise rebuild the HNSW every
    # iteration: 10x slower training); the HNSW quantizer gets the final centroids.
    clustering = faiss.IndexFlat(dim, faiss_metric)
    ivf.clustering_index = clustering
    ivf.cp.seed = seed
    ivf.cp.min_points_per_centroid = 1  # tiny indexes: no faiss warning about few points
    rng = np.random.default_rng(seed)
    train_size = min(n, nlist * IVF_TRAIN_PER_LIST)
    sample = x if train_size == n else x[np.sort(rng.choice(n, train_size, replace=False))]
    ivf.train(sample)
    ivf.clustering_index = None  # not saved; `clustering` may be freed after this function
    ivf.add(x)
    ivf.make_direct_map()  # reconstruct() by position
    # nprobe: the smallest on the grid reaching target + margin on held self-queries
    rows = np.sort(rng.choice(n, min(n, IVF_RECALL_QUERIES), replace=False))
    k = min(IVF_RECALL_K + 1, n)  # +1: the query's own row is dropped
    _, exact = _ivf_exact(ivf, x[rows], k)
    nprobe, measured = nlist, 0.0
    for nprobe in _nprobe_grid(nlist):
        _, found = ivf.search(x[rows], k, params=_ivf_params(nprobe))
        measured = _self_recall(exact, found, rows, IVF_RECALL_K)
        if measured >= min(1.0, target_recall + IVF_TUNING_MARGIN):
            break
    ivf.nprobe = nprobe  # also the default saved in index.faiss and copied to a GPU clone
    faiss.downcast_index(ivf.quantizer).hnsw.efSearch = max(IVF_QUANTIZER_EF, 2 * nprobe)
    params = {"nlist": nlist, "nprobe": int(nprobe), "quantizer": f"HNSW{IVF_QUANTIZER_M}",
              "storage": "Flat", "train_size": int(train_size), "seed": int(seed),
              "recall_at_20": round(measured, 4), "recall_queries": int(len(rows)),
              "target_recall": float(target_recall)}
    return ivf, params


def _align_attributes(attributes: pd.DataFrame, ids: list[str]) -> pd.DataFrame:
    """One attribute row per id, in id order, indexed by id (from the index or an `id` column)."""
    if not isinstance(attributes, pd.DataFrame):
        raise TypeError(f"attributes must be a pandas DataFrame, got {type(attributes).__name__}")
    frame = attributes.set_index("id") if "id" in attributes.columns else attributes
    index = frame.index.astype(str) if len(frame.index) else frame.index
    frame = frame.set_axis(index, axis=0)
    if frame.index.has_duplicates:
        dupes = frame.index[frame.index.duplicated()].unique()
        raise ValueError(f"attributes have {len(dupes)} duplicated id(s), e.g. {dupes[0]!r}")
    missing = pd.Index(ids).difference(frame.index)
    if len(missing):
        raise ValueError(f"attributes lack {len(missing)} indexed id(s), e.g. {missing[0]!r}")
    frame = frame.reindex(pd.Index(ids, name="id"))
    return frame


class VectorIndex:
    """String ids -> vectors, searchable by top-k with attribute filters; build or load it."""

    def __init__(
        self,
        cpu_index: Any,
        ids: list[str],
        *,
        kind: str,
        metric: str,
        attributes: pd.DataFrame | None,
        exact_threshold: int,
        ef_search: int,
        use_gpu: bool | None,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        """Internal: use `VectorIndex.build` or `VectorIndex.load`."""
        self._cpu = cpu_index
        self._ids = tuple(ids)
        self._pos = {item: pos for pos, item in enumerate(self._ids)}
        self._kind = kind
        self._metric = metric
        self._attributes = attributes
        self._codes: dict[str, tuple[np.ndarray, list[Any], dict[Any, int]]] = {}
        self.exact_threshold = int(exact_threshold)
        # The exact scanner: the flat index itself, or the HNSW's flat storage (same positions);
        # IVF scans all of its own lists instead (see `_exact`).
        self._flat = (cpu_index if kind == "flat" else None if kind == "ivf"
                      else faiss.downcast_index(cpu_index.storage))
        self._params: dict[str, Any] = dict(params or {})
        if kind == "ivf":
            if int(cpu_index.direct_map.type) == 0:  # NoMap: a file written without one
                cpu_index.make_direct_map()
            self._params.setdefault("nlist", int(cpu_index.nlist))
            self._params.setdefault("nprobe", int(cpu_index.nprobe))
            self._nprobe = int(self._params["nprobe"])
        self._gpu = _to_gpu(cpu_index, kind, use_gpu)
        self.ef_search = ef_search

    # ------------------------------------------------------------------ construction

    @classmethod
    def build(
        cls,
        ids: Sequence[str],
        vectors: np.ndarray,
        metric: str = "ip",
        kind: str = "auto",
        attributes: pd.DataFrame | None = None,
        exact_threshold: int = DEFAULT_EXACT_THRESHOLD,
        use_gpu: bool | None = None,
        ef_search: int = DEFAULT_EF_SEARCH,
        ivf_min_items: int = IVF_MIN_ITEMS,
        target_recall: float = DEFAULT_TARGET_RECALL,
        seed: int = DEFAULT_SEED,
    ) -> VectorIndex:
        """Index `vectors` (rows aligned with `ids`); see the module docstring for the choices.

        `attributes` (one row per id, id as index or `id` column; extra rows are ignored) makes
        `filters` available in searches. `ivf_min_items` is where "auto" switches to IVF;
        `target_recall` and `seed` drive IVF's nprobe tuning and training sample. Raises
        ValueError on a bad shape, non-float dtype, NaN/inf, duplicate or missing ids, bad
        settings, TypeError on non-string ids.
        """
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        if kind not in (*KINDS, "auto"):
            raise ValueError(f"kind must be one of {(*KINDS, 'auto')}, got {kind!r}")
        if isinstance(exact_threshold, bool) or int(exact_threshold) < 0:
            raise ValueError(f"exact_threshold must be >= 0, got {exact_threshold!r}")
        if isinstance(ivf_min_items, bool) or int(ivf_min_items) < 1:
            raise ValueError(f"ivf_min_items must be >= 1, got {ivf_min_items!r}")
        if not 0.0 < float(target_recall) <= 1.0:
            raise ValueError(f"target_recall must be in (0, 1], got {target_recall!r}")
        x = _as_matrix(vectors, "vectors")
        if x.shape[0] == 0:
            raise ValueError("cannot build an index from 0 vectors")
        id_list = _check_ids(ids, x.shape[0])
        frame = None if attributes is None else _align_attributes(attributes, id_list)
        auto = kind == "auto"
        if auto:
            kind = "flat" if x.shape[0] < ivf_min_items else "ivf"
        dim = x.shape[1]
        faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
        params: dict[str, Any] = {}
        if kind == "ivf":
            index, params = _build_ivf(x, faiss_metric, int(seed), float(target_recall))
            message = None
            if params["recall_at_20"] < target_recall:
                message = (f"IVF reaches recall@20 {params['recall_at_20']:.3f} < "
                           f"{target_recall} even at nprobe=nlist={params['nlist']} (vectors "
                           "without cluster structure?)")
            elif auto and params["nprobe"] > IVF_MAX_PROBE_SHARE * params["nlist"]:
                # e.g. unnormalised ALS factors under inner product: the target needs most
                # lists, so a query scans most vectors plus the quantizer, slower than flat
                message = (f"IVF needs nprobe {params['nprobe']} of {params['nlist']} lists for "
                           f"recall@20 >= {target_recall}, no faster than exact search")
            if message is not None:
                if not auto:
                    warnings.warn(message, stacklevel=2)
                else:
                    warnings.warn(message + "; building the exact flat index", stacklevel=2)
                    kind, params = "flat", {"ivf_rejected": message}
        if kind == "flat":
            index = faiss.IndexFlatIP(dim) if metric == "ip" else faiss.IndexFlatL2(dim)
            index.add(x)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss_metric)
            index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            index.add(x)
        return cls(index, id_list, kind=kind, metric=metric, attributes=frame,
                   exact_threshold=exact_threshold, ef_search=ef_search, use_gpu=use_gpu,
                   params=params)

    # ------------------------------------------------------------------ properties

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, item: object) -> bool:
        return item in self._pos

    def __repr__(self) -> str:
        return (f"VectorIndex(kind={self._kind!r}, metric={self._metric!r}, dim={self.dim}, "
                f"count={len(self)}, device={self.device!r})")

    @property
    def ids(self) -> tuple[str, ...]:
        """Indexed ids in insertion order (position i holds vector row i)."""
        return self._ids

    @property
    def kind(self) -> str:
        """'flat', 'hnsw' or 'ivf' (resolved from 'auto' at build time)."""
        return self._kind

    @property
    def metric(self) -> str:
        """'ip' (scores: higher is better) or 'l2' (squared distances: lower is better)."""
        return self._metric

    @property
    def dim(self) -> int:
        return int(self._cpu.d)

    @property
    def device(self) -> str:
        """'gpu' when unfiltered searches run on faiss GPU, else 'cpu'."""
        return "gpu" if self._gpu is not None else "cpu"

    @property
    def attributes(self) -> pd.DataFrame | None:
        """A copy of the filterable attributes, indexed by id in index order (None if absent)."""
        return None if self._attributes is None else self._attributes.copy()

    @property
    def params(self) -> dict[str, Any]:
        """Kind-specific build parameters, e.g. IVF's nlist, nprobe, quantizer and the
        recall@20 against exact search measured at build time (empty for flat)."""
        params = dict(self._params)
        if self._kind == "hnsw":
            params.update({"M": HNSW_M, "ef_search": self._ef_search})
        return params

    @property
    def nprobe(self) -> int:
        """IVF lists scanned per query (tuned at build time); ValueError for other kinds."""
        if self._kind != "ivf":
            raise ValueError(f"nprobe applies to IVF indexes, this one is {self._kind!r}")
        return self._nprobe

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        if self._kind != "ivf":
            raise ValueError(f"nprobe applies to IVF indexes, this one is {self._kind!r}")
        nlist = int(self._cpu.nlist)
        if (isinstance(value, bool) or not isinstance(value, int | np.integer)
                or not 1 <= value <= nlist):
            raise ValueError(f"nprobe must be an integer in [1, {nlist}], got {value!r}")
        self._nprobe = int(value)
        self._params["nprobe"] = self._nprobe
        # measured for the tuned nprobe only
        self._params.pop("recall_at_20", None)
        self._cpu.nprobe = self._nprobe
        if self._gpu is not None:
            try:
                faiss.GpuParameterSpace().set_index_parameter(self._gpu, "nprobe", self._nprobe)
            except Exception:  # noqa: BLE001 - not a faiss GPU index (or no GPU build)
                self._gpu.nprobe = self._nprobe

    @property
    def ef_search(self) -> int:
        """HNSW candidate-list size per query: larger is slower with better recall."""
        return self._ef_search

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"ef_search must be a positive integer, got {value!r}")
        self._ef_search = int(value)
        if self._kind == "hnsw":
            self._cpu.hnsw.efSearch = self._ef_search  # also the default saved with the index

    # ------------------------------------------------------------------ lookups

    def _position(self, item: str) -> int:
        try:
            return self._pos[item]
        except (KeyError, TypeError):
            raise KeyError(f"unknown id {item!r}") from None

    def reconstruct(self, item: str) -> np.ndarray:
        """The stored float32 vector of `item`; KeyError naming the id when it is not indexed."""
        return np.asarray(self._cpu.reconstruct(self._position(item)), dtype=np.float32).copy()

    # ------------------------------------------------------------------ search

    def search(
        self,
        queries: np.ndarray,
        k: int = 10,
        filters: Mapping[str, Any] | None = None,
        exclude: Collection[str] | None = None,
    ) -> list[Result]:
        """Top-k (id, score) per query row, best first; fewer than k only if fewer are allowed.

        `filters` ANDs attribute conditions: a scalar value means equality, a list/set/tuple
        means any of; for `category` (see PATH_COLUMNS) a value also matches every path below
        it, i.e. the category equals the value or starts with value + " > "; missing values
        never match. `exclude` drops ids (unknown ids are ignored; a bare string is one id).
        Scores are inner products (metric "ip") or squared L2 distances (metric "l2").
        """
        q = _as_matrix(queries, "queries", self.dim)
        k = _check_k(k)
        if q.shape[0] == 0:
            return []
        allowed = self._allowed(filters, exclude)
        if allowed is None:
            scores, positions = self._search_all(q, min(k, len(self)))
        else:
            n_allowed = int(allowed.sum())
            if n_allowed == 0:
                return [[] for _ in range(q.shape[0])]
            scores, positions = self._search_allowed(q, min(k, n_allowed), allowed, n_allowed)
        return self._results(scores, positions)

    def search_positions(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Unfiltered top-k as arrays: (scores, row positions), -1 where fewer exist.

        Positions are rows of the `vectors` the index was built from, for callers that keep
        their own integer ids (a recommender's item rows) and would only parse strings back.
        """
        q = _as_matrix(queries, "queries", self.dim)
        k = _check_k(k)
        return self._search_all(q, min(k, len(self)))

    def search_one(
        self,
        vector: np.ndarray,
        k: int = 10,
        filters: Mapping[str, Any] | None = None,
        exclude: Collection[str] | None = None,
    ) -> Result:
        """`search` for a single 1-D query vector."""
        v = np.asarray(vector)
        if v.ndim != 1:
            raise ValueError(f"search_one takes a 1-D vector, got shape {v.shape}; use search")
        return self.search(v.reshape(1, -1), k, filters=filters, exclude=exclude)[0]

    def similar(
        self,
        item: str,
        k: int = 10,
        filters: Mapping[str, Any] | None = None,
        exclude: Collection[str] | None = None,
    ) -> Result:
        """Nearest neighbours of a stored item, never including the item itself."""
        vector = self.reconstruct(item)
        skip = {item} if exclude is None else {item, *([exclude] if isinstance(exclude, str)
                                                      else exclude)}
        return self.search_one(vector, k, filters=filters, exclude=skip)

    # ------------------------------------------------------------------ internals

    def _factorized(self, key: str) -> tuple[np.ndarray, list[Any], dict[Any, int]]:
        """Row codes, distinct values and value -> code of an attribute column, built once.

        Filters then look values up among the few distinct values (category paths, colours)
        and map them back to rows with one array gather: no per-row work in Python or pandas.
        """
        cached = self._codes.get(key)
        if cached is None:
            try:
                codes, uniques = pd.factorize(self._attributes[key], use_na_sentinel=True)
            except TypeError as exc:  # unhashable cells such as lists
                raise ValueError(f"attribute {key!r} cannot be filtered on ({exc})") from exc
            values = pd.Index(uniques).tolist()
            cached = (np.asarray(codes), values, {v: c for c, v in enumerate(values)})
            self._codes[key] = cached
        return cached

    def _filter_mask(self, filters: Mapping[str, Any]) -> np.ndarray:
        if self._attributes is None:
            raise ValueError("filters need attributes: build the index with attributes=...")
        mask = np.ones(len(self), dtype=bool)
        for key, value in filters.items():
            if key not in self._attributes.columns:
                known = ", ".join(map(str, self._attributes.columns))
                raise ValueError(f"unknown filter attribute {key!r}; attributes are: {known}")
            codes, uniques, lookup = self._factorized(key)
            values = list(value) if _is_many(value) else [value]
            try:
                matched = [lookup[v] for v in values if v in lookup]
            except TypeError as exc:
                raise ValueError(f"filter value for {key!r} must be hashable ({exc})") from exc
            prefixes = tuple(v + PATH_SEPARATOR for v in values if isinstance(v, str))
            if key in PATH_COLUMNS and prefixes:
                matched += [c for c, u in enumerate(uniques)
                            if isinstance(u, str) and u.startswith(prefixes)]
            # one slot per distinct value plus a trailing False for missing values (code -1)
            table = np.zeros(len(uniques) + 1, dtype=bool)
            table[matched] = True
            mask &= table[codes]
        return mask

    def _allowed(
        self, filters: Mapping[str, Any] | None, exclude: Collection[str] | None
    ) -> np.ndarray | None:
        """Boolean mask of searchable positions, or None when everything is allowed."""
        mask = self._filter_mask(filters) if filters else None
        if exclude:
            items = [exclude] if isinstance(exclude, str) else exclude
            positions = [self._pos[i] for i in items if i in self._pos]
            if positions:
                if mask is None:
                    mask = np.ones(len(self), dtype=bool)
                mask[positions] = False
        return mask

    def _selector(self, allowed: np.ndarray, n_allowed: int) -> tuple[Any, tuple[Any, ...]]:
        """An IDSelector for the mask, listing whichever side (kept/dropped) is smaller.

        Returns the selector and every faiss object it points to: SWIG does not keep the
        inner selector of IDSelectorNot alive, so the caller must hold them during the search.
        """
        if len(self) - n_allowed < n_allowed:
            inner = faiss.IDSelectorBatch(np.flatnonzero(~allowed).astype(np.int64))
            selector = faiss.IDSelectorNot(inner)
            return selector, (inner, selector)
        selector = faiss.IDSelectorBatch(np.flatnonzero(allowed).astype(np.int64))
        return selector, (selector,)

    def _search_all(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self._gpu is not None:
            try:
                return self._gpu.search(q, k)
            except Exception as exc:  # noqa: BLE001 - a failing GPU falls back to the CPU
                warnings.warn(f"GPU search failed ({exc}); using CPU from now on", stacklevel=3)
                self._gpu = None
        if self._kind == "flat":
            return self._cpu.search(q, k)
        if self._kind == "ivf":
            scores, positions = self._cpu.search(q, k, params=_ivf_params(self._nprobe))
            return self._complete(q, k, scores, positions, None, len(self))
        params = faiss.SearchParametersHNSW(efSearch=max(self._ef_search, k))
        scores, positions = self._cpu.search(q, k, params=params)
        return self._complete(q, k, scores, positions, None, len(self))

    def _search_allowed(
        self, q: np.ndarray, k: int, allowed: np.ndarray, n_allowed: int
    ) -> tuple[np.ndarray, np.ndarray]:
        if self._kind == "ivf" and n_allowed > self.exact_threshold:
            selector, keep = self._selector(allowed, n_allowed)
            scores, positions = self._cpu.search(q, k, params=_ivf_params(self._nprobe, selector))
            del keep
            return self._complete(q, k, scores, positions, allowed, n_allowed)
        if self._kind == "hnsw" and n_allowed > self.exact_threshold:
            selector, keep = self._selector(allowed, n_allowed)
            params = faiss.SearchParametersHNSW(sel=selector, efSearch=max(self._ef_search, k))
            scores, positions = self._cpu.search(q, k, params=params)
            del keep
            return self._complete(q, k, scores, positions, allowed, n_allowed)
        return self._exact(q, k, allowed, n_allowed)

    def _exact(
        self, q: np.ndarray, k: int, allowed: np.ndarray | None, n_allowed: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact search over the flat vectors (CPU), restricted to `allowed` when given."""
        if self._kind == "ivf":
            if allowed is None:
                return _ivf_exact(self._cpu, q, k)
            selector, keep = self._selector(allowed, n_allowed)
            result = _ivf_exact(self._cpu, q, k, selector)
            del keep
            return result
        if allowed is None:
            return self._flat.search(q, k)
        selector, keep = self._selector(allowed, n_allowed)
        result = self._flat.search(q, k, params=faiss.SearchParameters(sel=selector))
        del keep
        return result

    def _complete(
        self,
        q: np.ndarray,
        k: int,
        scores: np.ndarray,
        positions: np.ndarray,
        allowed: np.ndarray | None,
        n_allowed: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Redoes exactly the HNSW/IVF rows that came back with fewer than k results."""
        short = (positions[:, : min(k, n_allowed)] < 0).any(axis=1)
        if short.any():
            scores[short], positions[short] = self._exact(q[short], k, allowed, n_allowed)
        return scores, positions

    def _results(self, scores: np.ndarray, positions: np.ndarray) -> list[Result]:
        ids = self._ids
        out = []
        for row_scores, row_positions in zip(scores.tolist(), positions.tolist()):
            out.append([(ids[p], s) for p, s in zip(row_positions, row_scores) if p >= 0])
        return out

    # ------------------------------------------------------------------ persistence

    def save(self, directory: Path | str) -> None:
        """Write the index to `directory` atomically: readers see the old or the new one.

        Files go into a temporary sibling directory which then replaces `directory` by
        os.replace (an existing saved index is first renamed aside, then deleted). Refuses to
        replace a non-empty directory that is not a saved index.
        """
        directory = Path(directory)
        parent = directory.parent
        parent.mkdir(parents=True, exist_ok=True)
        if directory.exists() and not (directory.is_dir() and (
                (directory / META_FILE).is_file() or not any(directory.iterdir()))):
            raise FileExistsError(f"{directory} exists and is not a saved VectorIndex; "
                                  "refusing to replace it")
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=parent))
        try:
            tmp.chmod(0o755)
            faiss.write_index(self._cpu, str(tmp / INDEX_FILE))
            (tmp / IDS_FILE).write_text(json.dumps(list(self._ids)), encoding="utf-8")
            if self._attributes is not None:
                self._attributes.to_parquet(tmp / ATTRIBUTES_FILE)
            meta = {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "kind": self._kind,
                "metric": self._metric,
                "dim": self.dim,
                "count": len(self),
                "ef_search": self._ef_search,
                "exact_threshold": self.exact_threshold,
                "has_attributes": self._attributes is not None,
                "faiss_version": faiss.__version__,
                "params": self.params,
            }
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
            if directory.exists():
                old = parent / f".{directory.name}.old-{uuid.uuid4().hex}"
                os.replace(directory, old)
                os.replace(tmp, directory)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @classmethod
    def load(cls, directory: Path | str, use_gpu: bool | None = None) -> VectorIndex:
        """Read an index written by `save`.

        FileNotFoundError when `directory` does not exist; CorruptIndexError (a ValueError) when
        its files are missing, unreadable or disagree with each other.
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"no saved VectorIndex at {directory}")

        def corrupt(reason: str) -> CorruptIndexError:
            return CorruptIndexError(f"{directory} is not a readable VectorIndex: {reason}")

        try:
            meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise corrupt(f"{META_FILE} is missing") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise corrupt(f"{META_FILE} is unreadable ({exc})") from exc
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise corrupt(f"{META_FILE} does not describe a {FORMAT}")
        if meta.get("version") != FORMAT_VERSION:
            raise corrupt(f"format version {meta.get('version')!r}, this code reads "
                          f"{FORMAT_VERSION}")
        required = ("kind", "metric", "dim", "count", "ef_search", "exact_threshold",
                    "has_attributes")
        missing = [key for key in required if key not in meta]
        if missing:
            raise corrupt(f"{META_FILE} lacks {', '.join(missing)}")
        if meta["kind"] not in KINDS or meta["metric"] not in METRICS:
            raise corrupt(f"unknown kind/metric {meta['kind']!r}/{meta['metric']!r}")
        index_path = directory / INDEX_FILE
        if not index_path.is_file():
            raise corrupt(f"{INDEX_FILE} is missing")
        try:
            index = faiss.read_index(str(index_path))
        except Exception as exc:  # noqa: BLE001 - faiss raises RuntimeError on bad files
            raise corrupt(f"faiss cannot read {INDEX_FILE} ({exc})") from exc
        try:
            ids = json.loads((directory / IDS_FILE).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise corrupt(f"{IDS_FILE} is missing or unreadable ({exc})") from exc
        expected_type = {"flat": faiss.IndexFlat, "hnsw": faiss.IndexHNSWFlat,
                         "ivf": faiss.IndexIVFFlat}[meta["kind"]]
        expected_metric = (faiss.METRIC_INNER_PRODUCT if meta["metric"] == "ip"
                           else faiss.METRIC_L2)
        if not isinstance(index, expected_type) or index.metric_type != expected_metric:
            raise corrupt(f"{INDEX_FILE} holds a {type(index).__name__} (metric "
                          f"{index.metric_type}), meta says {meta['kind']}/{meta['metric']}")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise corrupt(f"{IDS_FILE} is not a list of strings")
        if len(set(ids)) != len(ids):
            raise corrupt(f"{IDS_FILE} holds duplicate ids")
        if not (index.ntotal == len(ids) == meta["count"]) or index.d != meta["dim"]:
            raise corrupt(f"sizes disagree: {index.ntotal} vectors of dim {index.d}, {len(ids)} "
                          f"ids, meta says {meta['count']} of dim {meta['dim']}")
        attributes = None
        if meta["has_attributes"]:
            try:
                attributes = pd.read_parquet(directory / ATTRIBUTES_FILE)
                attributes = _align_attributes(attributes, ids)
            except Exception as exc:  # noqa: BLE001 - any parquet/alignment failure
                raise corrupt(f"{ATTRIBUTES_FILE} is missing or unusable ({exc})") from exc
        params = meta.get("params", {})  # absent in indexes saved before IVF existed
        if not isinstance(params, dict):
            raise corrupt(f"{META_FILE} params is not an object")
        if meta["kind"] == "ivf" and (params.get("nlist", index.nlist) != index.nlist
                                      or params.get("nprobe", index.nprobe) != index.nprobe):
            raise corrupt(f"IVF params {params} disagree with {INDEX_FILE} (nlist "
                          f"{index.nlist}, nprobe {index.nprobe})")
        if meta["kind"] == "hnsw":
            params = {}  # derived from ef_search and HNSW_M
        try:
            return cls(index, ids, kind=meta["kind"], metric=meta["metric"],
                       attributes=attributes, exact_threshold=meta["exact_threshold"],
                       ef_search=meta["ef_search"], use_gpu=use_gpu, params=params)
        except (TypeError, ValueError) as exc:
            raise corrupt(str(exc)) from exc
