"""Vector index benchmark: flat vs HNSW build time, single-query latency and HNSW recall@10.

For each catalog size (default 10k and 44k items of 384-d unit vectors, the size of the fashion
catalog and of a MiniLM/E5-small embedding) it builds a flat and an HNSW `VectorIndex`, then
times single-query `search_one` calls (p50/p99 ms/query, after a warm-up): unfiltered, and with
a category filter that keeps 1% of the items. Recall@10 of HNSW against the exact flat result is
measured for several efSearch values. Latency is measured with faiss's default OpenMP thread
count and with one thread (on few cores the per-query thread fan-out of a flat scan costs more
than it saves). Random vectors are the hard case for HNSW: real embeddings have much lower
intrinsic dimension, so recall on them is higher at the same efSearch.
Writes benchmarks/results/index.json and index.md.

    python benchmarks/index.py [--sizes 10000 44000] [--dim 384] [--queries 500]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recommender.index import VectorIndex  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
K = 10
EF_VALUES = (64, 128, 256, 512)


def unit(rows: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def low_rank(rows: int, dim: int, seed: int, latent: int = 32) -> np.ndarray:
    """Unit vectors near a random 32-d subspace, 20% of the variance isotropic noise.

    A stand-in for real embeddings, whose intrinsic dimension is far below their width
    (synthetic: not a measurement on real embeddings).
    """
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(0).standard_normal((latent, dim)).astype(np.float32)
    x = rng.standard_normal((rows, latent)).astype(np.float32) @ basis
    x += 0.5 * np.sqrt(latent) * rng.standard_normal((rows, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "?")
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    return {"cpu": model, "cores": os.cpu_count(), "ram_gib": round(mem_kb / 2**20, 1),
            "system": f"{platform.system()} {platform.machine()}",
            "python": platform.python_version(), "faiss": faiss.__version__,
            "numpy": np.__version__, "omp_threads_default": faiss.omp_get_max_threads()}


def latency(index: VectorIndex, queries: np.ndarray, filters: dict | None) -> dict:
    """p50/p99/mean ms per single-query call, after 20 warm-up calls."""
    for q in queries[:20]:
        index.search_one(q, K, filters=filters)
    times = []
    for q in queries:
        started = time.perf_counter()
        index.search_one(q, K, filters=filters)
        times.append((time.perf_counter() - started) * 1000)
    t = np.array(times)
    return {"p50_ms": float(np.percentile(t, 50)), "p99_ms": float(np.percentile(t, 99)),
            "mean_ms": float(t.mean())}


def recall_at_k(approx: list, exact: list) -> float:
    return float(np.mean([len({i for i, _ in a} & {i for i, _ in e}) / K
                          for a, e in zip(approx, exact)]))


def run_size(n: int, dim: int, n_queries: int, thread_counts: list[int]) -> dict:
    x = unit(n, dim, seed=n)
    queries = unit(n_queries, dim, seed=n + 1)
    ids = [f"p{i}" for i in range(n)]
    attributes = pd.DataFrame({"id": ids, "category": np.where(
        np.arange(n) % 100 == 0, "Apparel > Topwear > Shirts", "Home > Decor")})
    one_percent = {"category": "Apparel > Topwear"}
    out: dict = {"n": n, "dim": dim, "queries": n_queries, "kinds": {}}
    indexes = {}
    for kind in ("flat", "hnsw"):
        started = time.perf_counter()
        indexes[kind] = VectorIndex.build(ids, x, kind=kind, attributes=attributes,
                                          use_gpu=False)
        out["kinds"][kind] = {"build_s": time.perf_counter() - started, "latency": {}}
        print(f"n={n} {kind}: built in {out['kinds'][kind]['build_s']:.2f} s", flush=True)
    default_threads = faiss.omp_get_max_threads()
    try:
        for threads in thread_counts:
            faiss.omp_set_num_threads(threads)
            for kind, index in indexes.items():
                row = {"unfiltered": latency(index, queries, None),
                       "filter_1pct": latency(index, queries, one_percent)}
                out["kinds"][kind]["latency"][str(threads)] = row
                print(f"n={n} {kind} threads={threads}: p50 {row['unfiltered']['p50_ms']:.3f} "
                      f"p99 {row['unfiltered']['p99_ms']:.3f} ms; 1% filter p50 "
                      f"{row['filter_1pct']['p50_ms']:.3f} ms", flush=True)
    finally:
        faiss.omp_set_num_threads(default_threads)
    exact = indexes["flat"].search(queries, K)
    hnsw = indexes["hnsw"]
    out["recall_at_10"] = {}
    for ef in EF_VALUES:
        hnsw.ef_search = ef
        out["recall_at_10"][str(ef)] = recall_at_k(hnsw.search(queries, K), exact)
    hnsw.ef_search = 128
    out["recall_at_10_filter_1pct"] = recall_at_k(
        hnsw.search(queries, K, filters=one_percent),
        indexes["flat"].search(queries, K, filters=one_percent))
    print(f"n={n} recall@10 by efSearch: {out['recall_at_10']}", flush=True)
    del indexes, hnsw
    x, queries = low_rank(n, dim, seed=n + 2), low_rank(n_queries, dim, seed=n + 3)
    flat = VectorIndex.build(ids, x, kind="flat", use_gpu=False)
    started = time.perf_counter()
    hnsw = VectorIndex.build(ids, x, kind="hnsw")
    out["low_rank_hnsw_build_s"] = time.perf_counter() - started
    exact = flat.search(queries, K)
    out["recall_at_10_low_rank"] = {}
    for ef in EF_VALUES:
        hnsw.ef_search = ef
        out["recall_at_10_low_rank"][str(ef)] = recall_at_k(hnsw.search(queries, K), exact)
    print(f"n={n} low-rank recall@10 by efSearch: {out['recall_at_10_low_rank']}", flush=True)
    return out


def markdown(result: dict) -> str:
    m = result["machine"]
    threads = result["thread_counts"]
    lines = [
        "# Vector index benchmark: flat vs HNSW",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, {m['system']}; "
        f"faiss {m['faiss']} (CPU), default OpenMP threads {m['omp_threads_default']}. "
        f"Load average at start/end: {result['load_start']} / {result['load_end']} "
        "(shared machine: latencies are noisy).",
        f"Command: `{result['command']}`. Data: unit-normalised Gaussian random vectors, "
        f"inner product, k={K}, {result['sizes'][0]['queries']} single-query `search_one` "
        "calls per row (separate random unit queries). HNSW: M=32, efConstruction=80, "
        "efSearch=128.",
        "",
        "| items | dim | index | build s | threads | p50 ms | p99 ms | 1% filter p50 ms "
        "| 1% filter p99 ms |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for size in result["sizes"]:
        for kind, row in size["kinds"].items():
            for t in threads:
                lat = row["latency"][str(t)]
                lines.append(
                    f"| {size['n']:,} | {size['dim']} | {kind} | {row['build_s']:.2f} | {t} "
                    f"| {lat['unfiltered']['p50_ms']:.3f} | {lat['unfiltered']['p99_ms']:.3f} "
                    f"| {lat['filter_1pct']['p50_ms']:.3f} | {lat['filter_1pct']['p99_ms']:.3f} |")
    lines += ["", "HNSW recall@10 against the exact flat result:", "",
              "| items | " + " | ".join(f"efSearch {ef}" for ef in EF_VALUES)
              + " | 1% filter (efSearch 128) |",
              "|---:|" + "---:|" * (len(EF_VALUES) + 1)]
    for size in result["sizes"]:
        lines.append(f"| {size['n']:,} | " + " | ".join(
            f"{size['recall_at_10'][str(ef)]:.3f}" for ef in EF_VALUES)
            + f" | {size['recall_at_10_filter_1pct']:.3f} |")
    lines += ["", "HNSW recall@10 on synthetic low-rank data (unit vectors near a random 32-d "
              "subspace of the 384-d space, 20% of the variance isotropic noise; a rough "
              "stand-in for real embeddings, not a measurement on them):", "",
              "| items | HNSW build s | " + " | ".join(f"efSearch {ef}" for ef in EF_VALUES)
              + " |", "|---:|---:|" + "---:|" * len(EF_VALUES)]
    for size in result["sizes"]:
        lines.append(f"| {size['n']:,} | {size['low_rank_hnsw_build_s']:.2f} | " + " | ".join(
            f"{size['recall_at_10_low_rank'][str(ef)]:.3f}" for ef in EF_VALUES) + " |")
    lines += [
        "",
        "The 1% filter keeps fewer items than `exact_threshold` (20,000), so HNSW answers it by "
        "an exact scan of its flat storage with an IDSelectorBatch (recall 1.0 by design); "
        "flat always scans exactly with the selector, which skips the distance computation "
        "for filtered-out items. Random 384-d vectors are a worst case for HNSW recall (all "
        "distances nearly equal); the low-rank table shows how much structure helps, but "
        "recall on the real catalog embeddings has to be measured on them. A single-query "
        "flat scan with faiss's default OpenMP threads was much slower than with one thread "
        "on this loaded 2-core machine (threads wait on each other when cores are busy); "
        "serving processes on small machines may want `faiss.omp_set_num_threads(1)`.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 44_000])
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--threads", type=int, nargs="+", default=None,
                        help="OpenMP thread counts to time (default: faiss default and 1)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    thread_counts = args.threads or sorted({faiss.omp_get_max_threads(), 1}, reverse=True)
    result = {"machine": machine(), "command": "python benchmarks/index.py "
              + " ".join(sys.argv[1:]), "thread_counts": thread_counts,
              "load_start": [round(v, 2) for v in os.getloadavg()], "sizes": []}
    result["command"] = result["command"].strip()
    for n in args.sizes:
        result["sizes"].append(run_size(n, args.dim, args.queries, thread_counts))
    result["load_end"] = [round(v, 2) for v in os.getloadavg()]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "index.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "index.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
