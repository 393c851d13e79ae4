"""Cost-growth benchmark: every stage of the product on synthetic shops of growing size.

Why: the figures elsewhere are for one data set's size; a merchant needs to know how each
stage grows with their shop and which one breaks first on their machine. For each size
(events; products and users grow with it, see benchmarks/synthetic_shop.py) every stage runs
in its own child process, so its peak memory (the child's VmHWM, plus the Neo4j
JVM's sampled RSS for the Neo4j load) is its own. A stage past its time limit, or one whose
process tree passes the memory cap, is killed and recorded as broke with the reason.

Stages (each through the project's public functions, on the artifacts of the earlier ones):
load_embedded (`shopgraph load generic --store embedded`), load_neo4j (the same CLI against a
real Neo4j 5.26 from tests/neo4j_server), export (export_graph + the training matrix), als
(ALSRecommender with HybridConfig's defaults), graph_filter (GraphFilterRecommender with
HybridConfig's defaults, KG rows included), faiss (VectorIndex.build with its default kind over
the ALS item factors, recall@20 vs exact search on 200 sampled queries), lexical (build_lexical),
train (train_recommender: the hybrid, tuned then refitted, no GNN — `shopgraph train
--no-content --no-gnn`), recommend / related / search (in-process services over the trained
workspace: 500 seeded users, 200 products, 200 two-word queries from the title vocabulary).

    python benchmarks/scale.py --sizes 1M 3M 10M [--stages ...] [--seed 0] [--skip-neo4j]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# after ROOT: benchmarks/encoders.py must not shadow the encoders package
sys.path.append(str(ROOT / "benchmarks"))

from synthetic_shop import generate, parse_size, vocabulary  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
PLOTS = RESULTS / "scale"
STAGES = ["load_embedded", "load_neo4j", "export", "als", "graph_filter", "faiss", "lexical",
          "train", "recommend", "related", "search"]
NEEDS = {"export": "load_embedded", "als": "export", "graph_filter": "export", "faiss": "als",
         "lexical": "load_embedded", "train": "lexical", "recommend": "train",
         "related": "train", "search": "lexical"}
TARGET_GIB = 24.0  # the machine the verdict is for: 24 GiB, 2 cores
TIME_BUDGET_S = 3600.0  # a stage slower than an hour "breaks" a nightly retrain on it
MEMORY_CAP_GIB = 21.0  # kill a stage here: this machine has 23 GiB and other jobs


def _label(n: int) -> str:
    return f"{n / 1e6:g}M" if n >= 1_000_000 else f"{n / 1e3:g}k"


# ------------------------------------------------------------------ the stages (child side)
def _store(work: Path):  # noqa: ANN202 - the embedded store of this size's workspace
    from kg.embedded import EmbeddedStore

    return EmbeddedStore(work / "workspace" / "graph")


def _timed(fn) -> tuple[float, object]:  # noqa: ANN001
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def stage_load_embedded(work: Path, data: Path, seed: int) -> dict:
    from api.cli import main as cli

    shutil.rmtree(work / "workspace", ignore_errors=True)
    seconds, rc = _timed(lambda: cli(["load", "generic", "--data-dir", str(data), "--store",
                                      "embedded", "--workspace", str(work / "workspace"),
                                      "--quiet", "--json"]))
    if rc != 0:
        raise RuntimeError(f"shopgraph load exited {rc}")
    db = work / "workspace" / "graph" / "graph.sqlite"
    return {"seconds": seconds, "disk_mib": round(db.stat().st_size / 2**20, 1)}


def stage_load_neo4j(work: Path, data: Path, seed: int) -> dict:
    from ingest import PeakRss  # benchmarks/ingest.py

    from api.cli import main as cli
    from tests.neo4j_server import start_neo4j

    with tempfile.TemporaryDirectory(dir=work) as tmp:
        server = start_neo4j(Path(tmp), heap="4g", pagecache_mb=2048)
        jvm = PeakRss(server.process.pid)
        os.environ.update({"NEO4J_URI": server.uri, "NEO4J_USER": server.user,
                           "NEO4J_PASSWORD": server.password})
        try:
            seconds, rc = _timed(lambda: cli(["load", "generic", "--data-dir", str(data),
                                              "--store", "neo4j", "--quiet", "--json"]))
        finally:
            jvm_peak = jvm.stop()
            server.stop()
    if rc != 0:
        raise RuntimeError(f"shopgraph load --store neo4j exited {rc}")
    return {"seconds": seconds, "jvm_peak_mib": round(jvm_peak / 2**20),
            "note": "JVM heap 4g, page cache 2 GiB"}


def stage_export(work: Path, data: Path, seed: int) -> dict:
    import scipy.sparse as sp

    from kg.export import export_graph
    from recommender.graph_paths import product_links
    from recommender.history import history_matrix
    from recommender.training import HybridConfig, interaction_frame

    config = HybridConfig()

    def run() -> tuple:
        with _store(work) as store:
            snapshot = export_graph(store)
        frame = interaction_frame(snapshot)
        shape = (len(snapshot.ids["User"]), len(snapshot.ids["Product"]))
        matrix = history_matrix(frame, shape, config.half_life, kind_weights=config.kind_weights)
        links = product_links(snapshot)
        incidence = sp.hstack([f.incidence for f in links.values()]).tocsr()
        return snapshot, matrix, incidence

    seconds, (snapshot, matrix, incidence) = _timed(run)
    sp.save_npz(work / "matrix.npz", matrix.tocsr())
    sp.save_npz(work / "links.npz", incidence)
    (work / "product_ids.json").write_text(json.dumps(snapshot.ids["Product"]))
    return {"seconds": seconds, "users": matrix.shape[0], "products": matrix.shape[1],
            "pairs": int(matrix.nnz), "kg_nodes": int(incidence.shape[1])}


def stage_als(work: Path, data: Path, seed: int) -> dict:
    import numpy as np
    import scipy.sparse as sp

    from recommender.als import ALSRecommender
    from recommender.training import HybridConfig

    config = HybridConfig()
    matrix = sp.load_npz(work / "matrix.npz").tocsr()
    model = ALSRecommender(num_threads=config.threads, engine=config.als_engine, **config.als)
    seconds, _ = _timed(lambda: model.fit(matrix))
    items = np.asarray(model.model.item_factors)
    items = items.to_numpy() if hasattr(items, "to_numpy") else items
    np.save(work / "item_factors.npy", np.ascontiguousarray(items, dtype=np.float32))
    return {"seconds": seconds, "factors": config.als["factors"],
            "iterations": config.als["iterations"], "threads": config.threads}


def stage_graph_filter(work: Path, data: Path, seed: int) -> dict:
    import scipy.sparse as sp

    from recommender.graph_filter import GraphFilterRecommender
    from recommender.training import HybridConfig

    matrix = sp.load_npz(work / "matrix.npz").tocsr()
    links = sp.load_npz(work / "links.npz").tocsr()
    model = GraphFilterRecommender(**HybridConfig().graph_filter)
    seconds, _ = _timed(lambda: model.fit(matrix, item_links=links))
    return {"seconds": seconds, "graph_rows": int(model.graph.shape[0]),
            "graph_nnz": int(model.graph.nnz)}


def stage_faiss(work: Path, data: Path, seed: int) -> dict:
    import numpy as np

    from recommender.index import VectorIndex

    vectors = np.load(work / "item_factors.npy")
    ids = json.loads((work / "product_ids.json").read_text())
    seconds, index = _timed(lambda: VectorIndex.build(ids, vectors))
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(ids), size=min(200, len(ids)), replace=False)
    queries = vectors[rows]
    k = min(20, len(ids))
    search_s, (_, approx) = _timed(lambda: index.search_positions(queries, k))
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :k]
    recall = float(np.mean([len(set(a.tolist()) & set(e.tolist())) / k
                            for a, e in zip(approx, exact, strict=True)]))
    return {"seconds": seconds, "kind": index.kind, "params": index.params,
            "recall_at_20": round(recall, 4), "search_200_s": round(search_s, 4),
            "vectors": f"ALS item factors, {vectors.shape[0]:,} x {vectors.shape[1]}"}


def stage_lexical(work: Path, data: Path, seed: int) -> dict:
    from recommender.content import build_lexical

    with _store(work) as store:
        seconds, _ = _timed(lambda: build_lexical(store, work / "workspace"))
    return {"seconds": seconds}


def stage_train(work: Path, data: Path, seed: int) -> dict:
    from recommender.training import HybridConfig, train_recommender

    config = HybridConfig()
    config.gnn = None
    with _store(work) as store:
        seconds, summary = _timed(lambda: train_recommender(
            store, work / "workspace", config, log=lambda m: print(m, file=sys.stderr)))
    return {"seconds": seconds, "weights": summary["tuning"]["weights"]}


def _latencies(calls: list) -> dict:  # noqa: ANN001 - zero-argument callables
    import numpy as np

    for call in calls[:5]:  # warm-up
        call()
    times = []
    for call in calls:
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    ms = np.array(times) * 1e3
    return {"seconds": float(ms.sum() / 1e3), "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2), "calls": len(calls)}


def stage_recommend(work: Path, data: Path, seed: int) -> dict:
    import numpy as np

    from recommender.service import RecommendationService

    load_s, service = _timed(lambda: RecommendationService.load(work / "workspace"))
    users = json.loads((work / "users_sample.json").read_text()) if (
        work / "users_sample.json").is_file() else None
    if users is None:
        ids = list(service.user_ids)
        rng = np.random.default_rng(seed)
        users = [ids[i] for i in rng.choice(len(ids), size=min(500, len(ids)), replace=False)]
    out = _latencies([lambda u=u: service.recommend(u, k=10) for u in users])
    return {**out, "load_s": round(load_s, 2)}


def stage_related(work: Path, data: Path, seed: int) -> dict:
    import numpy as np

    from recommender.service import RecommendationService

    load_s, service = _timed(lambda: RecommendationService.load(work / "workspace"))
    ids = json.loads((work / "product_ids.json").read_text())
    rng = np.random.default_rng(seed + 1)
    products = [ids[i] for i in rng.choice(len(ids), size=min(200, len(ids)), replace=False)]
    out = _latencies([lambda p=p: service.related(p, k=10) for p in products])
    return {**out, "load_s": round(load_s, 2)}


def stage_search(work: Path, data: Path, seed: int) -> dict:
    import numpy as np

    from recommender.search import ProductSearch

    load_s, search = _timed(lambda: ProductSearch.load(work / "workspace"))
    vocab = vocabulary(seed)
    rng = np.random.default_rng(seed + 2)
    queries = [" ".join(rng.choice(vocab[:300], size=2, replace=False)) for _ in range(200)]
    out = _latencies([lambda q=q: search.search(q, k=10) for q in queries])
    return {**out, "load_s": round(load_s, 2)}


def _own_peak_mib() -> float:
    """This process's peak RSS since exec (VmHWM). Not ru_maxrss: Linux carries a forked
    child's maxrss over from its parent, so a small stage would report the parent's size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("no VmHWM in /proc/self/status")


