"""Load and fault tests of the HTTP API (`shopgraph serve`), loopback only, bounded in count and
time.

Load: the real server (`python -m api.cli serve`, one uvicorn process, embedded store) over a
trained workspace; for recommendations, related products and text search, `--requests` requests
(at most `--duration` s) at each concurrency in `--concurrency` (closed loop: N workers, each
with one keep-alive connection, sending back to back), giving throughput, p50/p99 latency and
errors. Then an open-loop run of recommendations at fixed rates (fractions of the closed-loop
maximum; latency counted from the scheduled send time, so queueing shows) to find the highest
rate with p99 <= 50 ms. Then the API's overhead: the same library calls
(`RecommendationService.recommend` / `.related`, `ProductSearch.search`, loaded as the API loads
them) in this process, sequentially, in blocks alternating with blocks of API calls at
concurrency 1 over the same ids, and the ratio of the p50s (target <= 1.5x). The client is
this Python process and shares the 2 cores with the server; its CPU use is reported.

Faults (unless `--no-faults`), against a real Neo4j 5.26 (tests/neo4j_server) loaded with the
same data set, the API serving the same artifacts with `--store neo4j` and an API key:
- Neo4j stopped mid-run: readers (recommendations) and writers (POST /events, each event a
  distinct (user, product, kind), so its stored `count` says how often it landed) run; Neo4j
  is stopped (SIGTERM) and a burst of concurrent writes arrives while it is down; reads must
  keep answering 200 from the loaded artifacts, writes must get 503; Neo4j is restarted on the
  same port with the same data; writes must succeed again; every refused event is re-posted
  once (the client's retry); the store must then hold every event exactly once;
- malformed JSON -> 422; huge bodies -> 413/422 with the server still answering; unknown ids
  -> 404; 50 concurrent events for one user -> all 201 and each stored exactly once.

    python benchmarks/serve.py [--dataset ml100k-kg] [--workspace DIR] [--requests 800]
        [--duration 25] [--no-faults] [--out serve]

The workspace is reused when it holds search artifacts and a trained recommender; otherwise the
data set is loaded into its embedded store and trained like `shopgraph train --no-gnn` (content
vectors with E5 + the hybrid without the GNN). Writes benchmarks/results/NAME.json and NAME.md.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import itertools
import json
import os
import queue
import random
import re
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import psutil  # noqa: E402

from benchmarks.machine import describe_machine  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
WORK = ROOT / "benchmarks" / ".work" / "serve"
TARGET_P99_MS = 50.0
TARGET_OVERHEAD = 1.5
API_KEY = "serve-bench-key"
READ_TIMEOUT_S = 60.0
WRITE_TIMEOUT_S = 180.0  # longer than the driver's worst give-up (~62 s) plus a restart
ENDPOINTS = ("recommendations", "related", "search")


# ---- machine --------------------------------------------------------------------------------
def machine_line() -> str:
    """CPU model, cores, RAM, GPU, load average at start, Python, numpy (benchmarks/machine.py),
    and the HTTP stack the server runs on."""
    return describe_machine("server and client share the cores; library thread defaults; "
                            f"{http_stack()}")


def http_stack() -> str:
    """What uvicorn's "auto" settings pick here: uvloop and httptools when installed (the
    `uvicorn[standard]` extra, a dependency of shopgraph), else asyncio and h11."""
    import importlib.metadata
    import importlib.util

    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return f"uvicorn {importlib.metadata.version('uvicorn')} with {loop} + {http}"


# ---- workspace ------------------------------------------------------------------------------
def prepare_workspace(dataset: str, workspace: Path, data_dir: Path | None) -> dict[str, Any]:
    """Reuse `workspace` when trained (search artifacts + recommender), else load + train."""
    from recommender.content import content_dir
    from recommender.training import current_version

    def describe(how: str, seconds: float | None) -> dict[str, Any]:
        version = current_version(workspace)
        train = json.loads((version / "train.json").read_text())
        meta = json.loads((content_dir(workspace) / "meta.json").read_text())
        config = train.get("config", {})
        return {"path": str(workspace), "how": how, "prepare_s": seconds,
                "recommender": version.name, "gnn": config.get("gnn") is not None,
                "interactions": train.get("interactions"), "products": meta.get("products"),
                "text_encoder": meta.get("text_encoder")}

    try:
        current_version(workspace)
        if (content_dir(workspace) / "meta.json").is_file():
            return describe("reused", None)
    except FileNotFoundError:
        pass
    from kg.embedded import EmbeddedStore
    from kg.importers import load_dataset
    from recommender.content import build_content
    from recommender.training import HybridConfig, train_recommender

    started = time.perf_counter()
    print(f"preparing {workspace}: load {dataset}, content vectors, hybrid without the GNN",
          file=sys.stderr, flush=True)
    with EmbeddedStore(workspace / "graph") as store:
        if not store.counts()["nodes"].get("Product"):
            load_dataset(dataset, store, data_dir)
        build_content(store, workspace)
        config = HybridConfig()
        config.gnn = None  # as `shopgraph train --no-gnn`: keeps the preparation to ~2 min
        train_recommender(store, workspace, config, log=lambda m: print(m, file=sys.stderr))
    return describe("loaded and trained here", round(time.perf_counter() - started, 1))


# ---- HTTP -----------------------------------------------------------------------------------
class Connection:
    """One keep-alive HTTP/1.1 connection to the server (one per worker thread).

    A GET that finds its kept-alive connection closed is retried once on a new one; a POST is
    never retried here (a retry could record an event twice): its failure is returned.
    """

    def __init__(self, port: int, timeout: float = READ_TIMEOUT_S) -> None:
        self.port, self.timeout = port, timeout
        self.conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def request(self, method: str, path: str, body: bytes | Iterator[bytes] | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes, float]:
        """(status, body, seconds); status 0 and the error as the body when none came."""
        for attempt in (0, 1):
            started = time.perf_counter()
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                                           timeout=self.timeout)
                self.conn.request(method, path, body=body, headers=headers or {},
                                  encode_chunked=body is not None and not isinstance(body, bytes))
                response = self.conn.getresponse()
                data = response.read()
                if response.will_close:
                    self.close()
                return response.status, data, time.perf_counter() - started
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
                    http.client.CannotSendRequest) as exc:
                self.close()
                if method != "GET" or attempt == 1:
                    return 0, repr(exc).encode(), time.perf_counter() - started
            except (TimeoutError, OSError, http.client.HTTPException) as exc:
                self.close()
                return 0, repr(exc).encode(), time.perf_counter() - started
        raise AssertionError("unreachable")


def post_json(conn: Connection, path: str, payload: Any, key: str | None = API_KEY
              ) -> tuple[int, bytes, float]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["X-API-Key"] = key
    return conn.request("POST", path, json.dumps(payload).encode(), headers)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """`python -m api.cli serve` in a subprocess on a free loopback port."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextlib.contextmanager
