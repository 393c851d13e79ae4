"""Search quality and latency on the fashion catalog, every system side by side in one run.

Queries are built from the catalog's own attributes ("{gender} {colour} {articleType}",
"{colour} {articleType} for {usage}") plus Chinese twins of a subset rendered with the graph's
Chinese display names; a product is relevant when it carries every attribute of its query.
The query set is written once to benchmarks/queries/fashion.jsonl and reused, so runs compare.
Fusion weights are tuned on the development half of the queries and every figure is reported
on the test half.

    python benchmarks/search.py [--workspace benchmarks/.work/fashion] [--regenerate]

Writes benchmarks/results/search.json and search.md.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QUERIES = ROOT / "benchmarks" / "queries" / "fashion.jsonl"
RESULTS = ROOT / "benchmarks" / "results"
K = 10


# ---- the query set ---------------------------------------------------------------------------
def article_type(catalog: pd.DataFrame) -> pd.Series:
    return catalog["category"].fillna("").str.split(" > ").str[-1]


def build_queries(catalog: pd.DataFrame, zh: dict[tuple[str, str], str], seed: int = 7,
                  per_template: int = 150, chinese: int = 150) -> list[dict]:
    """Attribute queries with at least 3 relevant products, plus Chinese twins of a subset."""
    rng = np.random.default_rng(seed)
    frame = catalog.assign(articleType=article_type(catalog))
    templates = {
        "gender_colour_type": (["gender", "colour", "articleType"],
                               "{gender} {colour} {articleType}",
                               "{gender}{colour}{articleType}"),
        "colour_type_usage": (["colour", "articleType", "usage"],
                              "{colour} {articleType} for {usage}",
                              "适合{usage}的{colour}{articleType}"),
    }
    queries: list[dict] = []
    for name, (keys, english, _) in templates.items():
        combos = frame.dropna(subset=keys).groupby(keys).size()
        combos = combos[combos >= 3].sort_index()
        picked = rng.choice(len(combos), size=min(per_template, len(combos)), replace=False)
        for i in sorted(picked):
            values = dict(zip(keys, combos.index[i], strict=True))
            qid = f"{name}-{len(queries)}"
            queries.append({"id": qid, "lang": "en", "template": name, "attributes": values,
                            "text": english.format(**values)})
    english_ids = list(queries)
    for q in [english_ids[i] for i in sorted(rng.choice(len(english_ids), size=chinese,
                                                         replace=False))]:
        kinds = {"articleType": "category"}
        names = {key: zh.get((kinds.get(key, key), value))
                 for key, value in q["attributes"].items()}
        if any(v is None for v in names.values()):
            continue
        template = templates[q["template"]][2]
        queries.append({"id": q["id"] + "-zh", "lang": "zh", "template": q["template"],
                        "twin": q["id"], "attributes": q["attributes"],
                        "text": template.format(**names)})
    return queries


def chinese_names(attributes: pd.DataFrame, categories: pd.DataFrame) -> dict:
    """(kind, English value) -> Chinese display name, read from the graph's nodes."""
    names = {}
    for row in attributes.dropna(subset=["name_zh"]).to_dict("records"):
        names[(row["kind"], row["value"])] = row["name_zh"]
    for row in categories.dropna(subset=["name_zh"]).to_dict("records"):
        names.setdefault(("category", row["name"]), row["name_zh"])
    return names


def relevant_rows(catalog: pd.DataFrame, attributes: dict[str, str]) -> np.ndarray:
    frame = catalog.assign(articleType=article_type(catalog))
    mask = np.ones(len(frame), dtype=bool)
    for key, value in attributes.items():
        mask &= (frame[key] == value).fillna(False).to_numpy(bool)
    return np.flatnonzero(mask)


# ---- metrics ---------------------------------------------------------------------------------
def metrics(ranked: list[str], relevant: set[str], k: int = K) -> dict[str, float]:
    """nDCG@k (binary gains, ideal over min(|rel|, k)), Recall@k = hits/min(|rel|, k), MRR@k."""
    gains = [1.0 if pid in relevant else 0.0 for pid in ranked[:k]]
    dcg = sum(g / np.log2(i + 2) for i, g in enumerate(gains))
    ideal = sum(1.0 / np.log2(i + 2) for i in range(min(len(relevant), k)))
    first = next((i for i, g in enumerate(gains) if g), None)
    return {"ndcg": dcg / ideal if ideal else 0.0,
            "recall": sum(gains) / min(len(relevant), k) if relevant else 0.0,
            "mrr": 0.0 if first is None else 1.0 / (first + 1)}


def mean(rows: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(float(np.mean([r[key] for r in rows])), 4) for key in rows[0]}