# ------------------------------------------------------------------ the parent side
def _tree_rss(proc) -> int:  # noqa: ANN001 - psutil.Process
    import psutil

    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_stage(stage: str, work: Path, data: Path, seed: int, limit_s: float) -> dict:
    """Run one stage in a child; wall time, peak RSS and a broke reason when it failed."""
    import psutil

    log = work / f"{stage}.log"
    with log.open("w") as err:
        child = subprocess.Popen([sys.executable, __file__, "--child", stage, "--work",
                                  str(work), "--data", str(data), "--seed", str(seed)],
                                 stdout=subprocess.PIPE, stderr=err, text=True)
        proc = psutil.Process(child.pid)
        state = {"peak": 0, "reason": None}
        stop = threading.Event()

        def watch() -> None:
            started = time.monotonic()
            while not stop.is_set():
                try:
                    rss = _tree_rss(proc)
                except psutil.Error:
                    return
                state["peak"] = max(state["peak"], rss)
                if rss > MEMORY_CAP_GIB * 2**30:
                    state["reason"] = f"memory past {MEMORY_CAP_GIB:g} GiB (killed)"
                elif time.monotonic() - started > limit_s:
                    state["reason"] = f"ran past the {limit_s / 60:.0f} min limit (killed)"
                if state["reason"]:
                    for p in [*proc.children(recursive=True), proc]:
                        try:
                            p.kill()
                        except psutil.Error:
                            pass
                    return
                time.sleep(0.5)

        watcher = threading.Thread(target=watch, daemon=True)
        started = time.perf_counter()
        watcher.start()
        stdout = child.stdout.read() if child.stdout else ""
        child.wait()
        wall = time.perf_counter() - started
        stop.set()
        watcher.join()
    # sampled every 0.5 s; replaced by the child's own VmHWM when it finishes
    peak_mib = state["peak"] / 2**20
    row = {"stage": stage, "wall_s": round(wall, 2), "peak_mib": round(peak_mib)}
    if state["reason"] or child.returncode != 0:
        tail = log.read_text()[-600:].strip().splitlines()
        row["broke"] = state["reason"] or (
            "out of memory (killed by signal 9)" if child.returncode == -9
            else f"exit {child.returncode}: {tail[-1] if tail else ''}")
        return row
    result = json.loads(stdout.strip().splitlines()[-1])
    row.update(result)
    row["seconds"] = round(result["seconds"], 3)
    row["sampled_peak_mib"] = round(peak_mib)
    peak_mib = result["vm_hwm_mib"]
    row["peak_mib"] = round(peak_mib)
    if "jvm_peak_mib" in result:
        row["peak_mib"] = round(peak_mib + result["jvm_peak_mib"])
        row["python_peak_mib"] = round(peak_mib)
    return row


