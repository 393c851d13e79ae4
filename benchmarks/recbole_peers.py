"""RecBole 1.2.1 peers (BPR, LightGCN, KGAT, KGIN) on the project's ml-100k-kg split.

Why: the project's own recommenders are compared against published graph/KG models; running
RecBole's implementations on the *identical* split (recommend_peers.py: per-user temporal
80/20, tuning on a temporal 80/20 of train) and scoring their top-K lists with the project's
metric code (recommender/evaluation.py) makes the figures directly comparable. RecBole's own
Recall@K divides by |test| like ours, but its training-item masking, user set and id universe
differ in details, so only its ranked lists are used.

Two halves in one file:

- project side (project venv): `prepare_split` writes RecBole atomic files for the two phases,
  `score` turns the worker's top-50 lists into the project's metrics@20, `run` does both around
  one worker subprocess per model (so each model's peak RSS is its own).
- worker side (`--worker`, RecBole venv): per model, phase "tune" trains on the fit rows with
  early stopping on the validation rows (NDCG@20, full sort, RecBole's `stopping_step`); phase
  "final" retrains on all training rows for exactly the best tuning epoch count (the test rows
  are never used for stopping) and writes the full-sort top-50 of every test user, training
  items excluded, with the original ids.

    python benchmarks/recbole_peers.py --recbole-python /root/recbole-venv/bin/python \\
        [--models BPR LightGCN KGAT KGIN] [--quick]

run with the project venv's python. Writes benchmarks/results/recbole_ml100k.json and .md
(`--quick`: 2 epochs per model in a temporary directory, nothing written).

The RecBole venv (outside the repo; Python 3.11). Torch is not downloaded again: the project
venv's installed torch 2.15.0 (a CUDA build, run on CPU here) and its CUDA/triton packages are
hard-linked into the new venv (same filesystem, so no extra disk and no shared writes: pip
replaces files rather than writing into them); `pip install torch==2.15.0` from PyPI instead
gives the same result with a multi-GB download:

    python3.11 -m venv /root/recbole-venv
    SP=/root/recbole-venv/lib/python3.11/site-packages
    SRC=/work/main/.venv/lib/python3.11/site-packages
    cd $SRC && for d in torch torchgen functorch nvidia cuda triton; do cp -al $d $SP/; done
    cd $SRC && cp -a torch-2.15.0.dist-info triton-3.9.0.dist-info cuda_bindings-*.dist-info \\
        cuda_pathfinder-*.dist-info cuda_toolkit-*.dist-info nvidia_*.dist-info $SP/
    /root/recbole-venv/bin/pip install "numpy==1.26.4" "scipy==1.11.4" "pandas==2.2.3" \\
        "setuptools<81" "ray==2.6.3" "recbole==1.2.1" filelock "typing-extensions>=4.13" \\
        "sympy>=1.13.3" "networkx>=2.5.1" jinja2 "fsspec>=0.8.5" pyarrow psutil

No torch_scatter or dgl is installed (no wheels for torch 2.15): the worker puts two small
in-process stand-ins into `sys.modules` when the real packages are missing, implementing only
what RecBole 1.2.1 calls: `torch_scatter.scatter_mean` (KGIN's KG aggregation) and, for KGAT's
per-relation adjacency, `dgl.graph`, `DGLGraph.edata`, `DGLGraph.filter_edges`,
`dgl.edge_subgraph(..., preserve_nodes=True)` and `DGLGraph.adjacency_matrix(transpose=False,
scipy_fmt=...)` (rows = source nodes, as in DGL). Checkpoints are never reloaded (the best
epoch is retrained), so RecBole's `torch.load` (weights_only default since torch 2.6) is not hit.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DATA = ROOT.parent / "shared" / "data" / "ml-100k-kg"
DATASET = "sg-ml100k"  # not "ml-100k": RecBole maps that name to its bundled copy
K = 20
TOP_N = 50
SEED = 2020
MODELS = ["BPR", "LightGCN", "KGAT", "KGIN"]
# epoch caps for the tuning phase (the final phase reruns the best count, <= cap). Measured
# here with 1 thread on the shared 2-core machine (wall, train only, 65k-80k rows): BPR ~0.5 s,
# LightGCN ~2.3 s, KGIN ~24 s, KGAT ~23-45 s per epoch, plus ~0.3-0.6 s per validation; these
# caps keep the worst case (every cap reached, tune + final) near 75 minutes
MAX_EPOCHS = {"BPR": 200, "LightGCN": 120, "KGAT": 25, "KGIN": 40}
QUICK_EPOCHS = 2
KG_MODELS = {"KGAT", "KGIN"}
THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
              "CUDA_VISIBLE_DEVICES": ""}


# ---- project side ---------------------------------------------------------------------------
def _on_project_path() -> None:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def load_interactions_with_ids() -> tuple[object, tuple[int, int], list[str], list[str]]:
    """recommend_peers.load_interactions plus the snapshot's user and item id lists.

    The same calls (importer -> embedded store -> export), so the frame and its integer
    indices are identical; the id lists map the indices back to the export ids for RecBole.
    """
    _on_project_path()
    import numpy as np
    import pandas as pd

    from kg.embedded import EmbeddedStore
    from kg.export import export_graph
    from kg.importers import load_dataset
    from kg.schema import INTERACTED, PRODUCT, USER

    with tempfile.TemporaryDirectory() as tmp:
        store = EmbeddedStore(Path(tmp) / "graph")
        load_dataset("ml100k-kg", store)
        snap = export_graph(store)
        store.close()
    rels = snap.rels[INTERACTED.name]
    users, items = [str(u) for u in snap.ids[USER]], [str(i) for i in snap.ids[PRODUCT]]
    frame = pd.DataFrame({
        "user": pd.Index(users).get_indexer(rels["source"].astype(str)),
        "item": pd.Index(items).get_indexer(rels["target"].astype(str)),
        "ts": rels["ts"].to_numpy(dtype=np.int64),
    })
    assert (frame[["user", "item"]] >= 0).all().all()
    assert snap.interaction_matrix().nnz == len(frame)
    return frame, (len(users), len(items)), users, items


def project_split() -> dict:
    """The split of recommend_peers.py: train/test, then fit/valid inside train."""
    _on_project_path()
    from recommender.evaluation import temporal_split_per_user

    frame, shape, users, items = load_interactions_with_ids()
    train_f, test_f = temporal_split_per_user(frame, ratio=0.8)
    fit_f, valid_f = temporal_split_per_user(train_f, ratio=0.8)
    return {"frame": frame, "shape": shape, "users": users, "items": items, "train": train_f,
            "test": test_f, "fit": fit_f, "valid": valid_f}


def _write_atomic(path: Path, header: list[str], columns: list[list]) -> None:
    with path.open("w", encoding="utf-8") as out:
        out.write("\t".join(header) + "\n")
        for row in zip(*columns):
            out.write("\t".join(str(v) for v in row) + "\n")


def _write_inter(path: Path, part: object, users: list[str], items: list[str]) -> None:
    _write_atomic(path, ["user_id:token", "item_id:token", "timestamp:float"], [
        [users[u] for u in part["user"]], [items[i] for i in part["item"]],
        [int(t) for t in part["ts"]]])


def prepare_split(directory: Path) -> dict:
    """Write RecBole atomic files for phases "tune" and "final" under `directory`.

    tune: train = fit rows, valid = test = validation rows. final: train = all training rows,
    test = test rows; RecBole's benchmark mode needs a valid file, it gets the validation rows
    (a subset of train, never evaluated in this phase). Every project user and item is listed
    in .user/.item so RecBole ranks the same catalogue; .kg and .link are the shared copies
    (ml-100k item ids are the export ids).
    """
    directory = Path(directory)
    split = project_split()
    users, items = split["users"], split["items"]
    phases = {"tune": ("fit", "valid", "valid"), "final": ("train", "valid", "test")}
    for phase, parts in phases.items():
        target = directory / phase / DATASET
        target.mkdir(parents=True, exist_ok=True)
        for suffix, part in zip(("train", "valid", "test"), parts):
            _write_inter(target / f"{DATASET}.{suffix}.inter", split[part], users, items)
        _write_atomic(target / f"{DATASET}.user", ["user_id:token"], [users])
        _write_atomic(target / f"{DATASET}.item", ["item_id:token"], [items])
        for ext in ("kg", "link"):
            (target / f"{DATASET}.{ext}").write_bytes((DATA / f"ml-100k.{ext}").read_bytes())
    return {"users": split["shape"][0], "items": split["shape"][1],
            "interactions": len(split["frame"]), "train": len(split["train"]),
            "test": len(split["test"]), "fit": len(split["fit"]), "valid": len(split["valid"])}


def score(directory: Path) -> dict:
    """The project's metrics@20 of every model's top lists found in `directory`/out.

    Ground truth as `evaluate` builds it: test items the user also has in training are dropped,
    users left without a test item are skipped. Lists are checked for training items (the
    worker excludes them; any left would be counted in `train_items_in_lists`).
    """
    _on_project_path()
    import numpy as np
    import pandas as pd

    from recommender.base import binarised
    from recommender.evaluation import ranking_metrics, to_csr

    split = project_split()
    shape = split["shape"]
    train, test = to_csr(split["train"], shape), to_csr(split["test"], shape)
    truth = binarised(test)
    seen = truth.multiply(binarised(train)).tocsr()
    if seen.nnz:
        truth = (truth - seen).tocsr()
        truth.eliminate_zeros()
    rows = np.flatnonzero(np.diff(truth.indptr) > 0)
    user_index, item_index = pd.Index(split["users"]), pd.Index(split["items"])
    out: dict = {"test_users": int(len(rows)), "test_dropped_seen": int(seen.nnz), "models": {}}
    for path in sorted((Path(directory) / "out").glob("*.json")):
        result = json.loads(path.read_text())
        top = result.pop("topk")
        recommended = np.full((shape[0], TOP_N), -1, dtype=np.int64)
        listed = np.zeros(shape[0], dtype=bool)
        user_rows = user_index.get_indexer(top["users"])
        for row, ids in zip(user_rows, top["items"]):
            if row < 0:
                raise ValueError(f"{path.name}: unknown user in top lists")
            idx = item_index.get_indexer(ids)
            recommended[row, : len(idx)] = idx
            listed[row] = True
        missing = int((~listed[rows]).sum())
        in_train = sum(int(train[r].toarray()[0, recommended[r][recommended[r] >= 0]].sum())
                       for r in rows)
        metrics = ranking_metrics(recommended[rows], truth[rows], K, shape[1])
        result.update({"test": metrics, "users_without_list": missing,
                       "train_items_in_lists": in_train})
        out["models"][result["model"]] = result
    return out


def run(recbole_python: Path, directory: Path, models: list[str], max_epochs: dict) -> dict:
    """Prepare the split, train each model in its own worker process, score the lists.

    `max_epochs` caps the tuning epochs per model (models absent from it use MAX_EPOCHS).
    Each worker runs with one thread (torch and BLAS) on the CPU.
    """
    directory = Path(directory)
    started = time.perf_counter()
    split = prepare_split(directory)
    env = {**os.environ, **THREAD_ENV}
    env.pop("PYTHONPATH", None)
    walls = {}
    for model in models:
        cap = int(max_epochs.get(model, MAX_EPOCHS.get(model, 100)))
        print(f"[recbole] {model}: up to {cap} tuning epochs ...", file=sys.stderr, flush=True)
        begin = time.perf_counter()
        subprocess.run([str(recbole_python), str(Path(__file__).resolve()), "--worker",
                        "--dir", str(directory), "--model", model, "--max-epochs", str(cap)],
                       check=True, cwd=directory, env=env)
        walls[model] = round(time.perf_counter() - begin, 1)
    report = score(directory)
    report["models"] = {m: report["models"][m] for m in models if m in report["models"]}
    for model, wall in walls.items():
        report["models"][model]["wall_s"] = wall
    report.update({"split": split, "k": K, "top_n": TOP_N, "seed": SEED,
                   "epoch_caps": {m: int(max_epochs.get(m, MAX_EPOCHS.get(m, 100)))
                                  for m in models},
                   "total_s": round(time.perf_counter() - started, 1)})
    return report


def machine() -> str:
    _on_project_path()
    from benchmarks.machine import describe_machine  # project side only: not in the worker

    return describe_machine("1 torch thread per model")


def markdown(report: dict) -> str:
    s = report["split"]
    first = next(iter(report["models"].values()), {})
    stopping = first.get("params", {}).get("stopping_step", 10)
    lines = [
        "# RecBole 1.2.1 peers: ml-100k-kg", "",
        f"Machine: {report['machine']}. Command: `{report['command']}`. "
        f"Total wall time {report['total_s'] / 60:.1f} min.", "",
        f"Split: the one of recommend_peers.py, per-user temporal 80/20 of "
        f"{s['interactions']:,} ratings as implicit feedback ({s['users']} users x "
        f"{s['items']} items): {s['train']:,} train / {s['test']:,} test; tuning on a per-user "
        f"temporal 80/20 of train ({s['fit']:,} fit / {s['valid']:,} validation).", "",
        "Protocol: per model, train on the fit rows with early stopping on the validation rows "
        f"(RecBole's full-sort NDCG@{K}, stopping_step {stopping}, "
        "epochs capped), then retrain on all training rows for exactly the best epoch count; "
        f"its full-sort top-{TOP_N} per test user (training items excluded) is scored by "
        f"recommender/evaluation.py `ranking_metrics` ({report['test_users']} test users, "
        f"{report['test_dropped_seen']} test items also in train dropped). RecBole defaults "
        "except embedding_size 64, learning_rate 1e-3, CPU, seed "
        f"{report['seed']}.", "",
        f"| model | Recall@{K} | NDCG@{K} | Precision@{K} | HitRate@{K} | MRR@{K} "
        f"| Coverage@{K} | epochs (cap) | s/epoch wall (CPU) | train s wall (CPU) "
        "| peak RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in report["models"].items():
        m, f = r["test"], r["final"]
        lines.append(
            f"| {name} | {m[f'recall@{K}']:.4f} | {m[f'ndcg@{K}']:.4f} "
            f"| {m[f'precision@{K}']:.4f} | {m[f'hit_rate@{K}']:.4f} | {m[f'mrr@{K}']:.4f} "
            f"| {m[f'coverage@{K}']:.4f} | {f['epochs']} ({r['tune']['cap']}) "
            f"| {f['s_per_epoch']:.2f} ({f['cpu_s_per_epoch']:.2f}) "
            f"| {f['train_s']:.1f} ({f['train_cpu_s']:.1f}) | {r['peak_rss_mib']:.0f} |")
    lines += [
        "", "epochs: the best tuning epoch (early stopping on validation), reused for the "
        "final fit; s/epoch and train s: the final fit on all training rows, training only "
        "(no evaluation), 1 thread; wall seconds on a shared machine, process CPU seconds in "
        "parentheses (the steadier figure when other jobs compete for the cores). Peak RSS: "
        "the worker process (both phases).", "",
        "Cross-check, RecBole's own evaluator on the same test rows (same final model; its "
        "masking and user set differ slightly) and training items found in the lists:", "",
        f"| model | RecBole Recall@{K} | RecBole NDCG@{K} | training items in lists |",
        "|---|---:|---:|---:|",
    ]
    for name, r in report["models"].items():
        own = r.get("recbole_own_test", {})
        lines.append(f"| {name} | {own.get(f'recall@{K}', float('nan')):.4f} "
                     f"| {own.get(f'ndcg@{K}', float('nan')):.4f} "
                     f"| {r['train_items_in_lists']} |")
    lines += [
        "",
        "Tuning runs:", "",
        f"| model | epochs run | best epoch | valid NDCG@{K} (RecBole) | stopped early "
        "| tune train s wall (CPU) | tune valid s |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for name, r in report["models"].items():
        t = r["tune"]
        lines.append(f"| {name} | {t['epochs_run']} | {t['best_epoch']} "
                     f"| {t['best_valid_ndcg']:.4f} | {t['stopped_early']} "
                     f"| {t['train_s']:.1f} ({t['train_cpu_s']:.1f}) | {t['valid_s']:.1f} |")
    lines += ["", "Hyper-parameters (RecBole 1.2.1 defaults unless stated above):", ""]
    for name, r in report["models"].items():
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items())
        lines.append(f"- {name}: {params}")
    notes = {n: r["shims"] for n, r in report["models"].items() if r.get("shims")}
    if notes:
        lines += ["", "Stand-ins used (see the module docstring): " + "; ".join(
            f"{n}: {', '.join(s)}" for n, s in notes.items()) + "."]
    capped = [n for n, r in report["models"].items()
              if not r["tune"]["stopped_early"] and r["tune"]["best_epoch"] == r["tune"]["cap"]]
    lines += ["", "Notes:", ""]
    if capped:
        lines.append(f"- {', '.join(capped)}: validation NDCG@{K} was still rising at the epoch "
                     "cap (no early stop), so these figures are for this time budget, not "
                     "converged models.")
    lines += [
        "- RecBole's KGIN applies its node/edge dropout (rate 0.5) also when scoring "
        "(`GraphConv.forward` does not check `self.training`); kept as RecBole ships it.",
        "- RecBole read the same catalogue (943 users, 1682 items): every project user and item "
        "is listed in the .user/.item files, and the lists were mapped back to export ids.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--max-epochs", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--recbole-python", type=Path,
                        default=Path("/root/recbole-venv/bin/python"))
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--workdir", type=Path,
                        help="keep the atomic files and per-model outputs here (default: temp)")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_EPOCHS} epochs per model in a temp dir, nothing written")
    args = parser.parse_args()
    if args.worker:
        sys.argv = sys.argv[:1]  # RecBole's Config parses --key=value from the command line
        worker(args.dir, args.model, args.max_epochs)
        return
    command = "python benchmarks/recbole_peers.py " + " ".join(sys.argv[1:])
    caps = {m: QUICK_EPOCHS for m in args.models} if args.quick else MAX_EPOCHS
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        report = run(args.recbole_python, args.workdir.resolve(), args.models, caps)
    else:
        with tempfile.TemporaryDirectory(prefix="recbole_peers_") as tmp:
            report = run(args.recbole_python, Path(tmp), args.models, caps)
    report["machine"], report["command"] = machine(), command
    text = markdown(report)
    print(text)
    if args.quick:
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "recbole_ml100k.json").write_text(json.dumps(report, indent=1))
    (RESULTS / "recbole_ml100k.md").write_text(text)


# ---- worker side (RecBole venv: recbole, torch, numpy, pandas only) -------------------------
def install_shims(model: str) -> list[str]:
    """Stand-ins for torch_scatter (KGIN) / dgl (KGAT) when missing, only what RecBole calls."""
    import importlib.util
    import types

    import numpy as np
    import torch

    installed = []
    if model == "KGIN" and importlib.util.find_spec("torch_scatter") is None:
        scatter = types.ModuleType("torch_scatter")

        def scatter_mean(src: torch.Tensor, index: torch.Tensor, dim: int = -1,
                         out: torch.Tensor | None = None,
                         dim_size: int | None = None) -> torch.Tensor:
            """Mean of `src` slices sharing an index along `dim`; empty groups give 0."""
            if out is not None or index.dim() != 1:
                raise NotImplementedError("stand-in: 1-d index, no out= only")
            dim = dim % src.dim()
            size = int(index.max()) + 1 if dim_size is None else int(dim_size)
            shape = list(src.shape)
            shape[dim] = size
            total = src.new_zeros(shape).index_add(dim, index, src)
            count = torch.zeros(size, dtype=src.dtype, device=src.device).index_add(
                0, index, torch.ones(index.shape[0], dtype=src.dtype, device=src.device))
            view = [1] * src.dim()
            view[dim] = size
            return total / count.clamp(min=1).view(view)

        scatter.scatter_mean = scatter_mean
        sys.modules["torch_scatter"] = scatter
        installed.append("torch_scatter.scatter_mean")
    if model == "KGAT" and importlib.util.find_spec("dgl") is None:
        dgl = types.ModuleType("dgl")

        class EdgeBatch:
            def __init__(self, data: dict) -> None:
                self.data = data

        class DGLGraph:
            """Edge list with edge data: just enough for KGAT.init_graph."""

            def __init__(self, src: torch.Tensor, dst: torch.Tensor, num_nodes: int) -> None:
                self.src, self.dst, self.n = src, dst, num_nodes
                self.edata: dict = {}

            def num_nodes(self) -> int:
                return self.n

            def num_edges(self) -> int:
                return int(self.src.shape[0])

            def filter_edges(self, predicate: object) -> torch.Tensor:
                mask = predicate(EdgeBatch(self.edata))
                return torch.nonzero(mask, as_tuple=False).view(-1)

            def adjacency_matrix(self, transpose: bool = False, ctx: object = None,
                                 scipy_fmt: str | None = None, etype: object = None) -> object:
                import scipy.sparse as sp

                if scipy_fmt is None:
                    raise NotImplementedError("stand-in: scipy_fmt only")
                row, col = (self.dst, self.src) if transpose else (self.src, self.dst)
                matrix = sp.coo_matrix(
                    (np.ones(len(row), dtype=np.float32), (row.numpy(), col.numpy())),
                    shape=(self.n, self.n))
                return matrix.asformat(scipy_fmt)

        def graph(data: tuple, num_nodes: int | None = None, **_: object) -> DGLGraph:
            src, dst = (torch.as_tensor(x).long() for x in data)
            n = num_nodes if num_nodes is not None else int(max(src.max(), dst.max())) + 1
            return DGLGraph(src, dst, n)

        def edge_subgraph(g: DGLGraph, edges: torch.Tensor, preserve_nodes: bool = False,
                          **_: object) -> DGLGraph:
            if not preserve_nodes:
                raise NotImplementedError("stand-in: preserve_nodes=True only")
            idx = torch.as_tensor(edges).long()
            sub = DGLGraph(g.src[idx], g.dst[idx], g.n)
            sub.edata = {k: v[idx] for k, v in g.edata.items()}
            return sub

        dgl.graph, dgl.edge_subgraph, dgl.DGLGraph = graph, edge_subgraph, DGLGraph
        sys.modules["dgl"] = dgl
        installed.append("dgl (graph, filter_edges, edge_subgraph, adjacency_matrix)")
    return installed


def recbole_config(model: str, phase_dir: Path, epochs: int) -> object:
    """RecBole Config: defaults, plus the benchmark files, CPU, one seed and the K=20 metric."""
    from recbole.config import Config

    load_col = {"inter": ["user_id", "item_id", "timestamp"], "user": ["user_id"],
                "item": ["item_id"]}
    if model in KG_MODELS:
        load_col.update({"kg": ["head_id", "relation_id", "tail_id"],
                         "link": ["item_id", "entity_id"]})
    return Config(model=model, dataset=DATASET, config_dict={
        "data_path": str(phase_dir), "checkpoint_dir": str(phase_dir / "saved"),
        "benchmark_filename": ["train", "valid", "test"], "load_col": load_col,
        "use_gpu": False, "seed": SEED, "reproducibility": True, "show_progress": False,
        "state": "WARNING", "epochs": epochs, "eval_step": 1, "stopping_step": 10,
        "embedding_size": 64, "learning_rate": 1e-3,
        "metrics": ["NDCG", "Recall"], "topk": [K], "valid_metric": f"NDCG@{K}",
        "eval_args": {"split": {"RS": [0.8, 0.1, 0.1]}, "group_by": "user", "order": "TO",
                      "mode": "full"},
    })


def build(model: str, phase_dir: Path, epochs: int) -> tuple:
    """Dataset, dataloaders, model and trainer for one phase, seeded as RecBole's quick start."""
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_seed

    config = recbole_config(model, phase_dir, epochs)
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"], config["reproducibility"])
    net = get_model(model)(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], model)(config, net)
    trainer.eval_collector.data_collect(train_data)
    return config, train_data, valid_data, test_data, net, trainer