def serve(workspace: Path, store: str, env: dict[str, str], log_path: Path,
          timeout: float = 240, workers: int = 1) -> Iterator[Server]:
    """Start the API, wait until /ready answers 200 (polling, bounded), stop it afterwards."""
    port = free_port()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "serve", "--host", "127.0.0.1", "--port",
             str(port), "--workspace", str(workspace), "--store", store, "--workers",
             str(workers)],
            cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = Server(process, port, log_path)
    try:
        conn = Connection(port, timeout=10)
        deadline = time.monotonic() + timeout
        while True:
            status, body, _ = conn.request("GET", "/ready")
            if status == 200:
                break
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the API did not become ready ({status} {body[:300]!r});"
                                   f" its log ends:\n{tail}")
            time.sleep(0.5)  # polling /ready with a deadline
        conn.close()
        yield server
    finally:
        server.stop()


# ---- load -----------------------------------------------------------------------------------
def summarise(latencies: Sequence[float], statuses: Counter, seconds: float,
              ok: int = 200) -> dict[str, Any]:
    lat = np.asarray(latencies, dtype=float) * 1000
    n = len(lat)
    return {
        "requests": n, "ok": statuses.get(ok, 0), "errors": n - statuses.get(ok, 0),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "seconds": round(seconds, 2), "throughput": round(n / seconds, 1) if seconds else None,
        "p50_ms": round(float(np.percentile(lat, 50)), 2) if n else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 2) if n else None,
        "max_ms": round(float(lat.max()), 2) if n else None,
    }


def cpu_seconds(pid: int) -> float:
    """CPU seconds of the server: the process and its workers (`--workers N`)."""
    process = psutil.Process(pid)
    total = 0.0
    for p in (process, *process.children(recursive=True)):
        with contextlib.suppress(psutil.Error):
            times = p.cpu_times()
            total += times.user + times.system
    return total


def closed_loop(port: int, server_pid: int, paths: Sequence[str], concurrency: int,
                requests: int, duration: float) -> dict[str, Any]:
    """`concurrency` workers send GETs back to back until `requests` or `duration` s."""
    counter = itertools.count()
    deadline = time.monotonic() + duration
    latencies: list[float] = []
    statuses: Counter = Counter()
    lock = threading.Lock()

    def worker() -> None:
        conn = Connection(port)
        mine: list[tuple[int, float]] = []
        while time.monotonic() < deadline:
            i = next(counter)
            if i >= requests:
                break
            status, _, seconds = conn.request("GET", paths[i % len(paths)])
            mine.append((status, seconds))
        conn.close()
        with lock:
            for status, seconds in mine:
                statuses[status] += 1
                latencies.append(seconds)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    cpu_client, cpu_server = time.process_time(), cpu_seconds(server_pid)
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    result = summarise(latencies, statuses, wall)
    result["client_cpu"] = round((time.process_time() - cpu_client) / wall, 2)
    result["server_cpu"] = round((cpu_seconds(server_pid) - cpu_server) / wall, 2)
    return result


def open_loop(port: int, paths: Sequence[str], rate: float, seconds: float,
              workers: int = 32) -> dict[str, Any]:
    """GETs sent at a fixed `rate`/s for `seconds` s by a pool of `workers` connections;
    latency runs from each request's scheduled time, so time queued in the client counts."""
    jobs: queue.Queue[tuple[float, str] | None] = queue.Queue()
    latencies: list[float] = []
    statuses: Counter = Counter()
    lock = threading.Lock()

    def worker() -> None:
        conn = Connection(port)
        while (job := jobs.get()) is not None:
            scheduled, path = job
            status, _, _ = conn.request("GET", path)
            with lock:
                statuses[status] += 1
                latencies.append(time.perf_counter() - scheduled)
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    total = int(rate * seconds)
    started = time.perf_counter()
    for i in range(total):
        scheduled = started + i / rate
        pause = scheduled - time.perf_counter()
        if pause > 0:
            time.sleep(pause)  # pacing the sends, not synchronisation
        jobs.put((scheduled, paths[i % len(paths)]))
    for _ in threads:
        jobs.put(None)
    for t in threads:
        t.join()
    result = summarise(latencies, statuses, time.perf_counter() - started)
    result["offered_rate"] = round(rate, 1)
    return result