def fit_exponent(sizes: list[float], values: list[float]) -> float | None:
    """b in value ~ a * n^b, least squares on log-log (None with fewer than two points)."""
    import numpy as np

    pairs = [(s, v) for s, v in zip(sizes, values, strict=True) if v and v > 0]
    if len(pairs) < 2:
        return None
    x, y = np.log([p[0] for p in pairs]), np.log([p[1] for p in pairs])
    return float(np.polyfit(x, y, 1)[0])


def extrapolate(sizes: list[float], values: list[float], n: float) -> float | None:
    import numpy as np

    pairs = [(s, v) for s, v in zip(sizes, values, strict=True) if v and v > 0]
    if len(pairs) < 2:
        return None
    b, a = np.polyfit(np.log([p[0] for p in pairs]), np.log([p[1] for p in pairs]), 1)
    return float(np.exp(a + b * np.log(n)))


def time_of(row: dict) -> float | None:
    """The figure a stage is judged by: p50 for the serving stages, the work's seconds else."""
    if "broke" in row:
        return None
    return row.get("p50_ms", row.get("seconds"))


def summarise(report: dict) -> dict:
    """Per stage: fitted exponents, extrapolations to 30M/100M/300M, and the verdict."""
    out: dict = {}
    for stage in report["stages"]:
        rows = [(r["n"], r) for r in report["runs"] if r["stage"] == stage and "broke" not in r]
        sizes = [n for n, _ in rows]
        times = [time_of(r) for _, r in rows]
        mem = [r["peak_mib"] for _, r in rows]
        entry = {"time_exponent": fit_exponent(sizes, times),
                 "memory_exponent": fit_exponent(sizes, mem), "extrapolated": {}}
        for n in (30e6, 100e6, 300e6):
            t, m = extrapolate(sizes, times, n), extrapolate(sizes, mem, n)
            entry["extrapolated"][_label(int(n))] = {
                "time": None if t is None else round(t, 2),
                "peak_mib": None if m is None else round(m)}
        # where the fitted memory line crosses 24 GiB, and the time line the time budget
        if entry["memory_exponent"] and entry["memory_exponent"] > 0.05:
            entry["n_at_24gib"] = _crossing(sizes, mem, TARGET_GIB * 1024)
        if entry["time_exponent"] and entry["time_exponent"] > 0.05 and stage not in (
                "recommend", "related", "search"):
            entry["n_at_time_budget"] = _crossing(sizes, times, TIME_BUDGET_S)
        out[stage] = entry
    return out