def top_lists(net: object, train_data: object, test_data: object, device: object) -> dict:
    """Full-sort top-N per test user, the padding item and the user's training items masked."""
    import torch
    from recbole.data.interaction import Interaction

    train_ds, test_ds = train_data._dataset, test_data._dataset
    uid, iid = train_ds.uid_field, train_ds.iid_field
    seen = torch.zeros(train_ds.user_num, train_ds.item_num, dtype=torch.bool)
    seen[train_ds.inter_feat[uid], train_ds.inter_feat[iid]] = True
    seen[:, 0] = True  # [PAD]
    users = torch.unique(test_ds.inter_feat[uid])
    out_users, out_items = [], []
    net.eval()
    with torch.no_grad():
        for batch in torch.split(users, 256):
            scores = net.full_sort_predict(Interaction({uid: batch}).to(device))
            scores = scores.view(len(batch), -1).clone()
            scores[seen[batch]] = -torch.inf
            top = torch.topk(scores, TOP_N, dim=1).indices
            out_users += [str(u) for u in train_ds.id2token(uid, batch.numpy())]
            out_items += [[str(i) for i in row] for row in train_ds.id2token(iid, top.numpy())]
    return {"users": out_users, "items": out_items}


def hyper_parameters(config: object, model: str) -> dict:
    """The model's own settings (its RecBole yaml) plus the training ones that matter."""
    import recbole

    yaml_path = Path(recbole.__file__).parent / "properties" / "model" / f"{model}.yaml"
    keys = [line.split(":", 1)[0].strip() for line in yaml_path.read_text().splitlines()
            if ":" in line and not line.startswith((" ", "#"))]
    keys += ["learner", "learning_rate", "weight_decay", "train_batch_size",
             "train_neg_sample_args", "stopping_step", "train_rec_step", "train_kg_step"]
    return {k: config[k] for k in dict.fromkeys(keys) if k in config}