@dataclass
class Workload:
    """The ids and queries each endpoint is called with, and the in-process equivalents."""

    users: list[str]
    products: list[str]
    queries: list[str]
    paths: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.paths = {
            "recommendations": [f"/users/{quote(u, safe='')}/recommendations?k=10"
                                for u in self.users],
            "related": [f"/products/{quote(p, safe='')}/related?k=10" for p in self.products],
            "search": [f"/search?{urlencode({'q': q, 'k': 10})}" for q in self.queries],
        }


def workload(workspace: Path, size: int = 400, seed: int = 7) -> tuple[Workload, Any, Any]:
    """A seeded sample of users, products and title queries, and the library objects loaded
    the way the API loads them (`api.app.build_recommender`, `api.app.build_search`)."""
    from api.app import build_recommender, build_search

    service = build_recommender(workspace)
    search = build_search(workspace)
    rng = random.Random(seed)
    users = rng.sample(service.user_ids, min(size, len(service.user_ids)))
    products = rng.sample(service.product_ids, min(size, len(service.product_ids)))
    titles = service.catalog["title"].dropna().astype(str) if "title" in service.catalog \
        else []
    queries = [re.sub(r"\s*\(.*?\)\s*", " ", t).strip() for t in titles]
    queries = [q for q in queries if q][: 10 * size]
    queries = rng.sample(queries, min(size, len(queries))) or products[:size]
    return Workload(users, products, queries), service, search


def in_process_call(service: Any, search: Any, endpoint: str) -> Callable[[str], object]:
    if endpoint == "recommendations":
        return lambda user: service.recommend(user, k=10)
    if endpoint == "related":
        return lambda product: service.related(product, k=10)
    return lambda query: search.search(query, k=10)