# ---- systems ---------------------------------------------------------------------------------
class Systems:
    """Every system the benchmark compares, each a function query -> ranked product ids."""

    def __init__(self, search, artifacts) -> None:  # noqa: ANN001
        import bm25s

        self.search = search
        self.ids = np.array(artifacts.ids)
        titles = artifacts.catalog["title"].fillna("").astype(str).tolist()
        stemmer = search._stemmer
        self.title_bm25 = bm25s.BM25()
        self.title_bm25.index(bm25s.tokenize(titles, stopwords="en", show_progress=False),
                              show_progress=False)
        self.stemmer = stemmer
        self.text_vectors = artifacts.text_vectors

    def _rank(self, scores: np.ndarray) -> list[str]:
        top = np.argsort(-scores, kind="stable")[:K]
        return self.ids[top].tolist()

    def bm25_titles(self, text: str) -> list[str]:
        import bm25s

        tokens = bm25s.tokenize([text], stopwords="en", show_progress=False,
                                return_ids=False)[0]
        return self._rank(np.asarray(self.title_bm25.get_scores(tokens)) if tokens
                          else np.zeros(len(self.ids)))

    def bm25_fields(self, text: str) -> list[str]:
        return self._rank(self.search._bm25_scores(text))

    def dense_raw(self, text: str) -> list[str]:
        q = self.search._encode_query(text)[0]
        return self._rank(self.text_vectors @ q)

    def one_source(self, source: str):  # noqa: ANN201
        return lambda text: [h.id for h in self.search.search(text, k=K,
                                                               sources=(source,)).hits]

    def fused(self, method: str, weights: dict[str, float] | None = None):  # noqa: ANN201
        return lambda text: [h.id for h in self.search.search(
            text, k=K, fusion=method, weights=weights).hits]


def evaluate(system, queries: list[dict], relevant: dict[str, set[str]]) -> dict:  # noqa: ANN001
    by_lang: dict[str, list[dict]] = {}
    for q in queries:
        by_lang.setdefault(q["lang"], []).append(metrics(system(q["text"]), relevant[q["id"]]))
    return {lang: mean(rows) for lang, rows in by_lang.items()}


def is_dev(query: dict) -> bool:
    """Half of the query pairs tune fusion; the other half is reported (twins stay together)."""
    key = query.get("twin", query["id"])
    return hashlib.sha256(key.encode()).digest()[0] % 2 == 0


def tune_weights(systems: Systems, dev: list[dict], relevant: dict) -> dict[str, float]:
    """Grid search of the weighted-sum fusion on development queries (English + Chinese)."""
    grid = {"bm25": [0.0, 0.5, 1.0], "text": [0.5, 1.0], "image": [0.0, 0.3],
            "graph": [0.5, 1.0, 2.0]}
    best, best_score = None, -1.0
    for values in itertools.product(*grid.values()):
        weights = dict(zip(grid, values, strict=True))
        result = evaluate(systems.fused("weighted", weights), dev, relevant)
        score = float(np.mean([r["ndcg"] for r in result.values()]))
        if score > best_score:
            best, best_score = weights, score
    return best or {}


def latency(search, texts: list[str], repeat: int = 1) -> dict[str, float]:  # noqa: ANN001
    times = []
    for _ in range(repeat):
        for text in texts:
            search._query_vectors.clear()  # time the query encoding too, as a new query pays it
            t0 = time.perf_counter()
            search.search(text, k=K)
            times.append((time.perf_counter() - t0) * 1000)
    return {"p50_ms": round(float(np.percentile(times, 50)), 2),
            "p99_ms": round(float(np.percentile(times, 99)), 2), "queries": len(times)}


PROBES = {"red dress": ("Red", "Dresses"), "黑色运动鞋": ("Black", "Sports Shoes"),
          "blue jeans": ("Blue", "Jeans"), "white tshirt": ("White", "Tshirts"),
          "brown wallet": ("Brown", "Wallets"), "粉色手提包": ("Pink", "Handbags")}


def joint_probes(search, artifacts) -> dict[str, dict[str, float]]:  # noqa: ANN001
    """Joint space alone, over the products with photos: do words find colour and type?"""
    photos = ProductSearchOverPhotos(search, artifacts)
    out = {}
    for text, (colour, kind) in PROBES.items():
        rows = photos.top(text)
        cat = artifacts.catalog.iloc[rows]
        out[text] = {"colour@10": float((cat["colour"] == colour).mean()),
                     "type@10": float(cat["category"].str.endswith(kind).mean())}
    return out


class ProductSearchOverPhotos:
    """Text -> joint space -> nearest product photos (image vectors only, no text signals)."""

    def __init__(self, search, artifacts) -> None:  # noqa: ANN001
        self.search, self.rows = search, np.flatnonzero(artifacts.has_image)
        self.vectors = artifacts.joint.embed_images(artifacts.image_features[self.rows])

    def top(self, text: str, k: int = K) -> np.ndarray:
        english = self.search.understanding.parse(text).english
        q = self.search.artifacts.joint.embed_texts(self.search._encode_query(english))[0]
        return self.rows[np.argsort(-(self.vectors @ q))[:k]]


