"""Search quality and latency on the fashion catalog, every system side by side in one run.

Two query sets. Templated: built from the catalog's own attributes ("{gender} {colour}
{articleType}", "{colour} {articleType} for {usage}") plus Chinese twins of a subset rendered
with the graph's Chinese display names, written once to benchmarks/queries/fashion.jsonl; fusion
weights are tuned on its development half and every figure is reported on the test half.
Shoppers (issue 15): benchmarks/queries/fashion_shoppers.jsonl, queries written by hand as a
new user types them (synonyms, typos, sentences, brands, traditional Chinese / spelling
variants; English and Chinese), before and independently of the alias lists; none tunes
anything. A product is relevant when it carries every attribute of its query (a list = any of).

    python benchmarks/search.py [--workspace benchmarks/.work/fashion] [--regenerate]
        [--text-only]   # no photos encoded: dense text + BM25 + graph (the image source off)

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
SHOPPERS = ROOT / "benchmarks" / "queries" / "fashion_shoppers.jsonl"
RESULTS = ROOT / "benchmarks" / "results"
COMMAND = "python benchmarks/search.py"
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


def relevant_rows(catalog: pd.DataFrame, attributes: dict[str, str | list[str]]) -> np.ndarray:
    """Rows carrying every attribute (a list: any of its values). A brand ignores case and
    takes in its lines, as the query files define it: "Casio" is also "CASIO Enticer"."""
    frame = catalog.assign(articleType=article_type(catalog))
    mask = np.ones(len(frame), dtype=bool)
    for key, value in attributes.items():
        values = value if isinstance(value, list) else [value]
        column = frame[{"baseColour": "colour"}.get(key, key)]  # styles.csv's own name
        if key == "brand":
            names = column.fillna("").str.lower()
            hit = np.zeros(len(frame), dtype=bool)
            for brand in (v.lower() for v in values):
                hit |= ((names == brand) | names.str.startswith(brand + " ")).to_numpy(bool)
            mask &= hit
            continue
        mask &= column.isin(values).fillna(False).to_numpy(bool)
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

    def __init__(self, search, artifacts, sources=None) -> None:  # noqa: ANN001
        import bm25s

        from recommender.search import SOURCES

        self.search = search
        self.sources = tuple(sources or SOURCES)
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
        def ranked(text: str) -> list[str]:
            try:
                return [h.id for h in self.search.search(text, k=K, sources=(source,)).hits]
            except ValueError:  # the graph source alone cannot score a query it cannot map
                return []
        return ranked

    def fused(self, method: str, weights: dict[str, float] | None = None,
              search=None):  # noqa: ANN001, ANN201
        search = search or self.search
        return lambda text: [h.id for h in search.search(
            text, k=K, fusion=method, weights=weights, sources=self.sources).hits]


def evaluate(system, queries: list[dict], relevant: dict[str, set[str]]) -> dict:  # noqa: ANN001
    by_lang: dict[str, list[dict]] = {}
    for q in queries:
        by_lang.setdefault(q["lang"], []).append(metrics(system(q["text"]), relevant[q["id"]]))
    return {lang: mean(rows) for lang, rows in by_lang.items()}


def evaluate_kinds(system, queries: list[dict], relevant: dict[str, set[str]]  # noqa: ANN001
                   ) -> dict[str, dict]:
    """Per kind of query and language ("typo/zh"), plus "all/en" and "all/zh"."""
    rows: dict[str, list[dict]] = {}
    for q in queries:
        m = metrics(system(q["text"]), relevant[q["id"]])
        rows.setdefault(f"{q['kind']}/{q['lang']}", []).append(m)
        rows.setdefault(f"all/{q['lang']}", []).append(m)
    return {key: {**mean(r), "queries": len(r)} for key, r in sorted(rows.items())}


def without_aliases(artifacts):  # noqa: ANN001, ANN201
    """The same artifacts with the graph's `aliases` property removed (an ablation)."""
    import dataclasses

    def drop(frame):  # noqa: ANN001, ANN202
        return None if frame is None else frame.drop(columns=["aliases"], errors="ignore")

    return dataclasses.replace(artifacts, attributes=drop(artifacts.attributes),
                               categories=drop(artifacts.categories),
                               brands=drop(artifacts.brands))


