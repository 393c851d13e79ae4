"""Every recommender side by side, one split per data set, one run: the hybrid's scorecard.

For each data set (`recommender/experiment.py` defines its split) this fits popularity,
ItemKNN, BPR-MF, ALS, the GNN and the hybrid, and scores them with the project's metric code
(all items ranked, training items excluded): Recall/NDCG/Precision/HitRate/MRR/Coverage@20,
fit time, seconds per epoch, peak RSS during the fit and one-user recommendation latency.

- ml100k-kg also runs RecBole 1.2.1's BPR, LightGCN, KGAT and KGIN on the identical split
  (`benchmarks/recbole_peers.py`, in its own virtual environment: `--recbole-python`), their
  top-50 lists scored by the same metric code, and the ALS overhead check (ALSRecommender vs
  implicit called directly, alternating in one process).
- gowalla needs hundreds of GNN epochs; with `--gowalla-gnn DIR` the GNN's embeddings come
  from `benchmarks/gowalla_gnn.py` run on a GPU machine (same split; `fit` model for tuning,
  `full` model for the test), every other model is fitted here.
- completejourney is simulated data (84.51°); its GNN is capped at `--cj-gnn-epochs`.

    python benchmarks/recommend.py [--datasets ml100k-kg gowalla completejourney]
        [--recbole-python /root/recbole-venv/bin/python] [--gowalla-gnn DIR]

Writes benchmarks/results/recommend.json and recommend.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import implicit  # noqa: E402, F401  (loaded before the BLAS limit, see recommend_peers.py)
import numpy as np  # noqa: E402
import scipy.linalg  # noqa: E402, F401
from threadpoolctl import threadpool_limits  # noqa: E402

from benchmarks.machine import describe_machine  # noqa: E402
from recommender.experiment import (  # noqa: E402
    BASELINES,
    MODELS,
    load_split,
    markdown_table,
    run_models,
)
from recommender.training import HybridConfig  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def gowalla_gnn(directory: Path) -> dict:
    """The GPU-trained GNNs (fit, full) as fitted GraphRecommenders, plus their reports."""
    from recommender.gnn import GraphRecommender

    models, reports = [], {}
    for phase in ("fit", "full"):
        model = GraphRecommender.from_embeddings(
            np.load(directory / f"{phase}_users.npy"), np.load(directory / f"{phase}_items.npy"),
            np.load(directory / f"{phase}_active.npy"))
        report = json.loads((directory / f"{phase}.json").read_text())
        model.epoch_seconds = [report["epoch_s_median"]] * report["epochs_run"]
        models.append(model)
        reports[phase] = report
    return {"pair": tuple(models), "reports": reports}


def machine() -> str:
    return describe_machine("models on 1 thread")


def run_dataset(name: str, args: argparse.Namespace) -> dict:
    split = load_split(name)
    config = HybridConfig(half_life=split.half_life)
    prefitted, extra = None, {}
    if name == "gowalla" and args.gowalla_gnn:
        gnn = gowalla_gnn(args.gowalla_gnn)
        prefitted = {"gnn": gnn["pair"]}
        extra["gnn_trained_on"] = {p: {k: r[k] for k in ("device", "epochs_run",
                                                        "epoch_s_median", "train_s",
                                                        "best_epoch", "config")}
                                   for p, r in gnn["reports"].items()}
    if name == "completejourney" and config.gnn is not None:
        config.gnn = ({**config.gnn, "epochs": args.cj_gnn_epochs} if args.cj_gnn_epochs
                      else None)  # 0: no GNN (CPU time), said in the table's notes
    models = [m for m in MODELS if not (m == "gnn" and (
        (name == "gowalla" and not prefitted) or config.gnn is None))]
    report = run_models(split, models, config, prefitted=prefitted,
                        log=lambda m: print(m, file=sys.stderr, flush=True))
    report.update(extra)
    if name == "ml100k-kg" and args.recbole_python:
        from benchmarks.recbole_peers import markdown as recbole_markdown
        from benchmarks.recbole_peers import run as run_recbole

        print("ml100k-kg: RecBole peers ...", file=sys.stderr, flush=True)
        recbole = run_recbole(Path(args.recbole_python), ROOT / "benchmarks" / ".work" /
                              "recbole", args.recbole_models, {})
        report["recbole"] = {"source": "this run", "report": recbole,
                             "markdown": recbole_markdown(recbole)}
    elif name == "ml100k-kg" and (RESULTS / "recbole_ml100k.md").is_file():
        # RecBole needs its own venv and about an hour: reuse its last recorded run
        report["recbole"] = {"source": "benchmarks/results/recbole_ml100k.md (separate run, "
                             "identical split, same metric code)",
                             "markdown": (RESULTS / "recbole_ml100k.md").read_text()}
    if name == "ml100k-kg" and not args.skip_overhead:
        from benchmarks.recommend_peers import als_overhead

        train, _ = split.matrices()
        report["als_overhead"] = als_overhead(BASELINES["als"], 1, train, args.reps)
    return report


def markdown(results: dict) -> str:
    lines = ["# Recommenders side by side", "", f"Machine: {results['machine']}.",
             f"Command: `{results['command']}`. Total {results['total_s']:.0f} s.", ""]
    for name, report in results["datasets"].items():
        lines += [f"## {name}", "", f"Split: {report['split']} ({report['train']:,} train / "
                  f"{report['test']:,} test interactions, {report['shape'][0]:,} users x "
                  f"{report['shape'][1]:,} items).", ""]
        lines += [f"Note: {n}" for n in report.get("notes", [])]
        lines += [markdown_table(report), ""]
        hybrid = report["models"].get("hybrid")
        if hybrid:
            weights = ", ".join(f"{k} {v:g}" for k, v in hybrid["weights"].items() if v)
            lines.append(f"Hybrid blend weights (tuned on validation): {weights}.")
        if "gnn_trained_on" in report:
            full = report["gnn_trained_on"]["full"]
            lines.append(f"GNN trained on {full['device']} ({full['epochs_run']} epochs, "
                         f"{full['epoch_s_median']:.2f} s/epoch, time-boxed; embeddings "
                         "scored here).")
        if "recbole" in report:
            lines += ["", "RecBole 1.2.1 on the identical split, scored by the same code "
                      f"({report['recbole']['source']}):", "", report["recbole"]["markdown"]]
        if "als_overhead" in report:
            o = report["als_overhead"]
            lines += ["", f"ALS overhead: ALSRecommender {o['wrapper_median_s']} s vs implicit "
                      f"directly {o['direct_median_s']} s (median of {o['reps']} alternating "
                      f"fits): ratio {o['ratio_of_medians']}, median paired ratio "
                      f"{o['median_pair_ratio']}; identical factors: {o['identical_factors']}."]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["ml100k-kg", "gowalla",
                                                         "completejourney"])
    parser.add_argument("--recbole-python", default=None)
    parser.add_argument("--recbole-models", nargs="+", default=["BPR", "LightGCN", "KGAT",
                                                               "KGIN"])
    parser.add_argument("--gowalla-gnn", type=Path, default=None)
    parser.add_argument("--cj-gnn-epochs", type=int, default=10,
                        help="most GNN epochs on completejourney; 0 leaves the GNN out")
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--out", default="recommend")
    args = parser.parse_args()
    started = time.perf_counter()
    results = {"machine": machine(),
               "command": "python benchmarks/recommend.py " + " ".join(sys.argv[1:]),
               "datasets": {}}
    with threadpool_limits(1, "blas"):
        for name in args.datasets:
            results["datasets"][name] = run_dataset(name, args)
            results["total_s"] = time.perf_counter() - started
            RESULTS.mkdir(parents=True, exist_ok=True)
            (RESULTS / f"{args.out}.json").write_text(json.dumps(results, indent=1,
                                                                  default=str))
            (RESULTS / f"{args.out}.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
