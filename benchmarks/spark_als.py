"""Spark MLlib ALS against implicit's ALS on ml100k-kg: same split, same inputs, same factors.

Why: `shopgraph train --engine spark` must give the hybrid an ALS source as good as the
`implicit` one (Recall@20 within 5 %) before anyone moves factorization to a cluster.

Both engines fit `ALSRecommender` with the same parameters on the same matrix and are
scored by the project's own evaluation (`recommender.experiment.load_split`,
`recommender.evaluation.evaluate`: all items ranked, training items excluded):

- ``source``: the hybrid's ALS source as `shopgraph train` builds it: `HybridConfig().als`
  on the weighted history (recency half-life and kind weights, `history_matrix`), which is
  also the history the hybrid is scored with;
- ``baseline``: the ALS row of `shopgraph evaluate` (`experiment.BASELINES["als"]`, binary
  history).

Each engine is fitted once per seed; fit seconds exclude Spark's session start (the JVM,
paid once per process), which is reported on its own. Spark runs in local mode on all cores
(`local[N]`), implicit with one thread per core as well.
Writes benchmarks/results/spark_als.json and spark_als.md.

    python benchmarks/spark_als.py [--seeds 0 1 2] [--threads 2] [--configs source baseline]

The JSON and markdown are rewritten after each input, so an interrupted run keeps its
finished inputs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine import describe_machine  # noqa: E402

from recommender.als import ALSRecommender  # noqa: E402
from recommender.evaluation import evaluate  # noqa: E402
from recommender.experiment import BASELINES, load_split  # noqa: E402
from recommender.history import history_matrix  # noqa: E402
from recommender.spark_als import spark_reg_param, spark_session  # noqa: E402
from recommender.training import HybridConfig  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
K = 20
TOLERANCE = 0.05


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--configs", nargs="+", default=["source", "baseline"],
                        choices=["source", "baseline"])
    parser.add_argument("--out", type=Path, default=RESULTS / "spark_als")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    machine = describe_machine()

    started = time.perf_counter()
    split = load_split("ml100k-kg", progress=False)
    train, test = split.matrices()
    hybrid = HybridConfig(half_life=split.half_life)
    inputs = {
        "source": (dict(hybrid.als), history_matrix(
            split.train, split.shape, hybrid.half_life, kind_weights=hybrid.kind_weights),
            "HybridConfig().als on the weighted history (the hybrid's ALS source)"),
        "baseline": (dict(BASELINES["als"]), train,
                     "experiment.BASELINES['als'] on the binary history (`shopgraph evaluate`)"),
    }
    print(f"ml100k-kg split in {time.perf_counter() - started:.1f} s: {split.shape[0]} users "
          f"x {split.shape[1]} items, {train.nnz:,} train / {test.nnz:,} test", flush=True)

    t0 = time.perf_counter()
    session = spark_session(threads=args.threads)
    spark_start_s = time.perf_counter() - t0
    report: dict = {
        "machine": machine, "command": "python " + " ".join(sys.argv),
        "dataset": "ml100k-kg", "split": split.description, "k": K, "tolerance": TOLERANCE,
        "spark": {"version": session.version, "master": session.sparkContext.master,
                  "session_start_s": round(spark_start_s, 1)},
        "threads": args.threads, "seeds": args.seeds, "configs": {}}
    for name in args.configs:
        params, matrix, description = inputs[name]
        runs: dict[str, list[dict]] = {"implicit": [], "spark": []}
        for seed in args.seeds:
            for engine in ("implicit", "spark"):
                model = ALSRecommender(engine=engine, num_threads=args.threads, seed=seed,
                                       **params)
                t0 = time.perf_counter()
                model.fit(matrix)
                fit_s = time.perf_counter() - t0
                metrics = evaluate(model, matrix, test, k=K)
                runs[engine].append({"seed": seed, "fit_s": round(fit_s, 2),
                                     f"recall@{K}": metrics[f"recall@{K}"],
                                     f"ndcg@{K}": metrics[f"ndcg@{K}"]})
                print(f"{name} seed {seed} {engine}: Recall@{K} {metrics[f'recall@{K}']:.4f} "
                      f"NDCG@{K} {metrics[f'ndcg@{K}']:.4f} fit {fit_s:.1f} s", flush=True)
        summary = {engine: {key: float(np.mean([r[key] for r in rs]))
                            for key in ("fit_s", f"recall@{K}", f"ndcg@{K}")}
                   for engine, rs in runs.items()}
        for engine, rs in runs.items():
            summary[engine][f"recall@{K}_std"] = float(np.std([r[f"recall@{K}"] for r in rs]))
        gap = summary["spark"][f"recall@{K}"] / summary["implicit"][f"recall@{K}"] - 1.0
        report["configs"][name] = {
            "description": description, "params": params,
            "spark_reg_param": spark_reg_param(params["regularization"], matrix),
            "runs": runs, "mean": summary, "recall_gap": gap,
            "within_tolerance": bool(abs(gap) <= TOLERANCE)}
        print(f"{name}: Spark Recall@{K} {100 * gap:+.1f} % vs implicit "
              f"({'within' if abs(gap) <= TOLERANCE else 'OUTSIDE'} {TOLERANCE:.0%})", flush=True)
        # written after each input: a slow Spark fit interrupted later keeps what it measured
        report["seconds"] = round(time.perf_counter() - started, 1)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(report, indent=1))
        args.out.with_suffix(".md").write_text(markdown(report))
        print(f"wrote {args.out.with_suffix('.json')} and .md", flush=True)


def markdown(report: dict) -> str:
    k = report["k"]
    lines = [
        "# Spark MLlib ALS vs implicit ALS on ml100k-kg", "",
        f"Machine: {report['machine']}.", "",
        f"Command: `{report['command']}`", "",
        f"Split: {report['split']}. Metrics from `recommender.evaluation.evaluate` (all items "
        f"ranked, training items excluded), mean over seeds {report['seeds']}.", "",
        f"Spark {report['spark']['version']} on `{report['spark']['master']}`; the session "
        f"(JVM) started in {report['spark']['session_start_s']} s, once per process, not "
        "counted in the fit times. implicit ran with "
        f"{report['threads']} threads.", "",
        f"| input | engine | Recall@{k}{' (std over seeds)' if len(report['seeds']) > 1 else ''}"
        f" | NDCG@{k} | fit s | Spark Recall gap |",
        "|---|---|---:|---:|---:|---:|"]
    for name, entry in report["configs"].items():
        for engine in ("implicit", "spark"):
            m = entry["mean"][engine]
            gap = (f"{100 * entry['recall_gap']:+.1f} % "
                   f"({'within' if entry['within_tolerance'] else 'outside'} "
                   f"{report['tolerance']:.0%})" if engine == "spark" else "")
            std = f" ({m[f'recall@{k}_std']:.4f})" if len(report["seeds"]) > 1 else ""
            lines.append(f"| {name} | {engine} | {m[f'recall@{k}']:.4f}{std} | "
                         f"{m[f'ndcg@{k}']:.4f} | {m['fit_s']:.1f} | {gap} |")
    lines += ["", "Inputs:"]
    for name, entry in report["configs"].items():
        lines.append(f"- `{name}`: {entry['description']}; params {entry['params']}; "
                     f"Spark regParam {entry['spark_reg_param']:.4g} (lambda / mean "
                     "interactions per user: Spark regularises each row by regParam x its "
                     "interaction count).")
    lines += ["", f"Benchmark time so far {report['seconds']} s (inputs done: "
              f"{', '.join(report['configs'])}).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
