"""Live-event benchmark on Complete Journey: the embedded (SQLite) store and the HTTP API.

In-process, on a copy of the workspace's store (92k products, 868k interaction edges):
- the store itself: durable events/s from W concurrent writers (`record_events`, one event
  per call, group commit) for W in `--writers`, and in groups of 500 (`record_interactions`);
- side by side, one event written the way the previous Parquet store did it (the code of the
  commit before SQLite, read from git): a new version of the tables per event.

Over HTTP (the real server, `python -m api.cli serve`, recommender loaded, client on the same
2 cores): single `POST /events` from 8 concurrent keep-alive clients, closed loop, then open
loop at `--rate` events/s; `POST /events/batch` with 500 events per request from 2 clients.
Every event is a new (user, product, kind) edge or a repeat, drawn from the data's users and
products; each has an `event_id`, and the stored counts are checked against the 201s at the end.

    python benchmarks/events.py [--workspace /work/cj-ws] [--seconds 15] [--out events]

The workspace must hold Complete Journey and a trained recommender (`shopgraph load
completejourney && shopgraph train --no-content --no-gnn`); it is copied, never written.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks.serve import (  # noqa: E402
    Connection,
    cpu_seconds,
    machine_line,
    post_json,
    serve,
    summarise,
)

RESULTS = ROOT / "benchmarks" / "results"
API_KEY = "serve-bench-key"
PARQUET_COMMIT = "303989a"  # the last commit with the Parquet embedded store
TARGETS = {"http_single_events_per_s": 500, "http_single_p99_ms": 50,
           "http_batch_events_per_s": 20_000, "store_events_per_s": 5_000}


def sample_ids(store: Any, n_users: int = 2000, seed: int = 3) -> tuple[list[str], list[str]]:
    """Users and products of the data set, for events that look like the shop's traffic."""
    from kg.schema import PRODUCT, USER

    rng = random.Random(seed)
    users = list(store.node_table(USER)["id"])
    products = list(store.node_table(PRODUCT)["id"])
    return rng.sample(users, min(n_users, len(users))), products


class EventSource:
    """An endless, thread-safe stream of distinct events (each with a unique event_id)."""

    def __init__(self, users: list[str], products: list[str], tag: str, seed: int = 11) -> None:
        self.users, self.products, self.tag = users, products, tag
        self.rng = random.Random(seed)
        self.counter = itertools.count()
        self.lock = threading.Lock()

    def next(self) -> dict[str, Any]:
        with self.lock:
            i = next(self.counter)
            user = self.rng.choice(self.users)
            product = self.rng.choice(self.products)
            kind = self.rng.choice(("view", "view", "view", "cart", "purchase"))
        return {"user_id": user, "product_id": product, "kind": kind,
                "ts": 1_700_000_000 + i, "event_id": f"{self.tag}-{i}"}


# ---- in-process -----------------------------------------------------------------------------
def store_rates(graph_dir: Path, users: list[str], products: list[str], writers: list[int],
                seconds: float) -> dict[str, Any]:
    from kg.embedded import EmbeddedStore
    from kg.store import InteractionEvent

    out: dict[str, Any] = {}
    with EmbeddedStore(graph_dir) as store:
        for w in writers:
            source = EventSource(users, products, f"store-w{w}")
            done = Counter()
            deadline = time.monotonic() + seconds

            def writer(slot: int, source: EventSource = source, done: Counter = done,
                       deadline: float = deadline) -> None:
                n = 0
                while time.monotonic() < deadline:
                    e = source.next()
                    store.record_events([InteractionEvent(e["user_id"], e["product_id"],
                                                          e["kind"], e["ts"], 1.0,
                                                          e["event_id"])])
                    n += 1
                done[slot] = n

            threads = [threading.Thread(target=writer, args=(i,)) for i in range(w)]
            started = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - started
            total = sum(done.values())
            out[f"writers_{w}"] = {"events": total, "seconds": round(wall, 2),
                                   "events_per_s": round(total / wall)}
            print(f"store: {w} writers -> {total / wall:.0f} events/s", file=sys.stderr)
        source = EventSource(users, products, "store-batch")
        batches, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            group = [source.next() for _ in range(500)]
            store.record_interactions([InteractionEvent(e["user_id"], e["product_id"],
                                                        e["kind"], e["ts"], 1.0,
                                                        e["event_id"]) for e in group])
            batches += 1
        wall = time.perf_counter() - started
        out["groups_of_500"] = {"events": batches * 500, "seconds": round(wall, 2),
                                "events_per_s": round(batches * 500 / wall)}
        print(f"store: groups of 500 -> {batches * 500 / wall:.0f} events/s", file=sys.stderr)
    return out


