"""Ingest benchmark: Complete Journey into the embedded store and into a real Neo4j 5.26.

Each store is measured in its own child process (so peak memory is that store's alone):
nodes are loaded first as one batch, then relationships as a second batch, each timed
separately. Reports rows/s, peak resident memory (Python process; plus the Neo4j JVM for Neo4j,
sampled) and on-disk size. Writes benchmarks/results/ingest.json and ingest.md.

    python benchmarks/ingest.py [--stores embedded neo4j] [--batch-rows 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _split(batch):  # noqa: ANN001, ANN202 - GraphBatch -> (nodes-only, rels-only)
    from kg.schema import GraphBatch

    nodes, rels = GraphBatch(), GraphBatch()
    for label in batch.labels:
        nodes.add_nodes(label, batch.node_frame(label))
    for rel in batch.rel_types:
        rels.add_rels(rel, batch.rel_frame(rel))
    return nodes, rels


class PeakRss:
    """Samples a process's resident memory every 0.2 s and keeps the maximum."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.proc, self.peak, self._stop = psutil.Process(pid), 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except Exception:  # noqa: BLE001 - the process may have gone
                return
            time.sleep(0.2)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def run_one(store_kind: str, batch_rows: int) -> dict:
    """Load Complete Journey into one fresh store; returns the measurements."""
    from kg.importers import get_importer

    started = time.perf_counter()
    result = get_importer("completejourney")(None, False)
    nodes, rels = _split(result.batch)
    n_nodes, n_rels = nodes.row_count(), rels.row_count()
    prepare_s = time.perf_counter() - started
    server = None
    jvm = None
    with tempfile.TemporaryDirectory() as tmp:
        if store_kind == "embedded":
            from kg.embedded import EmbeddedStore

            store = EmbeddedStore(Path(tmp) / "graph")
            data_dir = Path(tmp) / "graph"
        else:
            from kg.neo4j_store import Neo4jSettings, Neo4jStore
            from tests.neo4j_server import start_neo4j

            server = start_neo4j(Path(tmp), heap="2g", pagecache_mb=1024)
            jvm = PeakRss(server.process.pid)
            store = Neo4jStore(Neo4jSettings(server.uri, server.user, server.password),
                               batch_rows=batch_rows)
            data_dir = server.data_dir / "home"
        try:
            t0 = time.perf_counter()
            store.load(nodes)
            t1 = time.perf_counter()
            print(f"{store_kind}: {n_nodes:,} nodes in {t1 - t0:.1f} s", file=sys.stderr)
            store.load(rels)
            t2 = time.perf_counter()
            print(f"{store_kind}: {n_rels:,} relationships in {t2 - t1:.1f} s", file=sys.stderr)
            counts = store.counts()
            disk = _dir_size(data_dir)
        finally:
            store.close()
            jvm_peak = jvm.stop() if jvm else None
            if server is not None:
                server.stop()
    return {
        "store": store_kind,
        "batch_rows": batch_rows if store_kind == "neo4j" else None,
        "prepare_s": round(prepare_s, 2),
        "nodes": n_nodes,
        "relationships": n_rels,
        "nodes_s": round(t1 - t0, 2),
        "relationships_s": round(t2 - t1, 2),
        "nodes_per_s": round(n_nodes / (t1 - t0)),
        "relationships_per_s": round(n_rels / (t2 - t1)),
        "python_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "server_peak_rss_mb": round(jvm_peak / 2**20) if jvm_peak else None,
        "disk_mb": round(disk / 2**20, 1),
        "store_counts": counts,
    }


def machine() -> str:
    import psutil

    return (f"{platform.machine()}, {os.cpu_count()} cores, "
            f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM, {platform.system()}")


def markdown(results: list[dict], where: str) -> str:
    lines = [
        "# Ingest benchmark: Complete Journey", "",
        f"Machine: {where}. Command: `python benchmarks/ingest.py`.", "",
        "| store | nodes | nodes/s | relationships | relationships/s | peak RSS (Python) "
        "| peak RSS (server) | on disk |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        server = f"{r['server_peak_rss_mb']} MB" if r["server_peak_rss_mb"] else "-"
        lines.append(
            f"| {r['store']} | {r['nodes']:,} | {r['nodes_per_s']:,} | {r['relationships']:,} "
            f"| {r['relationships_per_s']:,} | {r['python_peak_rss_mb']} MB | {server} "
            f"| {r['disk_mb']} MB |"
        )
    lines += ["", "Rows are after aggregation (one purchase edge per household and product); "
              "parsing the source files is excluded (`prepare_s` in the JSON)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", nargs="+", default=["embedded", "neo4j"])
    parser.add_argument("--batch-rows", type=int, default=10_000)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.batch_rows)))
        return
    results = []
    for kind in args.stores:
        print(f"ingest: {kind} ...", file=sys.stderr)
        out = subprocess.run([sys.executable, __file__, "--one", kind,
                              "--batch-rows", str(args.batch_rows)],
                             capture_output=True, text=True, check=False)
        if out.returncode != 0:
            sys.exit(f"{kind} failed:\n{out.stderr[-4000:]}")
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    where = machine()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ingest.json").write_text(json.dumps({"machine": where, "results": results},
                                                    indent=1))
    (RESULTS / "ingest.md").write_text(markdown(results, where))
    print(markdown(results, where))


if __name__ == "__main__":
    main()
