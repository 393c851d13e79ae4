"""GNN epoch time on ml-100k-kg: shopgraph's GraphRecommender against RecBole's LightGCN.

Why: the hybrid issue asks for our GNN's epoch to be faster than RecBole LightGCN's on the same
machine and run. Both train on the identical rows (the training part of the per-user temporal
80/20 split that `benchmarks/recommend.py` and `benchmarks/recbole_peers.py` use), with the same
shape of model and batch: 64-dim embeddings, 3 propagation layers, batch 2048, one sampled
negative per positive, Adam at lr 1e-3, one thread, CPU. Our GNN is timed twice: as the hybrid
trains it (user-product graph plus the knowledge-graph edges: brand, category, Freebase
entities, i.e. more nodes and edges than LightGCN sees) and on the user-product graph alone
(what LightGCN computes).

The contenders run one after another, never at the same time, in `--rounds` rounds (each round
runs every contender in a fresh subprocess for `--epochs` epochs, the order rotating per round),
so machine noise hits all of them alike; the table gives each one's median epoch (wall and CPU)
and, per round, the ratio ours / RecBole. Setup (graph building, RecBole's data loading) is not
in the epoch time; validation is off for both.

    .venv/bin/python benchmarks/gnn_epoch.py --recbole-python /root/recbole-venv/bin/python

(RecBole's venv: see benchmarks/recbole_peers.py.) Writes benchmarks/results/gnn_epoch.json
and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
HERE = Path(__file__).resolve()
CONTENDERS = ("ours_kg", "ours_plain", "recbole_lightgcn")
THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
              "CUDA_VISIBLE_DEVICES": ""}


# ---- workers (one subprocess per contender and round) ---------------------------------------
def ours(kg_edges: bool, epochs: int) -> dict:
    """Fit GraphRecommender for `epochs` epochs on the split's training rows; time each."""
    sys.path.insert(0, str(ROOT))
    import torch

    from recommender.experiment import load_split
    from recommender.gnn import GraphRecommender
    from recommender.history import history_matrix

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    split = load_split("ml100k-kg")
    train = history_matrix(split.train, split.shape, None)
    graph = split.snapshot.to_hetero_data() if kg_edges else None
    model = GraphRecommender(dim=64, layers=3, epochs=epochs, batch_size=2048,
                             learning_rate=1e-3, seed=0, device="cpu", num_threads=1,
                             sampling="full")
    model.fit(train, graph=graph)
    return {"wall": list(model.epoch_seconds), "cpu": list(model.epoch_cpu_seconds),
            "rows": int(train.nnz),
            "torch": torch.__version__}


def recbole(directory: Path, epochs: int) -> dict:
    """RecBole LightGCN on the same training rows (the `final` phase files), `epochs` epochs."""
    sys.path.insert(0, str(HERE.parent))
    import recbole_peers  # the RecBole venv has no shopgraph; only the worker helpers are used
    import torch

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    config, train_data, _, _, _, trainer = recbole_peers.build(
        "LightGCN", Path(directory) / "final", epochs)
    wall, cpu = [], []
    for epoch in range(epochs):
        start, start_cpu = time.perf_counter(), time.process_time()
        trainer._train_epoch(train_data, epoch, show_progress=False)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    import recbole

    return {"wall": wall, "cpu": cpu, "rows": len(train_data._dataset.inter_feat),
            "torch": torch.__version__, "recbole": recbole.__version__,
            "batch": config["train_batch_size"], "lr": config["learning_rate"],
            "layers": config["n_layers"], "dim": config["embedding_size"]}