def _crossing(sizes: list[float], values: list[float], level: float) -> float | None:
    import numpy as np

    pairs = [(s, v) for s, v in zip(sizes, values, strict=True) if v and v > 0]
    if len(pairs) < 2:
        return None
    b, a = np.polyfit(np.log([p[0] for p in pairs]), np.log([p[1] for p in pairs]), 1)
    return float(np.exp((np.log(level) - a) / b)) if b > 0 else None


def verdict(report: dict, fits: dict) -> str:
    broke = [r for r in report["runs"] if "broke" in r and not r["broke"].startswith("not run")]
    candidates = []
    for stage, fit in fits.items():
        for key, what in (("n_at_24gib", "24 GiB of memory"),
                          ("n_at_time_budget", f"{TIME_BUDGET_S / 60:.0f} min")):
            if fit.get(key):
                candidates.append((fit[key], stage, what))
    text = []
    if broke:
        first = min(broke, key=lambda r: r["n"])
        text.append("Actually broke here: " + "; ".join(
            f"{r['stage']} at {_label(r['n'])} ({r['broke']})" for r in broke)
            + f". The first was {first['stage']} at {_label(first['n'])}.")
    if candidates:
        n, stage, what = min(candidates)
        text.append(f"Extrapolating the fitted lines, the first stage to break on a "
                    f"{TARGET_GIB:g} GiB, 2-core machine is **{stage}**, which reaches {what} "
                    f"at about {_label(int(n))} events; next: " + ", ".join(
                        f"{s} ({w}) at ~{_label(int(m))}" for m, s, w in sorted(candidates)[1:4])
                    + ".")
    return " ".join(text) or "No stage broke or is projected to break."


