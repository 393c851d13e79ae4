"""The GNN on Gowalla (LightGCN's published split), trained where a GPU is, for the evaluation.

CPU time on the 2-core development machine does not allow LightGCN to converge on Gowalla
(about 1 M training edges, hundreds of epochs), so this script trains the project's
`GraphRecommender` on a CUDA machine and writes the final user and product embeddings;
`benchmarks/recommend.py --gowalla-gnn DIR` then scores them on the same split beside every
other model. Two models, as the hybrid's tuning needs:

- ``fit``: trained on the tuning part of the training split, early-stopped on its validation
  part (Recall@20 every `--eval-every` epochs) — the GNN the blend weights are tuned with;
- ``full``: trained on the whole training split for the same fixed `--epochs` (no early
  stopping: the test split is never looked at while training).

Both use `recommender.experiment.load_split("gowalla")`, the split every other model uses.

    python benchmarks/gowalla_gnn.py --phase fit|full --out DIR [--epochs 400] [--device cuda]

Writes DIR/{phase}_users.npy, DIR/{phase}_items.npy, DIR/{phase}_active.npy and
DIR/{phase}.json (configuration, epoch times, validation curve, test metrics of the model).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from recommender.evaluation import evaluate  # noqa: E402
from recommender.experiment import Split, load_split  # noqa: E402
from recommender.history import history_matrix  # noqa: E402


def matrices(split: Split, phase: str) -> tuple:  # noqa: ANN001
    train, test = split.matrices()
    if phase == "full":
        return train, None, test
    valid = history_matrix(split.valid, split.shape, None)
    fit = (train - valid.multiply(train)).tocsr()
    fit.eliminate_zeros()
    return fit, valid, test


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phase", choices=["fit", "full"], required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--epochs", type=int, default=400)
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--regularization", type=float, default=1e-4)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--pairs", choices=["interactions", "users"], default="users",
                        help="BPR pairs per epoch: every interaction once, or users drawn "
                             "uniformly (LightGCN's reference sampler)")
    args = parser.parse_args()

    from recommender.gnn import GraphRecommender

    started = time.perf_counter()
    split = load_split("gowalla", args.data_dir)
    fit, valid, test = matrices(split, args.phase)
    print(f"{args.phase}: {fit.shape[0]} users x {fit.shape[1]} items, {fit.nnz} training "
          f"edges, split loaded in {time.perf_counter() - started:.1f} s", flush=True)
    model = GraphRecommender(
        dim=64, layers=3, epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=args.learning_rate, regularization=args.regularization, seed=0,
        device=args.device, eval_every=args.eval_every if valid is not None else 10**9,
        patience=args.patience, pairs=args.pairs, verbose=True)
    start = time.perf_counter()
    model.fit(fit, valid=valid)
    train_s = time.perf_counter() - start
    result = evaluate(model, fit, test, k=20) if args.phase == "full" else None
    args.out.mkdir(parents=True, exist_ok=True)
    np.save(args.out / f"{args.phase}_users.npy", model.user_embeddings.astype(np.float32))
    np.save(args.out / f"{args.phase}_items.npy", model.item_embeddings.astype(np.float32))
    np.save(args.out / f"{args.phase}_active.npy", np.diff(fit.indptr) > 0)
    import torch

    report = {
        "phase": args.phase, "config": model.config(), "shape": list(fit.shape),
        "train_edges": int(fit.nnz), "train_s": round(train_s, 1),
        "epochs_run": len(model.epoch_seconds),
        "epoch_s_median": float(np.median(model.epoch_seconds)),
        "best_epoch": model.best_epoch, "validation": model.history, "test": result,
        "device": (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"),
        "torch": torch.__version__, "python": platform.python_version(),
    }
    (args.out / f"{args.phase}.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "validation"}), flush=True)


if __name__ == "__main__":
    main()