def worker(directory: Path, model: str, cap: int) -> None:
    """Tune (early stopping on validation) then retrain for the best epoch count; write lists."""
    import resource

    shims = install_shims(model)
    import numpy as np
    import recbole
    import torch
    from recbole.utils import early_stopping

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    directory = Path(directory)

    # phase tune: fit rows, early stopping on the validation rows
    config, train_data, valid_data, _, net, trainer = build(model, directory / "tune", cap)
    best, best_epoch, steps, curve = -np.inf, 0, 0, []
    train_s = train_cpu = valid_s = 0.0
    stopped = False
    for epoch in range(cap):
        start, cpu = time.perf_counter(), time.process_time()
        trainer._train_epoch(train_data, epoch, show_progress=False)
        train_s += time.perf_counter() - start
        train_cpu += time.process_time() - cpu
        start = time.perf_counter()
        value, _ = trainer._valid_epoch(valid_data, show_progress=False)
        valid_s += time.perf_counter() - start
        curve.append(round(float(value), 5))
        best, steps, stop, update = early_stopping(value, best, steps,
                                                   max_step=config["stopping_step"])
        if update:
            best_epoch = epoch + 1
        print(f"[{model}] tune epoch {epoch + 1}: valid NDCG@{K} {value:.4f} "
              f"({time.perf_counter() - start:.1f} s eval)", file=sys.stderr, flush=True)
        if stop:
            stopped = True
            break
    tune = {"cap": cap, "epochs_run": len(curve), "best_epoch": best_epoch,
            "best_valid_ndcg": float(best), "stopped_early": stopped,
            "train_s": round(train_s, 2), "train_cpu_s": round(train_cpu, 2),
            "valid_s": round(valid_s, 2), "s_per_epoch": round(train_s / len(curve), 3),
            "cpu_s_per_epoch": round(train_cpu / len(curve), 3), "valid_curve": curve}
    params = hyper_parameters(config, model)
    del net, trainer, train_data, valid_data

    # phase final: all training rows, exactly best_epoch epochs, no evaluation
    epochs = max(best_epoch, 1)
    config, train_data, _, test_data, net, trainer = build(model, directory / "final", epochs)
    train_s = train_cpu = 0.0
    for epoch in range(epochs):
        start, cpu = time.perf_counter(), time.process_time()
        trainer._train_epoch(train_data, epoch, show_progress=False)
        train_s += time.perf_counter() - start
        train_cpu += time.process_time() - cpu
        print(f"[{model}] final epoch {epoch + 1}/{epochs}", file=sys.stderr, flush=True)
    lists = top_lists(net, train_data, test_data, config["device"])
    # RecBole's own figures on the same test rows, after training: a cross-check only
    own = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = {
        "model": model, "recbole": recbole.__version__, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "device": str(config["device"]), "seed": SEED,
        "params": params, "shims": shims, "tune": tune,
        "final": {"epochs": epochs, "train_s": round(train_s, 2),
                  "s_per_epoch": round(train_s / epochs, 3),
                  "train_cpu_s": round(train_cpu, 2),
                  "cpu_s_per_epoch": round(train_cpu / epochs, 3),
                  "train_rows": len(train_data._dataset.inter_feat)},
        "recbole_own_test": {k: float(v) for k, v in own.items()},
        "peak_rss_mib": round(peak_kib / 1024, 1), "topk": lists,
    }
    out = directory / "out"
    out.mkdir(exist_ok=True)
    (out / f"{model}.json").write_text(json.dumps(result))
    print(f"[{model}] best epoch {best_epoch}/{len(curve)}, final {epochs} epochs "
          f"{train_s:.1f} s", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
