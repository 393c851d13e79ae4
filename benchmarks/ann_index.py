"""Exact vs approximate vector search by catalog size: where `VectorIndex` "auto" switches to IVF.

For seeded Gaussian-mixture unit vectors (clustered, like real embeddings; synthetic, not a
measurement on real embeddings) of the project's dims (64: the GNN's item vectors, 384: the
MiniLM/E5-small text vectors) at several catalog sizes, it builds a flat, an IVF (HNSW32
coarse quantizer, nprobe tuned at build time, see `recommender/index.py`) and, where its build
fits the time budget, an HNSW `VectorIndex`, and measures per index:

* build seconds (the IVF's include k-means training and the nprobe tuning),
* memory: the size of the serialized faiss index (vectors, lists, graph, direct map),
* p50 / p99 ms of single-query `search_one(k=20)` calls, with one faiss thread (on a shared
  2-core machine OpenMP's fan-out for one query costs more than it saves, see index.md),
* ms per query of a batch `search_positions(k=20)` over all queries, default faiss threads,
* recall@20 against the exact flat result on fresh queries drawn from the same mixture (not
  the indexed rows), and the recall the IVF measured on its own self-queries at build time.

The threshold is the smallest measured size at which, for every dim, IVF's single-query p50 is
at most half of flat's and its recall@20 on the fresh queries is >= 0.95.
Writes benchmarks/results/ann_index.json and ann_index.md.

    nice -n 10 python benchmarks/ann_index.py [--sizes 10000 30000 ...] [--dims 64 384]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import describe_machine  # noqa: E402
from recommender.index import VectorIndex  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
K = 20
CLUSTERS = 200
LATENT = 24  # intrinsic dimension of the mixture
SPREAD = 0.5  # within-cluster std relative to the centres' unit std
NOISE = 0.1  # share of each vector's variance that is isotropic noise
HNSW_MAX = {64: 100_000, 384: 30_000}  # HNSW builds above these take minutes here
MAX_ITEMS = {384: 300_000}  # 1M x 384: k-means and the exact ground truth alone take > 10 min
SPEEDUP = 2.0  # "clearly faster": IVF p50 at most half of flat's


def mixture(rows: int, dim: int, seed: int) -> np.ndarray:
    """Unit vectors from a Gaussian mixture in a `LATENT`-d subspace plus isotropic noise.

    `CLUSTERS` centres (shared by every call of a dim) with unit-variance coordinates, points
    `SPREAD` around them, mapped into `dim` dims by a fixed random basis; isotropic noise
    carries `NOISE` of the variance. Real embeddings are like this: clustered, with an
    intrinsic dimension far below their width, so near neighbours vary continuously.
    """
    fixed = np.random.default_rng(dim)
    centres = fixed.standard_normal((CLUSTERS, LATENT)).astype(np.float32)
    basis = fixed.standard_normal((LATENT, dim)).astype(np.float32) / np.sqrt(LATENT)
    rng = np.random.default_rng(seed)
    latent = centres[rng.integers(0, CLUSTERS, rows)]
    latent += SPREAD * rng.standard_normal((rows, LATENT)).astype(np.float32)
    x = latent @ basis
    signal = float(np.sqrt(1 + SPREAD**2))  # per-dimension std of the mapped points
    x += signal * np.sqrt(NOISE / (1 - NOISE)) * rng.standard_normal((rows, dim)).astype(
        np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def index_bytes(index: VectorIndex) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "index.faiss"
        faiss.write_index(index._cpu, str(path))
        return path.stat().st_size


def single_ms(index: VectorIndex, queries: np.ndarray) -> tuple[float, float]:
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        for q in queries[:5]:  # warm-up
            index.search_one(q, K)
        times = []
        for q in queries:
            start = time.perf_counter()
            index.search_one(q, K)
            times.append((time.perf_counter() - start) * 1e3)
    finally:
        faiss.omp_set_num_threads(threads)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def batch(index: VectorIndex, queries: np.ndarray, repeats: int = 3
          ) -> tuple[float, np.ndarray]:
    times, found = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        _, found = index.search_positions(queries, K)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3 / len(queries), found


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth)]))


def run(sizes: list[int], dims: list[int]) -> list[dict]:
    rows = []
    for dim in dims:
        for size in sizes:
            if size > MAX_ITEMS.get(dim, size):
                continue
            x = mixture(size, dim, seed=size)
            n_single = 200 if size <= 100_000 else 100 if size <= 300_000 else 50
            n_batch = 1000 if size <= 100_000 else 300
            repeats = 3 if size <= 100_000 else 1
            queries = mixture(n_batch, dim, seed=size + 1)
            ids = [str(i) for i in range(size)]
            truth = None
            kinds = ["flat", "ivf"] + (["hnsw"] if size <= HNSW_MAX.get(dim, 0) else [])
            for kind in kinds:
                start = time.perf_counter()
                index = VectorIndex.build(ids, x, kind=kind, use_gpu=False)
                build_s = time.perf_counter() - start
                per_query, found = batch(index, queries, repeats)
                if kind == "flat":
                    truth = found
                p50, p99 = single_ms(index, queries[:n_single])
                row = {"dim": dim, "items": size, "kind": kind, "build_s": round(build_s, 2),
                       "memory_mb": round(index_bytes(index) / 2**20, 1),
                       "single_p50_ms": round(p50, 3), "single_p99_ms": round(p99, 3),
                       "single_queries": n_single,
                       "batch_ms_per_query": round(per_query, 4), "batch_queries": n_batch,
                       "recall_at_20": round(recall(found, truth), 4),
                       "params": index.params}
                rows.append(row)
                print(json.dumps(row), flush=True)
                del index
    return rows


def threshold(rows: list[dict], sizes: list[int], dims: list[int]) -> int | None:
    """Smallest size where, for every dim, IVF p50 <= flat p50 / SPEEDUP at recall >= 0.95."""
    by = {(r["dim"], r["items"], r["kind"]): r for r in rows}
    for size in sorted(sizes):
        measured = [dim for dim in dims if (dim, size, "flat") in by]
        if measured and all((dim, size, "ivf") in by and (dim, size, "flat") in by
               and by[dim, size, "ivf"]["recall_at_20"] >= 0.95
               and by[dim, size, "ivf"]["single_p50_ms"]
               <= by[dim, size, "flat"]["single_p50_ms"] / SPEEDUP for dim in measured):
            return size
    return None


def markdown(result: dict) -> str:
    lines = [
        "# Exact vs IVF vs HNSW by catalog size (`benchmarks/ann_index.py`)",
        "",
        f"Machine: {result['machine']}; faiss {result['faiss']}. "
        f"Load average at the end: {result['load_end']}. Run time {result['run_s']:.0f} s "
        "(`nice -n 10`, shared machine: latencies are noisy).",
        "",
        f"Data: {CLUSTERS}-component Gaussian mixture in a {LATENT}-d subspace (within-cluster "
        f"std {SPREAD} of the centres' std), mapped to the dim by a fixed random basis, "
        f"{NOISE:.0%} of the variance isotropic noise, normalised, inner product (synthetic, "
        "seeded; not real embeddings). Queries: fresh draws from the same mixture. k=20. "
        "Single queries: "
        "`search_one` with 1 faiss thread; batch: one `search_positions` call over all "
        "queries, default threads, median of 3 (1 above 100k items). "
        "Memory: serialized faiss index. "
        "IVF: nlist = 4 sqrt(n), HNSW32 quantizer, nprobe tuned at build time to recall@20 "
        ">= 0.97 on 200 self-queries (own row left out); HNSW: M=32, efSearch 128, "
        "built only up to " + ", ".join(f"{v:,} items at dim {k}" for k, v in HNSW_MAX.items())
        + "; dim 384 only up to " + ", ".join(f"{v:,}" for v in MAX_ITEMS.values())
        + " items (1M x 384 takes over 10 minutes here).",
        f"Command: `{result['command']}`.",
        "",
        "| dim | items | index | build s | memory MB | single p50 ms | single p99 ms "
        "| batch ms/query | recall@20 (fresh queries) | IVF nlist / nprobe / build-time "
        "self recall |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in result["rows"]:
        p = r["params"]
        ivf = (f"{p['nlist']} / {p['nprobe']} / {p.get('recall_at_20', float('nan')):.3f}"
               if r["kind"] == "ivf" else "")
        lines.append(
            f"| {r['dim']} | {r['items']:,} | {r['kind']} | {r['build_s']:.2f} | "
            f"{r['memory_mb']:.1f} | {r['single_p50_ms']:.3f} | {r['single_p99_ms']:.3f} | "
            f"{r['batch_ms_per_query']:.4f} | {r['recall_at_20']:.4f} | {ivf} |")
    t = result["threshold"]
    lines += ["", "Threshold rule: the smallest measured size at which, for every dim, IVF's "
              f"single-query p50 is at most 1/{SPEEDUP:g} of flat's with recall@20 >= 0.95: "
              + (f"**{t:,} items**." if t else "**none of the measured sizes**."), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+",
                        default=[10_000, 30_000, 100_000, 300_000, 1_000_000])
    parser.add_argument("--dims", type=int, nargs="+", default=[64, 384])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    machine = describe_machine(f"faiss default threads {faiss.omp_get_max_threads()}")
    start = time.perf_counter()
    rows = run(args.sizes, args.dims)
    result = {"machine": machine, "faiss": faiss.__version__,
              "command": " ".join(["nice -n 10 python benchmarks/ann_index.py", *sys.argv[1:]]),
              "sizes": args.sizes, "dims": args.dims, "k": K,
              "threshold": threshold(rows, args.sizes, args.dims),
              "load_end": [round(v, 2) for v in os.getloadavg()],
              "run_s": round(time.perf_counter() - start, 1), "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ann_index.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "ann_index.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