def machine() -> str:
    import psutil

    return (f"{platform.machine()}, {os.cpu_count()} cores, "
            f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM, {platform.system()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, default=ROOT / "benchmarks" / ".work" / "fashion")
    parser.add_argument("--regenerate", action="store_true", help="rebuild the query set")
    parser.add_argument("--no-tune", action="store_true", help="skip the fusion weight grid")
    args = parser.parse_args()

    from kg.importers import load_dataset
    from kg.workspace import open_store
    from recommender.content import ContentArtifacts, build_content, content_dir
    from recommender.search import ProductSearch

    store = open_store("embedded", args.workspace)
    if store.counts()["nodes"]["Product"] == 0:
        print("loading fashion ...", file=sys.stderr)
        load_dataset("fashion", store, progress=True)
    if not (content_dir(args.workspace) / "meta.json").exists():
        print("building content artifacts (encoding 44k products) ...", file=sys.stderr)
        build_content(store, args.workspace, progress=True)
    artifacts = ContentArtifacts.load(content_dir(args.workspace))
    search = ProductSearch(artifacts)
    catalog = artifacts.catalog

    if args.regenerate or not QUERIES.exists():
        zh = chinese_names(artifacts.attributes, artifacts.categories)
        QUERIES.parent.mkdir(parents=True, exist_ok=True)
        QUERIES.write_text("".join(json.dumps(q, ensure_ascii=False) + "\n"
                                   for q in build_queries(catalog, zh)))
    queries = [json.loads(line) for line in QUERIES.read_text().splitlines()]
    ids = np.array(artifacts.ids)
    relevant = {q["id"]: set(ids[relevant_rows(catalog, q["attributes"])]) for q in queries}
    dev = [q for q in queries if is_dev(q)]
    test = [q for q in queries if not is_dev(q)]

    systems = Systems(search, artifacts)
    weights = dict(search.weights) if args.no_tune else tune_weights(systems, dev, relevant)
    table = {
        "BM25 titles": systems.bm25_titles,
        "BM25 title+graph fields (stemmed)": systems.bm25_fields,
        "dense text (E5, raw query)": systems.dense_raw,
        "image / joint space alone": systems.one_source("image"),
        "graph query understanding alone": systems.one_source("graph"),
        "fused: max": systems.fused("max"),
        "fused: RRF": systems.fused("rrf"),
        "fused: weighted (tuned)": systems.fused("weighted", weights),
    }
    results = {name: evaluate(system, test, relevant) for name, system in table.items()}

    probes = joint_probes(search, artifacts)
    english = [q["text"] for q in test if q["lang"] == "en"][:100]
    chinese = [q["text"] for q in test if q["lang"] == "zh"][:50]
    search.weights = weights
    timing = {f"{len(artifacts.ids):,} products (all)": latency(search, english + chinese)}
    with_image = np.flatnonzero(artifacts.has_image)
    small = ProductSearch(artifacts.subset(with_image), text_encoder=search.text_encoder,
                          weights=weights)
    timing[f"{len(with_image):,} products (those with photos)"] = latency(
        small, english + chinese)
    report = {
        "machine": machine(), "queries": {"dev": len(dev), "test": len(test),
                                          "file": os.path.relpath(QUERIES, ROOT)},
        "tuned_weights": weights, "results": results, "latency": timing,
        "joint_probes": probes,
        "content": artifacts.meta,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "search.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
    (RESULTS / "search.md").write_text(markdown(report))
    print(markdown(report))


def markdown(report: dict) -> str:
    lines = [f"# Search benchmark: fashion catalog ({report['content']['products']:,} products)",
             "",
             f"Machine: {report['machine']}. Command: `python benchmarks/search.py`. "
             f"Test queries: {report['queries']['test']} (tuning used the other "
             f"{report['queries']['dev']}).", "",
             "| system | nDCG@10 en | Recall@10 en | MRR en | nDCG@10 zh | Recall@10 zh | MRR zh "
             "| zh / en nDCG |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in report["results"].items():
        en, zh = r.get("en", {}), r.get("zh", {})
        ratio = zh.get("ndcg", 0) / en["ndcg"] if en.get("ndcg") else 0
        lines.append(f"| {name} | {en.get('ndcg', 0):.3f} | {en.get('recall', 0):.3f} | "
                     f"{en.get('mrr', 0):.3f} | {zh.get('ndcg', 0):.3f} | "
                     f"{zh.get('recall', 0):.3f} | {zh.get('mrr', 0):.3f} | {ratio:.2f} |")
    lines += ["", f"Tuned fusion weights: `{report['tuned_weights']}`", "",
              "| catalog | p50 ms/query | p99 ms/query |", "|---|---:|---:|"]
    for name, t in report["latency"].items():
        lines.append(f"| {name} | {t['p50_ms']} | {t['p99_ms']} |")
    lines += ["", "Joint space alone over the photos (text -> image), share of top-10 with the "
              "asked colour / article type:", "", "| query | colour@10 | type@10 |",
              "|---|---:|---:|"]
    for text, probe in report.get("joint_probes", {}).items():
        lines.append(f"| {text} | {probe['colour@10']:.1f} | {probe['type@10']:.1f} |")
    joint = report["content"].get("joint", {})
    if "heldout" in joint:
        lines += ["", f"Joint text-image space, held-out pairs ({joint['pairs_heldout']}):", "",
                  "| | " + " | ".join(joint["heldout"]) + " |",
                  "|---|" + "---:|" * len(joint["heldout"])]
        for name in ("heldout", "random_projection"):
            lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in joint[name].values())
                         + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