def lexical_artifacts(store):  # noqa: ANN001, ANN201
    """`build_lexical` in memory: catalog, documents and graph tables, no vectors."""
    from kg.schema import ATTRIBUTE, BRAND, CATEGORY
    from recommender.content import ContentArtifacts, _catalog, catalog_documents

    catalog = _catalog(store)
    return ContentArtifacts(
        catalog=catalog, documents=catalog_documents(catalog),
        attributes=store.node_table(ATTRIBUTE), categories=store.node_table(CATEGORY),
        brands=store.node_table(BRAND), meta={"mode": "lexical", "products": len(catalog)})


def text_only_artifacts(store, workspace: Path, progress: bool = True,  # noqa: ANN001, ANN201
                        cached_only: bool = False):
    """Content artifacts without photos: E5 document vectors (cached by content hash), no image
    features; the joint space is left untrained, so the image source must stay off.
    `cached_only`: the catalog shrinks to the products whose vectors are already cached."""
    from encoders.cache import EmbeddingCache, encode_texts_cached, text_key
    from encoders.joint import JointSpace
    from encoders.text import load_text_encoder
    from kg.schema import ATTRIBUTE, BRAND, CATEGORY
    from recommender.content import ContentArtifacts, _catalog, catalog_documents

    catalog = _catalog(store)
    documents = catalog_documents(catalog)
    text = load_text_encoder("e5")
    cache = EmbeddingCache(workspace / "cache" / "embeddings", text.name)
    if cached_only:
        keep = [i for i, d in enumerate(documents) if text_key(d, "passage") in cache]
        catalog = catalog.iloc[keep].reset_index(drop=True)
        documents = [documents[i] for i in keep]
    vectors = encode_texts_cached(text, documents, cache, kind="passage", progress=progress)
    joint = JointSpace(1, text.dim)
    n = len(catalog)
    return ContentArtifacts(
        catalog=catalog, documents=documents, text_vectors=vectors,
        image_features=np.zeros((n, 1), dtype=np.float32), has_image=np.zeros(n, dtype=bool),
        joint=joint, joint_vectors=joint.embed_texts(vectors),
        attributes=store.node_table(ATTRIBUTE), categories=store.node_table(CATEGORY),
        brands=store.node_table(BRAND),
        meta={"mode": "full", "text_encoder": text.name, "text_spec": "e5",
              "products": n, "with_image": 0, "text_only": True})


def is_dev(query: dict) -> bool:
    """Half of the query pairs tune fusion; the other half is reported (twins stay together)."""
    key = query.get("twin", query["id"])
    return hashlib.sha256(key.encode()).digest()[0] % 2 == 0


def tune_weights(systems: Systems, dev: list[dict], relevant: dict) -> dict[str, float]:
    """Grid search of the weighted-sum fusion on development queries (English + Chinese)."""
    grid = {"bm25": [0.0, 0.5, 1.0], "text": [0.5, 1.0] if "text" in systems.sources else [0.0],
            "image": [0.0, 0.3] if "image" in systems.sources else [0.0],
            "graph": [0.5, 1.0, 2.0]}
    best, best_score = None, -1.0
    for values in itertools.product(*grid.values()):
        weights = dict(zip(grid, values, strict=True))
        result = evaluate(systems.fused("weighted", weights), dev, relevant)
        score = float(np.mean([r["ndcg"] for r in result.values()]))
        if score > best_score:
            best, best_score = weights, score
    return best or {}