def parquet_store_event(graph_dir: Path, users: list[str], products: list[str],
                        events: int = 3) -> dict[str, Any]:
    """One event through the previous embedded store, as its API path wrote it (read the
    edge, then `load` a one-edge batch: a new version of the tables)."""
    source = subprocess.run(["git", "show", f"{PARQUET_COMMIT}:kg/embedded.py"], cwd=ROOT,
                            check=True, capture_output=True, text=True).stdout
    with tempfile.TemporaryDirectory(dir=graph_dir.parent) as tmp:
        module_path = Path(tmp) / "parquet_embedded.py"
        module_path.write_text(source)
        spec = importlib.util.spec_from_file_location("parquet_embedded", module_path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        from kg.embedded import EmbeddedStore
        from kg.schema import INTERACTED, GraphBatch

        class ParquetStore(module.EmbeddedStore):  # type: ignore[name-defined, misc]
            """The old store as it was; it predates the live-event methods."""

            def record_interactions(self, events):  # noqa: ANN001, ANN202
                raise NotImplementedError

            def events_since(self, seq, limit=0):  # noqa: ANN001, ANN202
                raise NotImplementedError

        old = ParquetStore(Path(tmp) / "graph")
        with EmbeddedStore(graph_dir) as current:
            nodes, rels = current.tables()
        batch = GraphBatch()
        for label, frame in nodes.items():
            if len(frame):
                batch.add_nodes(label, frame)
        for name, frame in rels.items():
            if len(frame):
                from kg.schema import REL_TYPES

                rel = REL_TYPES[name]
                batch.add_rels(rel, frame.assign(**({rel.key: frame["key"]} if rel.key
                                                    else {})))
        old.load(batch)
        times = []
        rng = random.Random(5)
        for _ in range(events):
            user, product = rng.choice(users), rng.choice(products)
            started = time.perf_counter()
            previous = old.interactions(user, product, "view")
            count = 1 if previous.empty else int(previous["count"].iloc[0]) + 1
            one = GraphBatch()
            one.add_rel(INTERACTED, user, product, {"kind": "view", "weight": float(count),
                                                    "count": count, "ts": 1})
            old.load(one)
            times.append(time.perf_counter() - started)
    return {"events": events, "seconds_per_event": [round(t, 3) for t in times],
            "events_per_s": round(events / sum(times), 2)}


# ---- HTTP -----------------------------------------------------------------------------------
def http_single(port: int, pid: int, source: EventSource, clients: int,
                seconds: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    latencies: list[float] = []
    statuses: Counter = Counter()
    acknowledged: list[dict[str, Any]] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        conn = Connection(port)
        mine, ok = [], []
        while time.monotonic() < deadline:
            event = source.next()
            status, _, took = post_json(conn, "/events", event, API_KEY)
            mine.append((status, took))
            if status == 201:
                ok.append(event)
        conn.close()
        with lock:
            for status, took in mine:
                statuses[status] += 1
                latencies.append(took)
            acknowledged.extend(ok)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    cpu_client, cpu_server = time.process_time(), cpu_seconds(pid)
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    result = summarise(latencies, statuses, wall, ok=201)
    result["client_cpu"] = round((time.process_time() - cpu_client) / wall, 2)
    result["server_cpu"] = round((cpu_seconds(pid) - cpu_server) / wall, 2)
    return result, acknowledged


def http_paced(port: int, source: EventSource, rate: float, seconds: float,
               clients: int = 16) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Events sent at a fixed rate; latency from each event's scheduled time (queueing
    in the client counts)."""
    import queue

    jobs: queue.Queue[tuple[float, dict[str, Any]] | None] = queue.Queue()
    latencies: list[float] = []
    statuses: Counter = Counter()
    acknowledged: list[dict[str, Any]] = []
    lock = threading.Lock()

    def client() -> None:
        conn = Connection(port)
        while (job := jobs.get()) is not None:
            scheduled, event = job
            status, _, _ = post_json(conn, "/events", event, API_KEY)
            with lock:
                statuses[status] += 1
                latencies.append(time.perf_counter() - scheduled)
                if status == 201:
                    acknowledged.append(event)
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    started = time.perf_counter()
    for i in range(int(rate * seconds)):
        scheduled = started + i / rate
        pause = scheduled - time.perf_counter()
        if pause > 0:
            time.sleep(pause)  # pacing the sends
        jobs.put((scheduled, source.next()))
    for _ in threads:
        jobs.put(None)
    for t in threads:
        t.join()
    result = summarise(latencies, statuses, time.perf_counter() - started, ok=201)
    result["offered_rate"] = rate
    return result, acknowledged


def http_batches(port: int, source: EventSource, clients: int, seconds: float,
                 size: int = 500) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    latencies: list[float] = []
    statuses: Counter = Counter()
    acknowledged: list[dict[str, Any]] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        conn = Connection(port)
        while time.monotonic() < deadline:
            batch = [source.next() for _ in range(size)]
            status, body, took = post_json(conn, "/events/batch", batch, API_KEY)
            recorded = json.loads(body)["recorded"] if status == 200 else 0
            with lock:
                statuses[status] += 1
                latencies.append(took)
                if status == 200 and recorded == size:
                    acknowledged.extend(batch)
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    result = summarise(latencies, statuses, wall)
    result["events_per_s"] = round(len(acknowledged) / wall)
    result["batch_size"] = size
    return result, acknowledged


def check_stored(graph_dir: Path, acknowledged: list[dict[str, Any]]) -> dict[str, Any]:
    """Every acknowledged event is in the store's log exactly once."""
    from kg.embedded import EmbeddedStore

    with EmbeddedStore(graph_dir) as store:
        logged = Counter(e.event.event_id for e in store.events_since(0, limit=10**9))
    wanted = {e["event_id"] for e in acknowledged}
    return {"acknowledged": len(wanted), "missing": len(wanted - set(logged)),
            "logged_twice": sum(1 for n in logged.values() if n > 1)}


def markdown(results: dict[str, Any]) -> str:
    s, h = results["store"], results["http"]
    lines = [
        "# Live events: embedded SQLite store and HTTP API (Complete Journey)", "",
        f"Machine: {results['machine']}.", "",
        f"Command: `python benchmarks/events.py --seconds {results['seconds']:g} --workers "
        f"{results['workers']}`. "
        "Store: 92k products, 868k interaction edges, 2,469 households (a copy of the demo "
        "workspace); each event has an `event_id` and is on disk (WAL, `synchronous=FULL`) "
        "before it is acknowledged.", "",
        "## The store in-process", "",
        "| writers | events/s | target |", "|---|---:|---:|",
    ]
    for key, row in s["rates"].items():
        label = key.replace("writers_", "") + " concurrent, 1 event each" if key.startswith(
            "writers_") else "1, groups of 500"
        lines.append(f"| {label} | {row['events_per_s']:,} | "
                     f"{'>= 5,000' if key.startswith('writers_') else ''} |")
    p = s["parquet"]
    lines += ["", f"Side by side, the previous Parquet store (commit {PARQUET_COMMIT}, a new "
                  f"version of its tables per event): {p['events_per_s']} events/s "
                  f"({', '.join(str(x) for x in p['seconds_per_event'])} s per event).", "",
              f"## HTTP (`shopgraph serve --workers {results['workers']}`, client on the "
              "same cores)", "",
              "| run | events/s | p50 ms | p99 ms | errors | target |",
              "|---|---:|---:|---:|---:|---|"]
    single = h["single_closed_loop"]
    lines.append(f"| single events, 8 clients back to back | {single['throughput']} | "
                 f"{single['p50_ms']} | {single['p99_ms']} | {single['errors']} | "
                 ">= 500/s, p99 <= 50 ms |")
    paced = h["single_paced"]
    lines.append(f"| single events, paced at {paced['offered_rate']:g}/s | "
                 f"{paced['throughput']} | {paced['p50_ms']} | {paced['p99_ms']} | "
                 f"{paced['errors']} | p99 <= 50 ms |")
    batch = h["batches"]
    lines.append(f"| batches of {batch['batch_size']}, 2 clients | {batch['events_per_s']:,} | "
                 f"{batch['p50_ms']} (per batch) | {batch['p99_ms']} | {batch['errors']} | "
                 ">= 20,000/s |")
    c = results["check"]
    lines += ["", f"Afterwards the store's log holds {c['acknowledged'] - c['missing']:,} of the "
                  f"{c['acknowledged']:,} acknowledged events ({c['missing']} missing, "
                  f"{c['logged_twice']} logged twice).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, default=Path("/work/cj-ws"))
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 8, 64, 256])
    parser.add_argument("--workers", type=int, default=2,
                        help="`shopgraph serve --workers` (default 2: one per core)")
    parser.add_argument("--out", default="events")
    args = parser.parse_args()
    results: dict[str, Any] = {"machine": machine_line(), "seconds": args.seconds,
                               "workers": args.workers}
    with tempfile.TemporaryDirectory(dir=args.workspace.parent) as tmp:
        ws = Path(tmp) / "ws"
        shutil.copytree(args.workspace, ws)
        from kg.embedded import EmbeddedStore

        with EmbeddedStore(ws / "graph") as store:
            users, products = sample_ids(store)
        results["store"] = {"rates": store_rates(ws / "graph", users, products, args.writers,
                                                 args.seconds)}
        print("parquet store: one event ...", file=sys.stderr, flush=True)
        results["store"]["parquet"] = parquet_store_event(ws / "graph", users, products)
        acknowledged: list[dict[str, Any]] = []
        with serve(ws, "embedded", {"SHOPGRAPH_API_KEY": API_KEY},
                   Path(tmp) / "api.log", workers=args.workers) as server:
            http: dict[str, Any] = {}
            for name, run in (
                ("single_closed_loop", lambda: http_single(
                    server.port, server.pid, EventSource(users, products, "single"), 8,
                    args.seconds)),
                ("single_paced", lambda: http_paced(
                    server.port, EventSource(users, products, "paced"), args.rate,
                    args.seconds)),
                ("batches", lambda: http_batches(
                    server.port, EventSource(users, products, "batch"), 2, args.seconds)),
            ):
                print(f"http: {name} ...", file=sys.stderr, flush=True)
                http[name], ok = run()
                acknowledged += ok
                print(f"  {http[name]}", file=sys.stderr)
            results["http"] = http
        results["check"] = check_stored(ws / "graph", acknowledged)
    results["targets"] = TARGETS
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(results, indent=1, default=float))
    (RESULTS / f"{args.out}.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