def plot(report: dict, fits: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    PLOTS.mkdir(parents=True, exist_ok=True)
    written = []
    for stage in report["stages"]:
        rows = [r for r in report["runs"] if r["stage"] == stage and "broke" not in r]
        if not rows:
            continue
        n = np.array([r["n"] for r in rows], dtype=float)
        fig, ax = plt.subplots(figsize=(5, 3.6))
        t = np.array([time_of(r) for r in rows], dtype=float)
        m = np.array([r["peak_mib"] for r in rows], dtype=float)
        unit = "p50 ms" if "p50_ms" in rows[0] else "s"
        ax.loglog(n, t, "o-", label=f"time ({unit}), b={_fmt(fits[stage]['time_exponent'])}")
        ax.loglog(n, m, "s--", label=f"peak MiB, b={_fmt(fits[stage]['memory_exponent'])}")
        for r in report["runs"]:
            if r["stage"] == stage and "broke" in r:
                ax.axvline(r["n"], color="red", lw=0.8)
                ax.text(r["n"], ax.get_ylim()[1], "broke", color="red", fontsize=7,
                        va="top", ha="right", rotation=90)
        ax.set_xlabel("interactions")
        ax.set_title(stage)
        ax.legend(fontsize=7)
        ax.grid(True, which="both", lw=0.3)
        fig.tight_layout()
        path = PLOTS / f"{stage}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(str(path.relative_to(RESULTS)))
    return written


def _load(row: dict) -> str:
    """The 1-min load average as the stage started: on a shared machine it moves the time."""
    load = row.get("load_average_before")
    return "" if load is None else f" (load {load:.1f})"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def markdown(report: dict, fits: dict, plots: list[str]) -> str:
    sizes = report["sizes"]
    lines = ["# Cost growth: every stage on synthetic shops of 1M-10M interactions", "",
             f"Machine: {report['machine']}.", "",
             f"Command: `{report['command']}`. Data: benchmarks/synthetic_shop.py (seed "
             f"{report['seed']}); Complete Journey's shape at "
             "products = n/25, users = n/400 (CJ itself: 1.47M lines, 92k products, 2.5k "
             "households). Each stage runs in its own process; peak = that process's max RSS "
             "(Neo4j: Python + the JVM's sampled RSS). Serving stages show p50 latency in the "
             "time column; their process peak includes loading the trained workspace. "
             "The load in brackets is the machine's 1-min load average as the stage started "
             "(2 cores shared with other jobs: above 2, the stage got less than a core).", "",
             "| size | products | users | distinct pairs |", "|---|---:|---:|---:|"]
    for n in sizes:
        shape = report["shapes"][str(n)]
        lines.append(f"| {_label(n)} | {shape['products']:,} | {shape['users']:,} "
                     f"| {shape['distinct_pairs']:,} |")
    lines += ["", "| stage | " + " | ".join(f"{_label(n)} time | {_label(n)} peak MiB"
                                           for n in sizes)
              + " | time exp. b | memory exp. b |",
              "|---|" + "---:|---:|" * len(sizes) + "---:|---:|"]
    for stage in report["stages"]:
        cells = []
        for n in sizes:
            row = next((r for r in report["runs"] if r["stage"] == stage and r["n"] == n),
                       None)
            if row is None:
                cells += ["not run", "-"]
            elif row.get("broke", "").startswith("not run"):
                cells += [row["broke"], "-"]
            elif "broke" in row:
                cells += [f"broke ({row['broke']}; {row['wall_s']:.0f} s)", f"{row['peak_mib']:,}"]
            elif "p50_ms" in row:
                cells += [f"p50 {row['p50_ms']} ms / p99 {row['p99_ms']} ms"
                          f"{_load(row)}", f"{row['peak_mib']:,}"]
            else:
                cells += [f"{row['seconds']:.1f} s{_load(row)}", f"{row['peak_mib']:,}"]
        fit = fits.get(stage, {})
        lines.append(f"| {stage} | " + " | ".join(cells)
                     + f" | {_fmt(fit.get('time_exponent'))} | "
                     f"{_fmt(fit.get('memory_exponent'))} |")
    faiss_rows = [r for r in report["runs"] if r["stage"] == "faiss" and "broke" not in r]
    if faiss_rows:
        lines += ["", "faiss index (VectorIndex.build, default kind) over the ALS item factors, "
                  "recall@20 vs exact inner-product search on 200 sampled item queries:", ""]
        for r in faiss_rows:
            lines.append(f"- {_label(r['n'])}: kind {r['kind']}, params {r['params']}, "
                         f"recall@20 {r['recall_at_20']}, 200 queries in {r['search_200_s']} s")
    lines += ["", "Extrapolated from the fitted lines (time in s, serving in p50 ms; peak MiB):",
              "", "| stage | 30M | 100M | 300M |", "|---|---:|---:|---:|"]
    for stage, fit in fits.items():
        cells = []
        for key in ("30M", "100M", "300M"):
            e = fit["extrapolated"][key]
            cells.append("-" if e["time"] is None else f"{e['time']:,.1f} / {e['peak_mib']:,}")
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    lines += ["", "## Verdict", "", verdict(report, fits), "",
              f"(A stage \"breaks\" when its process passes {TARGET_GIB:g} GiB or a batch stage "
              f"takes longer than {TIME_BUDGET_S / 60:.0f} min; with two points a fitted "
              "exponent is just the slope between them.)", ""]
    if report.get("notes"):
        lines += ["## Notes", ""] + [f"- {note}" for note in report["notes"]] + [""]
    lines += ["## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def write(report: dict) -> None:
    fits = summarise(report)
    report["fits"] = fits
    report["verdict"] = verdict(report, fits)
    plots = plot(report, fits)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "scale.json").write_text(json.dumps(report, indent=1, default=str))
    (RESULTS / "scale.md").write_text(markdown(report, fits, plots))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=parse_size,
                        default=[parse_size(s) for s in ("1M", "3M", "10M")])
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=STAGES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-neo4j", action="store_true")
    parser.add_argument("--work", type=Path,
                        default=Path(tempfile.gettempdir()) / "shopgraph_scale")
    parser.add_argument("--stage-limit-min", type=float, default=25.0)
    parser.add_argument("--deadline", default=None,
                        help="UTC HH:MM after which no stage may run (limits shrink to fit)")
    parser.add_argument("--merge", action="store_true",
                        help="keep earlier sizes' rows from results/scale.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = globals()[f"stage_{args.child}"](args.work, args.data, args.seed)
        result["vm_hwm_mib"] = _own_peak_mib()
        import resource  # CPU seconds, all threads: less moved by other jobs than wall time

        usage = resource.getrusage(resource.RUSAGE_SELF)
        result["cpu_s"] = round(usage.ru_utime + usage.ru_stime, 2)
        print(json.dumps(result, default=str))
        return
    from machine import describe_machine

    stages = [s for s in STAGES if s in args.stages
              and not (args.skip_neo4j and s == "load_neo4j")]
    report = {"machine": describe_machine(), "load_average_at_start": os.getloadavg(),
              "command": "python benchmarks/scale.py " + " ".join(sys.argv[1:]),
              "seed": args.seed, "sizes": [], "stages": stages, "shapes": {}, "runs": [],
              "notes": []}
    if args.merge and (RESULTS / "scale.json").is_file():
        old = json.loads((RESULTS / "scale.json").read_text())
        # keep every earlier row except those this run redoes (same size and stage)
        report["runs"] = [r for r in old["runs"]
                          if not (r["n"] in args.sizes and r["stage"] in stages)]
        report["shapes"] = old["shapes"]
        report["sizes"] = old["sizes"]
        report["notes"] = old.get("notes", [])
        report["stages"] = [s for s in STAGES if s in set(old["stages"]) | set(stages)]
        report["machine"] = old["machine"]
        report["later_runs"] = [*old.get("later_runs", []), {
            "command": report["command"], "machine": describe_machine()}]
        report["command"] = old["command"]
    deadline = None
    if args.deadline:
        hh, mm = (int(x) for x in args.deadline.split(":"))
        now = time.gmtime()
        deadline = time.time() + ((hh * 60 + mm) - (now.tm_hour * 60 + now.tm_min)) * 60 \
            - now.tm_sec
    for n in args.sizes:
        work = args.work / _label(n)
        data = work / "data"
        work.mkdir(parents=True, exist_ok=True)
        if not (data / "shape.json").is_file() and deadline is not None \
                and deadline - time.time() < 600:
            report["notes"].append(f"{_label(n)}: not run, fewer than 10 min were left "
                                   f"before the deadline {args.deadline} UTC")
            write(report)
            continue
        if not (data / "shape.json").is_file():
            started = time.perf_counter()
            info = generate(data, n, args.seed)
            print(f"{_label(n)}: generated in {time.perf_counter() - started:.0f} s: {info}",
                  file=sys.stderr)
        report["shapes"][str(n)] = json.loads((data / "shape.json").read_text())
        report["sizes"] = sorted(set(report["sizes"]) | {n})
        done: dict[str, bool] = {}
        for stage in stages:
            need = NEEDS.get(stage)
            if need and need not in done:  # run earlier (--merge): its row says if it finished
                done[need] = any(r["n"] == n and r["stage"] == need and "broke" not in r
                                 for r in report["runs"])
            if need and not done.get(need, False):
                row = {"stage": stage, "n": n, "wall_s": 0, "peak_mib": 0,
                       "broke": f"not run: {need} did not finish"}
                if need not in stages:
                    row["broke"] = f"not run: needs {need}"
            else:
                limit = args.stage_limit_min * 60
                if deadline is not None:
                    limit = min(limit, deadline - time.time())
                if limit < 30:
                    row = {"stage": stage, "n": n, "wall_s": 0, "peak_mib": 0,
                           "broke": "not run: no time left before the deadline"}
                else:
                    print(f"{_label(n)} {stage} (limit {limit / 60:.1f} min, load "
                          f"{os.getloadavg()[0]:.1f}) ...", file=sys.stderr, flush=True)
                    row = {"n": n, **run_stage(stage, work, data, args.seed, limit),
                           "load_average_before": round(os.getloadavg()[0], 2)}
            done[stage] = "broke" not in row
            print(f"  {json.dumps(row, default=str)}", file=sys.stderr, flush=True)
            report["runs"] = [r for r in report["runs"]
                              if not (r["n"] == n and r["stage"] == stage)] + [row]
            write(report)
    write(report)
    print((RESULTS / "scale.md").read_text())


if __name__ == "__main__":
    main()