# ---- driver ---------------------------------------------------------------------------------
def run_one(contender: str, python: str, directory: Path, epochs: int) -> dict:
    command = [python, str(HERE), "--worker", contender, "--dir", str(directory),
               "--epochs", str(epochs)]
    done = subprocess.run(command, capture_output=True, text=True, check=False,
                          env={**os.environ, **THREAD_ENV}, timeout=1800)
    if done.returncode:
        raise RuntimeError(f"{contender} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarise(runs: dict[str, list[dict]], skip: int) -> dict:
    """Median epoch per contender (the first `skip` epochs of each run are warm-up)."""
    out: dict = {}
    for name, rounds in runs.items():
        wall = [w for r in rounds for w in r["wall"][skip:]]
        cpu = [c for r in rounds for c in r["cpu"][skip:]]
        out[name] = {"median_wall_s": round(statistics.median(wall), 3),
                     "median_cpu_s": round(statistics.median(cpu), 3),
                     "epochs_timed": len(wall), "rows": rounds[0]["rows"]}
    base = runs["recbole_lightgcn"]
    for name in ("ours_kg", "ours_plain"):
        ratios = [statistics.median(o["wall"][skip:]) / statistics.median(b["wall"][skip:])
                  for o, b in zip(runs[name], base)]
        out[name]["ratio_per_round"] = [round(r, 3) for r in ratios]
        out[name]["median_ratio"] = round(statistics.median(ratios), 3)
    return out


def markdown(report: dict) -> str:
    s = report["summary"]
    lines = ["# GNN epoch time on ml-100k-kg: shopgraph vs RecBole LightGCN", "",
             f"Machine: {report['machine']}.", f"Command: `{report['command']}`; "
             f"{report['rounds']} rounds x {report['epochs']} epochs per contender, run one "
             f"at a time, order rotating; first {report['skip']} epoch(s) of each run "
             f"discarded as warm-up. Total {report['total_s']:.0f} s.", "",
             "Same rows (ml-100k-kg training split), 64-dim, 3 layers, batch 2048, Adam lr "
             "1e-3, 1 thread, CPU.", "",
             "| contender | graph | training rows | median s/epoch wall | median s/epoch CPU "
             "| ratio to RecBole (per round) |", "|---|---|---:|---:|---:|---|"]
    graphs = {"ours_kg": "users-products + knowledge graph (what the hybrid trains)",
              "ours_plain": "users-products only (LightGCN's graph)",
              "recbole_lightgcn": "users-products only"}
    for name in CONTENDERS:
        e = s[name]
        ratio = (f"{e['median_ratio']} ({', '.join(map(str, e['ratio_per_round']))})"
                 if "median_ratio" in e else "1")
        lines.append(f"| {name} | {graphs[name]} | {e['rows']:,} | {e['median_wall_s']:.3f} "
                     f"| {e['median_cpu_s']:.3f} | {ratio} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recbole-python", default="/root/recbole-venv/bin/python")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--skip", type=int, default=1, help="warm-up epochs per run")
    parser.add_argument("--out", default="gnn_epoch")
    parser.add_argument("--worker", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = (recbole(args.dir, args.epochs) if args.worker == "recbole_lightgcn"
                  else ours(args.worker == "ours_kg", args.epochs))
        print(json.dumps(result))
        return
    sys.path.insert(0, str(ROOT))
    from benchmarks.machine import describe_machine
    from benchmarks.recbole_peers import prepare_split

    if args.epochs <= args.skip:
        parser.error("--epochs must exceed --skip")
    started = time.perf_counter()
    runs: dict[str, list[dict]] = {name: [] for name in CONTENDERS}
    with tempfile.TemporaryDirectory() as tmp:
        prepare_split(Path(tmp))
        for round_no in range(args.rounds):
            order = CONTENDERS[round_no % 3:] + CONTENDERS[:round_no % 3]
            for name in order:
                python = args.recbole_python if name == "recbole_lightgcn" else sys.executable
                result = run_one(name, python, Path(tmp), args.epochs)
                runs[name].append(result)
                print(f"round {round_no + 1}: {name} {statistics.median(result['wall']):.3f} "
                      "s/epoch", file=sys.stderr, flush=True)
    report = {"machine": describe_machine("1 thread per contender, run one at a time"),
              "command": "python benchmarks/gnn_epoch.py " + " ".join(sys.argv[1:]),
              "rounds": args.rounds, "epochs": args.epochs, "skip": args.skip,
              "total_s": time.perf_counter() - started, "runs": runs,
              "summary": summarise(runs, args.skip)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(report, indent=1))
    (RESULTS / f"{args.out}.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