def overhead(port: int, work: Workload, service: Any, search: Any, blocks: int,
             block_size: int) -> dict[str, Any]:
    """p50 of API calls (concurrency 1) over p50 of the same library calls in-process, in
    alternating blocks (which goes first alternates too) over the same ids."""
    items = {"recommendations": work.users, "related": work.products, "search": work.queries}
    out: dict[str, Any] = {}
    conn = Connection(port)
    for endpoint in ENDPOINTS:
        call = in_process_call(service, search, endpoint)
        for item in items[endpoint][:blocks * block_size]:  # warm, as the server is
            call(item)
        api_lat: list[float] = []
        lib_lat: list[float] = []
        floor_lat: list[float] = []
        errors = 0
        for b in range(blocks):
            chunk = [(items[endpoint][(b * block_size + i) % len(items[endpoint])],
                      work.paths[endpoint][(b * block_size + i) % len(items[endpoint])])
                     for i in range(block_size)]
            for side in (("api", "lib") if b % 2 == 0 else ("lib", "api")):
                # idle a moment first: OpenMP/BLAS threads left spinning by the other side
                # (on the same 2 cores) go to sleep, so neither side pays for the other
                time.sleep(0.3)
                for item, path in chunk:
                    if side == "api":
                        status, _, seconds = conn.request("GET", path)
                        api_lat.append(seconds)
                        errors += status != 200
                    else:
                        t0 = time.perf_counter()
                        call(item)
                        lib_lat.append(time.perf_counter() - t0)
                if side == "api":
                    for _ in range(block_size // 3):
                        floor_lat.append(conn.request("GET", "/health")[2])
        api_p50 = float(np.percentile(api_lat, 50)) * 1000
        lib_p50 = float(np.percentile(lib_lat, 50)) * 1000
        out[endpoint] = {"calls_each": len(api_lat), "api_errors": errors,
                         "api_p50_ms": round(api_p50, 2), "in_process_p50_ms": round(lib_p50, 2),
                         "ratio": round(api_p50 / lib_p50, 2),
                         "added_ms": round(api_p50 - lib_p50, 2),
                         "health_p50_ms": round(float(np.percentile(floor_lat, 50)) * 1000, 2),
                         "passed": api_p50 / lib_p50 <= TARGET_OVERHEAD}
    conn.close()
    return out


def run_load(args: argparse.Namespace, workspace: Path) -> dict[str, Any]:
    work, service, search = workload(workspace)
    report: dict[str, Any] = {"levels": {}, "warm_up": {}, "workload": {
        "users": len(work.users), "products": len(work.products),
        "queries": len(work.queries), "query_examples": work.queries[:5]}}
    with serve(workspace, "embedded", {"SHOPGRAPH_API_KEY": API_KEY},
               WORK / "logs" / "api-load.log", workers=args.workers) as server:
        for endpoint in ENDPOINTS:
            paths = work.paths[endpoint]
            print(f"load: {endpoint} warm-up (every sampled id once) ...", file=sys.stderr,
                  flush=True)
            report["warm_up"][endpoint] = closed_loop(server.port, server.pid, paths, 4,
                                                      len(paths), args.duration * 2)
            for c in args.concurrency:
                print(f"load: {endpoint} at concurrency {c} ...", file=sys.stderr, flush=True)
                result = closed_loop(server.port, server.pid, paths, c, args.requests,
                                     args.duration)
                report["levels"].setdefault(endpoint, {})[str(c)] = result
                print(f"  {result['throughput']} req/s, p50 {result['p50_ms']} ms, p99 "
                      f"{result['p99_ms']} ms, errors {result['errors']}", file=sys.stderr)
        recs = report["levels"]["recommendations"]
        best = max(r["throughput"] for r in recs.values())
        report["paced"] = []
        for fraction in args.rates:
            rate = best * fraction
            print(f"paced: recommendations at {rate:.0f}/s ...", file=sys.stderr, flush=True)
            result = open_loop(server.port, work.paths["recommendations"], rate,
                               args.paced_seconds)
            result["fraction_of_max"] = fraction
            report["paced"].append(result)
        print("overhead: API vs in-process ...", file=sys.stderr, flush=True)
        report["overhead"] = overhead(server.port, work, service, search, args.blocks,
                                      args.block_size)
    ok_levels = [int(c) for c, r in recs.items()
                 if r["p99_ms"] is not None and r["p99_ms"] <= TARGET_P99_MS and not r["errors"]]
    ok_rates = [r for r in report["paced"] if r["p99_ms"] <= TARGET_P99_MS and not r["errors"]]
    report["sustainable"] = {
        "target_p99_ms": TARGET_P99_MS,
        "highest_concurrency_meeting_target": max(ok_levels) if ok_levels else None,
        "throughput_there": recs[str(max(ok_levels))]["throughput"] if ok_levels else None,
        "highest_paced_rate_meeting_target": max((r["offered_rate"] for r in ok_rates),
                                                 default=None),
        "max_closed_loop_throughput": best,
    }
    return report


# ---- faults ---------------------------------------------------------------------------------
@dataclass
class EventLog:
    """Every attempt per logical event (a distinct user, product, kind), as the client saw it."""

    attempts: dict[tuple[str, str, str], list[dict[str, Any]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def post(self, conn: Connection, event: tuple[str, str, str], phase: str,
             t0: float) -> int:
        user, product, kind = event
        sent = time.monotonic() - t0
        status, body, seconds = post_json(conn, "/events", {"user_id": user,
                                                            "product_id": product,
                                                            "kind": kind})
        detail = ""
        if status != 201:
            try:
                detail = str(json.loads(body).get("detail", ""))[:200]
            except (ValueError, AttributeError):
                detail = body[:200].decode(errors="replace")
        with self.lock:
            self.attempts.setdefault(event, []).append(
                {"status": status, "seconds": round(seconds, 3), "sent_at": round(sent, 2),
                 "phase": phase, "detail": detail})
        return status


def stored_counts(store: Any, users: Sequence[str]) -> dict[tuple[str, str, str], int]:
    """(user, product, kind) -> stored `count`, for the given users' INTERACTED edges."""
    out: dict[tuple[str, str, str], int] = {}
    for user in users:
        rows = store.interactions(user_id=user)
        for r in rows.to_dict("records"):
            n = r.get("count")
            out[(r["user_id"], r["product_id"], r["kind"])] = 1 if n is None or n != n \
                else int(n)
    return out


def lat_stats(values: Sequence[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    ms = np.asarray(values) * 1000
    return {"n": len(ms), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1), "max_ms": round(float(ms.max()), 1)}


def neo4j_outage(args: argparse.Namespace, server: Server, neo4j: Any, store: Any,
                 work: Workload, tag: str) -> dict[str, Any]:
    """Readers and writers run; Neo4j stops, a write burst arrives, Neo4j comes back; refused
    events are re-posted once; the store must hold each accepted event exactly once."""
    products = work.products
    events = EventLog()
    reads: list[tuple[float, int, float]] = []  # (sent_at, status, seconds)
    stop = threading.Event()
    lock = threading.Lock()
    t0 = time.monotonic()
    marks: dict[str, float] = {}
    writer_users = [f"{tag}-w{w}" for w in range(args.writers)]
    burst_users = [f"{tag}-burst{i}" for i in range(args.burst)]

    def phase() -> str:
        if "restarted" in marks:
            return "after restart"
        return "down" if "stopped" in marks else "before"

    def reader(r: int) -> None:
        conn = Connection(server.port)
        for i in itertools.count(r * 97):
            if stop.is_set():
                break
            sent = time.monotonic() - t0
            status, _, seconds = conn.request("GET", work.paths["recommendations"][
                i % len(work.paths["recommendations"])])
            with lock:
                reads.append((sent, status, seconds))
        conn.close()

    def writer(w: int) -> None:
        conn = Connection(server.port, timeout=WRITE_TIMEOUT_S)
        for i in itertools.count():
            if stop.is_set() or i >= len(products):
                break
            events.post(conn, (writer_users[w], products[i], "view"), phase(), t0)
        conn.close()

    threads = ([threading.Thread(target=reader, args=(r,)) for r in range(args.readers)]
               + [threading.Thread(target=writer, args=(w,)) for w in range(args.writers)])
    for t in threads:
        t.start()
    time.sleep(args.before_s)  # traffic runs with Neo4j up for a while (not synchronisation)
    marks["stopped"] = time.monotonic() - t0
    print(f"faults: stopping Neo4j at {marks['stopped']:.1f} s", file=sys.stderr, flush=True)
    neo4j.stop(keep_data=True)

    def burst_one(i: int) -> None:
        conn = Connection(server.port, timeout=WRITE_TIMEOUT_S)
        events.post(conn, (burst_users[i], products[i % len(products)], "cart"), "down", t0)
        conn.close()

    burst = [threading.Thread(target=burst_one, args=(i,)) for i in range(args.burst)]
    time.sleep(2)  # the burst arrives a little into the outage (pacing, not synchronisation)
    marks["burst"] = time.monotonic() - t0
    for t in burst:
        t.start()
    neo4j.prepare_restart()  # the slow half of the restart; the Bolt port stays closed
    marks["prepared"] = time.monotonic() - t0

    def refused_while_down() -> int:
        with events.lock:
            return sum(a["status"] == 503 for tries in events.attempts.values() for a in tries)

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (
            time.monotonic() - t0 - marks["stopped"] < args.outage_s
            or refused_while_down() == 0):
        time.sleep(0.5)  # polling with a deadline
    marks["restarting"] = time.monotonic() - t0
    print(f"faults: restarting Neo4j at {marks['restarting']:.1f} s", file=sys.stderr,
          flush=True)
    neo4j.restart()
    marks["restarted"] = time.monotonic() - t0
    time.sleep(args.after_s)  # traffic runs with Neo4j back (not synchronisation)
    stop.set()
    for t in threads + burst:
        t.join(WRITE_TIMEOUT_S)
    marks["stream_end"] = time.monotonic() - t0

    # the client's retry: every event never answered 201 is posted once more
    retried = [e for e, tries in events.attempts.items()
               if not any(a["status"] == 201 for a in tries)]
    conn = Connection(server.port, timeout=WRITE_TIMEOUT_S)
    for event in retried:
        events.post(conn, event, "retry", t0)
    conn.close()

    stored = stored_counts(store, writer_users + burst_users)
    accepted = {e: sum(a["status"] == 201 for a in tries)
                for e, tries in events.attempts.items()}
    lost = [e for e, n in accepted.items() if n and stored.get(e, 0) < n]
    doubled = [e for e, n in stored.items() if n > accepted.get(e, 0)]
    unanswered = [e for e, n in accepted.items() if n == 0]
    attempts = [a for tries in events.attempts.values() for a in tries]

    def when(lo: float, hi: float) -> list[tuple[float, int, float]]:
        return [r for r in reads if lo <= r[0] < hi]

    down_reads = when(marks["stopped"], marks["restarted"])
    burst_reads = when(marks["burst"], marks["burst"] + 30)
    write_statuses = {p: dict(Counter(str(a["status"]) for a in attempts if a["phase"] == p))
                      for p in ("before", "down", "after restart", "retry")}
    refusals = [a for a in attempts if a["status"] == 503]
    first_ok_after = min((a["sent_at"] + a["seconds"] for a in attempts
                          if a["status"] == 201 and a["sent_at"] + a["seconds"]
                          >= marks["restarted"]), default=None)
    reads_ok = bool(down_reads) and all(s == 200 for _, s, _ in down_reads)
    reads_fast = bool(down_reads) and max(s for _, _, s in down_reads) < 5
    return {
        "timeline_s": {k: round(v, 1) for k, v in marks.items()},
        "readers": args.readers, "writers": args.writers, "burst": args.burst,
        "reads": {
            "before": lat_stats([s for t, _, s in when(0, marks["stopped"])]),
            "while_down": {**lat_stats([s for _, _, s in down_reads]),
                           "statuses": dict(Counter(str(s) for _, s, _ in down_reads))},
            "during_burst_30s": lat_stats([s for _, _, s in burst_reads]),
            "after_restart": lat_stats([s for t, _, s in when(marks["restarted"], 1e9)]),
        },
        "writes": {
            "logical_events": len(events.attempts), "attempts": len(attempts),
            "statuses_by_phase": write_statuses,
            "refused_503": len(refusals),
            "seconds_to_503": lat_stats([a["seconds"] for a in refusals]),
            "example_503": " ".join(refusals[0]["detail"].split()) if refusals else None,
            "other_errors": [a for a in attempts if a["status"] not in (201, 503)][:5],
            "first_201_after_restart_s": (round(first_ok_after - marks["restarted"], 2)
                                          if first_ok_after is not None else None),
            "retried_after_outage": len(retried),
            "accepted_201": sum(accepted.values()),
            "stored_total": sum(stored.values()),
            "lost": [list(e) for e in lost][:10], "doubled": [list(e) for e in doubled][:10],
            "never_accepted": [list(e) for e in unanswered][:10],
        },
        "checks": {
            "reads keep answering 200 while Neo4j is down": reads_ok,
            "reads while down stay under 5 s": reads_fast,
            "writes get 503 while Neo4j is down": bool(refusals) and all(
                "graph store unavailable" in a["detail"] for a in refusals),
            "writes succeed after Neo4j is back": first_ok_after is not None,
            "no write answered 500 or dropped": not [
                a for a in attempts if a["status"] not in (201, 503)],
            "no event lost or doubled": not lost and not doubled and not unanswered
            and sum(stored.values()) == sum(accepted.values()),
        },
    }


def malformed_and_huge(server: Server) -> dict[str, Any]:
    conn = Connection(server.port)
    headers = {"Content-Type": "application/json", "X-API-Key": API_KEY}
    bodies = {
        "not JSON": b"{not json",
        "truncated": b'{"user_id": "1", "product_id": "1"',
        "JSON array": b'["1", "1", "view"]',
        "unknown kind": b'{"user_id": "1", "product_id": "1", "kind": "wishlist"}',
        "missing field": b'{"user_id": "1", "kind": "view"}',
        "extra field": b'{"user_id": "1", "product_id": "1", "kind": "view", "x": 1}',
        "negative ts": b'{"user_id": "1", "product_id": "1", "kind": "view", "ts": -1}',
        "empty body": b"",
    }
    malformed = {}
    for name, body in bodies.items():
        status, _, seconds = conn.request("POST", "/events", body, headers)
        malformed[name] = status
    status, data, _ = conn.request(
        "POST", "/events", b'{"user_id": "\xff\xfe", "product_id": "1", "kind": "view"}',
        headers)
    not_utf8 = {"status": status, "body": data[:200].decode(errors="replace")}
    conn.close()

    proc = psutil.Process(server.pid)
    huge: dict[str, Any] = {}
    mib = 2**20
    cases: dict[str, tuple[bytes | Iterator[bytes], dict[str, str]]] = {
        "10 MiB JSON event (Content-Length)": (
            json.dumps({"user_id": "x" * (10 * mib - 64), "product_id": "1",
                        "kind": "view"}).encode(), headers),
        "20 MiB body (Content-Length)": (b"{" + b" " * (20 * mib) + b"}", headers),
        "20 MiB body (chunked, no length)": (
            (b" " * mib for _ in range(20)), headers),
    }
    for name, (body, hdrs) in cases.items():
        rss_before = proc.memory_info().rss
        big = Connection(server.port, timeout=120)
        status, data, seconds = big.request("POST", "/events", body, hdrs)
        big.close()
        health, _, _ = Connection(server.port).request("GET", "/health")
        recs, _, _ = Connection(server.port).request("GET", "/users/1/recommendations?k=10")
        huge[name] = {"status": status, "seconds": round(seconds, 2),
                      "error": data[:120].decode(errors="replace") if status == 0 else None,
                      "health_after": health, "recommendations_after": recs,
                      "server_rss_mb_before": round(rss_before / mib),
                      "server_rss_mb_after": round(proc.memory_info().rss / mib)}
    return {"malformed": malformed, "not_utf8": not_utf8, "huge": huge, "checks": {
        "malformed JSON -> 422": all(s == 422 for s in malformed.values()),
        "body not UTF-8 -> 4xx with a JSON detail": 400 <= not_utf8["status"] < 500
        and '"detail"' in not_utf8["body"],
        "huge payloads -> 413/422, server keeps answering": all(
            h["status"] in (413, 422) and h["health_after"] == 200
            and h["recommendations_after"] == 200 for h in huge.values()),
    }}


def unknown_ids(server: Server, store: Any, tag: str) -> dict[str, Any]:
    conn = Connection(server.port)
    missing = "no-such-id-0000"
    gets = {
        "GET /users/{unknown}/recommendations": f"/users/{missing}/recommendations?k=10",
        "GET /products/{unknown}/related": f"/products/{missing}/related?k=10",
        "GET /products/{unknown}": f"/products/{missing}",
        "GET /search?user={unknown}": f"/search?q=star&user={missing}",
    }
    statuses = {name: conn.request("GET", path)[0] for name, path in gets.items()}
    user = f"{tag}-unknown-product"
    statuses["POST /events with an unknown product"] = post_json(
        conn, "/events", {"user_id": user, "product_id": missing, "kind": "view"})[0]
    conn.close()
    created = store.get_node("User", user) is not None
    return {"statuses": statuses, "user_node_created": created, "checks": {
        "unknown ids -> 404, nothing written": all(s == 404 for s in statuses.values())
        and not created}}


def one_user_concurrently(server: Server, store: Any, work: Workload, tag: str,
                          n: int = 50) -> dict[str, Any]:
    """`n` simultaneous events for one new user over 5 products x 3 kinds (repeats
    included): all 201, one new_user, and each stored `count` = the events posted for it."""
    user = f"{tag}-busy"
    products = work.products[:5]
    posted = [(user, products[i % 5], ("view", "cart", "purchase")[(i // 5) % 3])
              for i in range(n)]
    results: list[tuple[int, bytes]] = []
    lock = threading.Lock()
    gate = threading.Barrier(n)

    def post(event: tuple[str, str, str]) -> None:
        conn = Connection(server.port, timeout=WRITE_TIMEOUT_S)
        gate.wait()
        status, body, _ = post_json(conn, "/events", {"user_id": event[0],
                                                      "product_id": event[1],
                                                      "kind": event[2]})
        conn.close()
        with lock:
            results.append((status, body))

    threads = [threading.Thread(target=post, args=(e,)) for e in posted]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(WRITE_TIMEOUT_S)
    seconds = time.perf_counter() - started
    statuses = Counter(s for s, _ in results)
    new_users = sum(json.loads(b).get("new_user", False) for s, b in results if s == 201)
    stored = stored_counts(store, [user])
    expected = dict(Counter(posted))
    return {"events": n, "seconds": round(seconds, 2),
            "statuses": {str(k): v for k, v in statuses.items()}, "new_user_true": new_users,
            "stored_total": sum(stored.values()), "checks": {
                f"{n} concurrent events for one user all land exactly once":
                    statuses == Counter({201: n}) and new_users == 1 and stored == expected}}


def run_faults(args: argparse.Namespace, workspace: Path) -> dict[str, Any]:
    from kg.importers import load_dataset
    from kg.neo4j_store import Neo4jSettings, Neo4jStore
    from tests.neo4j_server import start_neo4j

    work, _, _ = workload(workspace, size=2000)
    tag = f"fault{int(time.time())}"
    report: dict[str, Any] = {"tag": tag}
    started = time.perf_counter()
    neo4j = start_neo4j(WORK / "neo4j", heap="1g")
    try:
        report["neo4j_start_s"] = round(time.perf_counter() - started, 1)
        settings = Neo4jSettings(uri=neo4j.uri, user=neo4j.user, password=neo4j.password)
        store = Neo4jStore(settings)
        t = time.perf_counter()
        print(f"faults: loading {args.dataset} into Neo4j ...", file=sys.stderr, flush=True)
        load_dataset(args.dataset, store, args.data_dir)
        report["neo4j_load_s"] = round(time.perf_counter() - t, 1)
        # the API logs in as its own user: a restart briefly gives `neo4j` a throwaway
        # password (tests/neo4j_server), which must not show up as API errors here
        api_password = "api-" + neo4j.password
        neo4j.add_user("shopgraph", api_password)
        env = {"SHOPGRAPH_API_KEY": API_KEY, "NEO4J_URI": neo4j.uri,
               "NEO4J_USER": "shopgraph", "NEO4J_PASSWORD": api_password}
        with serve(workspace, "neo4j", env, WORK / "logs" / "api-faults.log") as server:
            paths = work.paths["recommendations"]
            report["warm_up"] = closed_loop(server.port, server.pid, paths, 4, len(paths), 60)
            report["outage"] = neo4j_outage(args, server, neo4j, store, work, tag)
            print("faults: malformed, huge, unknown ids, one user concurrently ...",
                  file=sys.stderr, flush=True)
            report["malformed_and_huge"] = malformed_and_huge(server)
            report["unknown_ids"] = unknown_ids(server, store, tag)
            report["one_user"] = one_user_concurrently(server, store, work, tag)
            report["server_alive_at_end"] = server.process.poll() is None
        store.close()
    finally:
        neo4j.stop()
    checks: dict[str, bool] = {}
    for part in ("outage", "malformed_and_huge", "unknown_ids", "one_user"):
        checks.update(report[part]["checks"])
    report["checks"] = checks
    return report


# ---- report ---------------------------------------------------------------------------------
def markdown(results: dict[str, Any]) -> str:
    lines = ["# HTTP API load and fault tests", "",
             f"Machine: {results['machine']}.",
             f"Command: `{results['command']}`. Total {results['total_s']:.0f} s.", ""]
    ws = results["workspace"]
    lines += [f"Data set {results['dataset']}: {ws['products']:,} products, recommender "
              f"{ws['recommender']} trained on {ws['interactions']:,} interactions "
              f"({'with' if ws['gnn'] else 'without'} the GNN), search on {ws['text_encoder']} "
              f"text vectors; workspace {ws['how']}.", ""]
    load = results.get("load")
    if load:
        lines += ["## Load", "",
                  f"`shopgraph serve --workers {results.get('workers', 1)}` (uvicorn, embedded "
                  "store) on loopback; the "
                  "client is this Python process on the same 2 cores (threads, one keep-alive "
                  "connection per worker, closed loop). CPU = cores busy on average.", "",
                  "| endpoint | concurrency | requests | errors | req/s | p50 ms | p99 ms | "
                  "max ms | server CPU | client CPU |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for endpoint, levels in load["levels"].items():
            for c, r in levels.items():
                lines.append(f"| {endpoint} | {c} | {r['requests']} | {r['errors']} | "
                             f"{r['throughput']} | {r['p50_ms']} | {r['p99_ms']} | "
                             f"{r['max_ms']} | {r['server_cpu']} | {r['client_cpu']} |")
        s = load["sustainable"]
        level = s["highest_concurrency_meeting_target"]
        lines += ["", "Recommendations at fixed offered rates (open loop, 32 connections; "
                  "latency from the scheduled send time):", "",
                  "| offered req/s | share of max | requests | errors | p50 ms | p99 ms | "
                  "max ms |", "|---:|---:|---:|---:|---:|---:|---:|"]
        for r in load["paced"]:
            lines.append(f"| {r['offered_rate']} | {r['fraction_of_max']:.0%} | "
                         f"{r['requests']} | {r['errors']} | {r['p50_ms']} | {r['p99_ms']} | "
                         f"{r['max_ms']} |")
        lines += ["", f"Target p99 <= {s['target_p99_ms']:.0f} ms for recommendations: "
                  + (f"met up to concurrency {level} ({s['throughput_there']} req/s closed "
                     "loop)" if level else "not met at any tested concurrency")
                  + "; open loop: "
                  + (f"met up to {s['highest_paced_rate_meeting_target']} req/s offered"
                     if s["highest_paced_rate_meeting_target"] else
                     "not met at any tested rate")
                  + f" (closed-loop maximum {s['max_closed_loop_throughput']} req/s).", "",
                  "API overhead (p50 at concurrency 1 over p50 of the same library call "
                  f"in-process, alternating blocks; target <= {TARGET_OVERHEAD}x):", "",
                  "| endpoint | calls each | API p50 ms | in-process p50 ms | added ms | "
                  "ratio | within target | GET /health p50 ms |",
                  "|---|---:|---:|---:|---:|---:|---|---:|"]
        for endpoint, o in load["overhead"].items():
            lines.append(f"| {endpoint} | {o['calls_each']} | {o['api_p50_ms']} | "
                         f"{o['in_process_p50_ms']} | {o['added_ms']} | {o['ratio']} | "
                         f"{'yes' if o['passed'] else 'no'} | {o['health_p50_ms']} |")
        lines += ["", "GET /health (an async route doing nothing) is the floor every request "
                  "pays here: HTTP on loopback, uvicorn, the middlewares and this Python client.",
                  ""]
    faults = results.get("faults")
    if faults:
        out = faults["outage"]
        w, r, tl = out["writes"], out["reads"], out["timeline_s"]
        lines += ["## Faults", "",
                  f"Real Neo4j 5.26 (tests/neo4j_server) loaded with {results['dataset']} in "
                  f"{faults['neo4j_load_s']} s; the API (`--store neo4j`, API key set) serves "
                  "the workspace's artifacts.", "",
                  "| check | result |", "|---|---|"]
        lines += [f"| {name} | {'pass' if ok else 'FAIL'} |"
                  for name, ok in faults["checks"].items()]
        lines += ["", f"Neo4j stopped mid-run: {out['readers']} readers (recommendations) and "
                  f"{out['writers']} writers (events) ran; Neo4j was stopped at "
                  f"{tl['stopped']} s, {out['burst']} more events arrived at once at "
                  f"{tl['burst']} s, Neo4j was restarted (same port and data) from "
                  f"{tl['restarting']} s and answered again at {tl['restarted']} s; the "
                  f"stream ended at {tl['stream_end']} s.", "",
                  "| reads (recommendations) | n | p50 ms | p99 ms | max ms |",
                  "|---|---:|---:|---:|---:|"]
        for name, key in (("Neo4j up", "before"), ("Neo4j down", "while_down"),
                          ("first 30 s of the burst", "during_burst_30s"),
                          ("after restart", "after_restart")):
            x = r[key]
            lines.append(f"| {name} | {x['n']} | {x.get('p50_ms', '-')} | "
                         f"{x.get('p99_ms', '-')} | {x.get('max_ms', '-')} |")
        s503 = w["seconds_to_503"]
        lines += ["", f"Writes: {w['logical_events']} distinct events, {w['attempts']} "
                  "attempts; statuses by the phase each was sent in (a write sent while Neo4j "
                  "was up can still be refused when the stop catches it in flight; one sent "
                  "while it was down lands when Neo4j is back before the driver gives up) "
                  f"{w['statuses_by_phase']}. "
                  f"{w['refused_503']} answered 503 after {s503.get('p50_ms', 0) / 1000:.1f} s "
                  f"median ({s503.get('max_ms', 0) / 1000:.1f} s max: the driver retries for "
                  "30 s plus one back-off before giving up), e.g. "
                  f"\"{(w['example_503'] or '')[:110]}...\"; first 201 "
                  f"{w['first_201_after_restart_s']} s after the restart. "
                  f"{w['retried_after_outage']} events never answered 201 were posted once "
                  f"more; then 201s: {w['accepted_201']}, in Neo4j: {w['stored_total']} "
                  f"(lost {len(w['lost'])}, doubled {len(w['doubled'])}).", ""]
        mh = faults["malformed_and_huge"]
        lines += [f"Malformed bodies (status each): {mh['malformed']}; a body that is not "
                  f"UTF-8: {mh['not_utf8']['status']} {mh['not_utf8']['body']}.", "",
                  "| huge body | status | s | /health after | recommendations after | "
                  "server RSS MB before -> after |", "|---|---:|---:|---:|---:|---|"]
        for name, h in mh["huge"].items():
            lines.append(f"| {name} | {h['status']} | {h['seconds']} | {h['health_after']} | "
                         f"{h['recommendations_after']} | {h['server_rss_mb_before']} -> "
                         f"{h['server_rss_mb_after']} |")
        un, one = faults["unknown_ids"], faults["one_user"]
        lines += ["", f"Unknown ids: {un['statuses']}; User node created: "
                  f"{un['user_node_created']}.", "",
                  f"One user, {one['events']} events at once: statuses {one['statuses']} in "
                  f"{one['seconds']} s, new_user true {one['new_user_true']}x, stored count "
                  f"total {one['stored_total']}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml100k-kg")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="the data set's folder (default: its importer's, ../shared/data)")
    parser.add_argument("--workspace", type=Path, default=None,
                        help="reused when trained (default benchmarks/.work/serve/DATASET)")
    parser.add_argument("--requests", type=int, default=800,
                        help="requests per endpoint and concurrency (default 800)")
    parser.add_argument("--duration", type=float, default=25,
                        help="most seconds per endpoint and concurrency (default 25)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--rates", type=float, nargs="+",
                        default=[0.25, 0.5, 0.6, 0.7, 0.8, 0.9],
                        help="open-loop rates as shares of the closed-loop maximum")
    parser.add_argument("--paced-seconds", type=float, default=8)
    parser.add_argument("--blocks", type=int, default=10, help="overhead: blocks per side")
    parser.add_argument("--block-size", type=int, default=30, help="overhead: calls a block")
    parser.add_argument("--no-load", action="store_true", help="skip the load part")
    parser.add_argument("--no-faults", action="store_true", help="skip the Neo4j fault part")
    parser.add_argument("--readers", type=int, default=4)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--burst", type=int, default=48,
                        help="events posted at once while Neo4j is down (default 48)")
    parser.add_argument("--before-s", type=float, default=8)
    parser.add_argument("--outage-s", type=float, default=40,
                        help="least seconds Neo4j stays down (longer until a 503 is seen)")
    parser.add_argument("--after-s", type=float, default=10)
    parser.add_argument("--workers", type=int, default=1,
                        help="`shopgraph serve --workers` for the load part (default 1)")
    parser.add_argument("--out", default="serve")
    args = parser.parse_args()
    started = time.perf_counter()
    workspace = args.workspace or WORK / args.dataset
    results: dict[str, Any] = {
        "machine": machine_line(),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "command": "python benchmarks/serve.py " + " ".join(sys.argv[1:]),
        "dataset": args.dataset, "workers": args.workers,
        "workspace": prepare_workspace(args.dataset, workspace, args.data_dir),
    }

    def save() -> None:
        results["total_s"] = time.perf_counter() - started
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{args.out}.json").write_text(json.dumps(results, indent=1, default=str))
        (RESULTS / f"{args.out}.md").write_text(markdown(results))

    if not args.no_load:
        results["load"] = run_load(args, workspace)
        save()
    if not args.no_faults:
        results["faults"] = run_faults(args, workspace)
    save()
    print(markdown(results))


if __name__ == "__main__":
    main()