def latency(search, texts: list[str], repeat: int = 1, sources=None  # noqa: ANN001
            ) -> dict[str, float]:
    from recommender.search import SOURCES

    search.understanding.prepare()  # graph names embedded once, as a server does at start
    times = []
    for _ in range(repeat):
        for text in texts:
            search._query_vectors.clear()  # time the query encoding too, as a new query pays it
            t0 = time.perf_counter()
            search.search(text, k=K, sources=tuple(sources or SOURCES))
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
    parser.add_argument("--text-only", action="store_true",
                        help="encode no photos: dense text, BM25 and graph (image source off)")
    parser.add_argument("--lexical", action="store_true",
                        help="no encoder at all: BM25 + graph only (`train --no-content`)")
    parser.add_argument("--cached-only", action="store_true",
                        help="with --text-only: only the products whose E5 vectors are cached "
                             "(a partial catalog, when encoding all of it takes too long)")
    parser.add_argument("--shoppers", type=Path, default=SHOPPERS,
                        help="the shopper query file (default: fashion_shoppers.jsonl; "
                             "fashion_shoppers_blind.jsonl was written by someone who never "
                             "saw the alias lists or the code)")
    parser.add_argument("--out", default="search",
                        help="results file name in benchmarks/results (default: search)")
    args = parser.parse_args()

    from kg.importers import load_dataset
    from kg.workspace import open_store
    from recommender.content import ContentArtifacts, build_content, content_dir
    from recommender.search import SOURCES, ProductSearch

    store = open_store("embedded", args.workspace)
    # the graph carries the lexicons' names and aliases as they were at its load: load again
    # (a merge) whenever a lexicon file changed since
    stamp = args.workspace / "lexicons.sha256"
    lexicons = hashlib.sha256(b"".join(
        p.read_bytes() for p in sorted((ROOT / "kg" / "lexicons").glob("*.tsv")))).hexdigest()
    if (store.counts()["nodes"]["Product"] == 0
            or not stamp.exists() or stamp.read_text() != lexicons):
        print("loading fashion (the graph is empty or the lexicons changed) ...",
              file=sys.stderr)
        load_dataset("fashion", store, progress=True)
        stamp.write_text(lexicons)
    sources = tuple(s for s in SOURCES if s != "image") if args.text_only else SOURCES
    if args.lexical:
        sources = ("bm25", "graph")
        artifacts = lexical_artifacts(store)
    elif args.text_only:
        artifacts = text_only_artifacts(store, args.workspace, cached_only=args.cached_only)
    else:
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
    shoppers = [json.loads(line) for line in args.shoppers.read_text().splitlines()]
    ids = np.array(artifacts.ids)
    relevant = {q["id"]: set(ids[relevant_rows(catalog, q["attributes"])])
                for q in queries + shoppers}
    # a partial catalog may hold no relevant product for some queries: those say nothing
    queries = [q for q in queries if relevant[q["id"]]]
    shoppers = [q for q in shoppers if relevant[q["id"]]]
    dev = [q for q in queries if is_dev(q)]
    test = [q for q in queries if not is_dev(q)]

    systems = Systems(search, artifacts, sources)
    weights = dict(search.weights) if args.no_tune else tune_weights(systems, dev, relevant)
    if args.text_only or args.lexical:
        weights["image"] = 0.0
    if args.lexical:
        weights["text"] = 0.0
    plain = ProductSearch(without_aliases(artifacts), text_encoder=search.text_encoder)
    always = None if args.lexical else ProductSearch(artifacts, text_encoder=search.text_encoder,
                                                     dense="always")
    table = {
        "BM25 titles": systems.bm25_titles,
        "BM25 title+graph fields (stemmed)": systems.bm25_fields,
        **({} if args.lexical else {"dense text (E5, raw query)": systems.dense_raw}),
        **({} if args.text_only or args.lexical
           else {"image / joint space alone": systems.one_source("image")}),
        "graph query understanding alone": systems.one_source("graph"),
        "fused: max": systems.fused("max"),
        "fused: RRF": systems.fused("rrf"),
        "fused: weighted (tuned)": systems.fused("weighted", weights),
    }
    results = {name: evaluate(system, test, relevant) for name, system in table.items()}
    shopper_table = {
        "BM25 title+graph fields (stemmed)": systems.bm25_fields,
        **({} if args.lexical else {"dense text (E5, raw query)": systems.dense_raw}),
        "pipeline without graph aliases": systems.fused("weighted", weights, plain),
        **({} if always is None else {
            "pipeline, dense model on every query": systems.fused("weighted", weights, always)}),
        "pipeline (fused, weighted)": systems.fused("weighted", weights),
    }
    by_kind = {name: evaluate_kinds(system, shoppers, relevant)
               for name, system in shopper_table.items()}
    misses = []
    for q in shoppers:
        m = metrics(systems.fused("weighted", weights)(q["text"]), relevant[q["id"]])
        if m["ndcg"] < 0.5:
            misses.append({"id": q["id"], "text": q["text"], "ndcg": round(m["ndcg"], 3),
                           "understood": search.understanding.parse(q["text"]).explain()})

    probes = {} if args.text_only or args.lexical else joint_probes(search, artifacts)
    english = [q["text"] for q in test if q["lang"] == "en"][:100]
    chinese = [q["text"] for q in test if q["lang"] == "zh"][:50]
    search.weights = weights
    mix = english + chinese + [q["text"] for q in shoppers]
    timing = {f"{len(artifacts.ids):,} products (all), templated + shopper queries":
              latency(search, mix, sources=sources)}
    if always is not None:
        always.weights = weights
        timing[f"{len(artifacts.ids):,} products, dense model on every query"] = latency(
            always, mix, sources=sources)
    if not (args.text_only or args.lexical):
        with_image = np.flatnonzero(artifacts.has_image)
        small = ProductSearch(artifacts.subset(with_image), text_encoder=search.text_encoder,
                              weights=weights)
        timing[f"{len(with_image):,} products (those with photos)"] = latency(small, mix)
    report = {
        "machine": machine(), "queries": {"dev": len(dev), "test": len(test),
                                          "file": os.path.relpath(QUERIES, ROOT),
                                          "shoppers": len(shoppers),
                                          "shoppers_file": os.path.relpath(
                                              args.shoppers.resolve(), ROOT)},
        "command": COMMAND + (" --text-only" if args.text_only else "")
        + (" --cached-only" if args.cached_only else "")
        + (" --lexical" if args.lexical else "")
        + (f" --shoppers {os.path.relpath(args.shoppers.resolve(), ROOT)}"
           if args.shoppers != SHOPPERS else "") + (f" --out {args.out}"
                                                    if args.out != "search" else ""),
        "sources": list(sources),
        "tuned_weights": weights, "results": results, "shoppers": by_kind,
        "shopper_misses": misses, "latency": timing, "joint_probes": probes,
        "content": artifacts.meta,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
    (RESULTS / f"{args.out}.md").write_text(markdown(report))
    print(markdown(report))


def markdown(report: dict) -> str:
    lines = [f"# Search benchmark: fashion catalog ({report['content']['products']:,} products)",
             "",
             f"Machine: {report['machine']}. Command: `{report.get('command', COMMAND)}`. "
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
    shoppers = report.get("shoppers")
    if shoppers:
        names = list(shoppers)
        lines += ["", f"## Shopper queries ({report['queries']['shoppers']}, "
                  f"`{report['queries']['shoppers_file']}`): nDCG@10 per kind of query", "",
                  "Written by hand as a new user types, before and independently of the alias "
                  "lists; nothing is tuned on them. `pipeline without graph aliases` is the "
                  "same pipeline with the `aliases` node property removed (OpenCC, spelling, "
                  "filler and embedding mapping only, plus the `names_zh` lexicon).", "",
                  "| kind | " + " | ".join(f"{n} en | {n} zh" for n in names) + " |",
                  "|---|" + "---:|---:|" * len(names)]
        kinds = sorted({key.split("/")[0] for key in shoppers[names[0]]},
                       key=lambda k: (k == "all", k))
        for kind in kinds:
            cells = []
            for n in names:
                for lang in ("en", "zh"):
                    r = shoppers[n].get(f"{kind}/{lang}")
                    cells.append(f"{r['ndcg']:.3f} ({r['queries']})" if r else "-")
            lines.append(f"| {kind} | " + " | ".join(cells) + " |")
        lines += ["", "(n) = queries of that kind and language. Queries the pipeline still "
                  f"misses (nDCG@10 < 0.5): {len(report.get('shopper_misses', []))}, listed "
                  "with how each was understood in search.json (`shopper_misses`)."]
    lines += ["", f"Tuned fusion weights: `{report['tuned_weights']}`"
              f" (sources: {', '.join(report.get('sources', []))})", "",
              "| catalog | p50 ms/query | p99 ms/query |", "|---|---:|---:|"]
    for name, t in report["latency"].items():
        lines.append(f"| {name} | {t['p50_ms']} | {t['p99_ms']} |")
    if report.get("joint_probes"):
        lines += ["", "Joint space alone over the photos (text -> image), share of top-10 with "
                  "the asked colour / article type:", "", "| query | colour@10 | type@10 |",
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
