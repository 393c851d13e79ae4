"""The `shopgraph` command line: thin wrappers over the library, errors as one clear line.

Heavy modules (torch, the importers) are imported inside the commands so `shopgraph --help`
and `shopgraph stats` start fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from kg.schema import DataError
from kg.store import GraphStore
from kg.workspace import DEFAULT_WORKSPACE, StoreKind, default_store_kind, open_store


def _workspace_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workspace", type=Path, default=None,
        help=f"directory for the embedded store and artifacts (default: $SHOPGRAPH_WORKSPACE "
             f"or ./{DEFAULT_WORKSPACE})",
    )


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _store_options(parser: argparse.ArgumentParser) -> None:
    _workspace_option(parser)
    parser.add_argument(
        "--store", choices=["embedded", "neo4j"], default=None,
        help="graph store (default: $SHOPGRAPH_STORE or embedded); neo4j reads NEO4J_URI, "
             "NEO4J_USER, NEO4J_PASSWORD",
    )


def _open(args: argparse.Namespace) -> GraphStore:
    kind: StoreKind = args.store or default_store_kind()
    return open_store(kind, args.workspace)


def cmd_load(args: argparse.Namespace) -> int:
    """Import a dataset into the store."""
    from kg.importers import get_importer

    started = time.perf_counter()
    build = get_importer(args.dataset)
    result = build(args.data_dir, not args.quiet)
    with _open(args) as store:
        report = store.load(result.batch, progress=not args.quiet)
        counts = store.counts()
    elapsed = time.perf_counter() - started
    summary = {
        "dataset": args.dataset, "store": args.store or default_store_kind(),
        "seconds": round(elapsed, 1), "read": result.stats, "notes": result.notes,
        "written": {"nodes": report.nodes, "relationships": report.relationships},
        "store_counts": counts,
    }
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"loaded {args.dataset} into the {summary['store']} store in {elapsed:.1f} s")
    for note in result.notes:
        print(f"  note: {note}")
    for key, value in result.stats.items():
        print(f"  read {key}: {value:,}")
    _print_counts(counts)
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    """Node counts per label and relationship counts per type."""
    with _open(args) as store:
        counts = store.counts()
    if args.json:
        print(json.dumps(counts))
    else:
        _print_counts(counts)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Content vectors and search indexes (if missing), then the hybrid recommender.

    With --no-content no encoder runs: the search artifacts become a lexical build (BM25 +
    graph, seconds), unless a full build is already there, which is kept as it is.
    """
    from kg.export import export_graph
    from kg.workspace import default_workspace
    from recommender.content import FULL, build_content, build_lexical, content_dir, content_mode
    from recommender.spark_als import SparkUnavailable, require_spark
    from recommender.training import HybridConfig, train_recommender

    if args.spark_master is not None and args.engine != "spark":
        raise ValueError("--spark-master needs --engine spark")
    try:
        if args.engine == "spark":
            require_spark()  # before minutes of content building, not after
    except SparkUnavailable as exc:
        print(f"shopgraph: error: {exc}", file=sys.stderr)
        return 2
    workspace = args.workspace or default_workspace()
    log = (lambda message: None) if args.quiet or args.json else print
    summary: dict = {}
    with _open(args) as store:
        existing = content_mode(workspace)
        if args.no_content and existing == FULL:
            summary["content"] = {"mode": FULL, "kept": True}
            log(f"kept the full content artifacts in {content_dir(workspace)} (--no-content "
                "builds lexical search only where there are no content vectors)")
        elif args.no_content:
            artifacts = build_lexical(store, workspace)
            summary["content"] = artifacts.meta
            if not args.json:
                _print_content(artifacts.meta, content_dir(workspace))
        elif args.rebuild_content or existing != FULL:
            artifacts = build_content(store, workspace, text_encoder=args.text_encoder,
                                      image_encoder=args.image_encoder,
                                      progress=not args.quiet)
            summary["content"] = artifacts.meta
            if not args.json:
                _print_content(artifacts.meta, content_dir(workspace))
        interactions = export_graph(store).rels["INTERACTED"]
        if interactions.empty:
            summary["recommender"] = None
            log("no interactions in the store: search is trained, the recommender is not")
        else:
            config = HybridConfig(als_engine=args.engine, spark_master=args.spark_master)
            if args.engine == "spark" and log is print:
                _log_spark_progress()
            if args.no_graph_filter:
                config.graph_filter = None
            if args.no_gnn:
                config.gnn = None
            elif args.gnn_epochs is not None:
                config.gnn = {**(config.gnn or {}), "epochs": args.gnn_epochs}
            try:
                summary["recommender"] = train_recommender(store, workspace, config,
                                                           holdout=args.holdout, log=log)
            except SparkUnavailable as exc:
                print(f"shopgraph: error: {exc}", file=sys.stderr)
                return 2
    if args.json:
        print(json.dumps(summary, default=str))
    elif summary.get("recommender"):
        rec = summary["recommender"]
        print(f"recommender {rec['version']} trained on {rec['interactions']:,} interactions "
              f"({rec['held_out']:,} held out) in {rec['seconds']} s")
    return 0


def _log_spark_progress() -> None:
    """Print the spark engine's progress lines (session, fit, heartbeats) as train's own."""
    import logging

    logger = logging.getLogger("recommender.spark_als")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def _print_content(meta: dict, directory: Path) -> None:
    from recommender.content import LEXICAL

    if meta.get("mode") == LEXICAL:
        print(f"lexical search artifacts for {meta['products']:,} products in {directory} "
              f"({meta['seconds']} s; BM25 + graph; no vectors: run without --no-content for "
              "dense text and photo search)")
        return
    print(f"content artifacts for {meta['products']:,} products ({meta['with_image']:,} with "
          f"a photo) in {directory} ({meta['seconds']} s)")
    if meta["image_errors"]:
        print(f"  skipped {meta['image_errors']} unreadable images, e.g. "
              f"{next(iter(meta['image_error_examples'].values()))}")
    joint = meta["joint"]
    if "heldout" in joint:
        shown = ", ".join(f"{k} {v:.3f}" for k, v in joint["heldout"].items())
        print(f"  joint text-image space, {joint['pairs_heldout']} held-out pairs: {shown}")


def cmd_recommend(args: argparse.Namespace) -> int:
    """Personalised recommendations for one user, or a file of user ids (JSON lines)."""
    from kg.workspace import default_workspace
    from recommender.service import RecommendationService, UnknownIdError

    if args.users is None and not args.user_id:
        raise ValueError("give a USER_ID or --users FILE")
    service = RecommendationService.load(args.workspace or default_workspace())
    options = {"k": args.k, "category": args.category, "brand": args.brand,
               "diversity": args.diversity, "explain": args.explain or args.json}
    if args.users is not None:
        if not args.users.is_file():
            raise FileNotFoundError(f"users file not found: {args.users}")
        for line in args.users.read_text(encoding="utf-8").splitlines():
            user = line.strip()
            if not user:
                continue
            try:
                items = [r.to_dict() for r in service.recommend(user, **options)]
                out = {"user": user, "items": items}
            except UnknownIdError as exc:
                out = {"user": user, "error": str(exc)}
            print(json.dumps(out, ensure_ascii=False), flush=True)
        return 0
    try:
        recs = service.recommend(args.user_id, **options)
    except UnknownIdError as exc:
        raise ValueError(str(exc)) from exc
    if args.json:
        print(json.dumps({"user": args.user_id, "items": [r.to_dict() for r in recs]},
                         ensure_ascii=False))
        return 0
    _print_items(recs, args.explain)
    return 0


def cmd_related(args: argparse.Namespace) -> int:
    """Products related to one product (co-purchase, graph, embeddings)."""
    from kg.workspace import default_workspace
    from recommender.service import RecommendationService, UnknownIdError

    service = RecommendationService.load(args.workspace or default_workspace())
    try:
        recs = service.related(args.product_id, k=args.k)
    except UnknownIdError as exc:
        raise ValueError(str(exc)) from exc
    if args.json:
        print(json.dumps({"product": args.product_id, "items": [r.to_dict() for r in recs]},
                         ensure_ascii=False))
        return 0
    _print_items(recs, True)
    return 0


def _print_items(recs: list, explain: bool) -> None:
    for rank, rec in enumerate(recs, start=1):
        title = rec.title or ""
        print(f"{rank:>3}. {rec.id:<12} {rec.score:7.3f}  {title}")
        if explain:
            for reason in rec.reasons:
                print(f"       - {reason}")


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Every model side by side on the data set's split (see recommender/experiment.py)."""
    from recommender.experiment import MODELS, load_split, markdown_table, run_models
    from recommender.training import HybridConfig

    models = args.models.split(",") if args.models else list(MODELS)
    log = (lambda message: None) if args.quiet or args.json else (
        lambda message: print(message, file=sys.stderr))
    split = load_split(args.dataset, args.data_dir, progress=not args.quiet,
                       protocol=args.protocol, cut=args.cut)
    config = HybridConfig(half_life=split.half_life)
    if args.gnn_epochs is not None and config.gnn is not None:
        config.gnn = {**config.gnn, "epochs": args.gnn_epochs}
    if args.no_gnn:
        config.gnn = None
        models = [m for m in models if m != "gnn"]
    report = run_models(split, models, config, k=args.k, log=log)
    if args.json:
        print(json.dumps(report, default=str))
    else:
        print(f"{args.dataset}: {split.description}")
        print(markdown_table(report))
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    """Text, image or text+image product search; one query, or a file of them."""
    from kg.workspace import default_workspace
    from recommender.search import ProductSearch

    if args.queries is None and not args.query and args.image is None:
        raise ValueError("give a QUERY, --image PATH, or --queries FILE")
    if args.image is not None and not args.image.is_file():
        raise FileNotFoundError(f"image not found: {args.image}")
    search = ProductSearch.load(args.workspace or default_workspace())
    options = {"k": args.k, "category": args.category, "brand": args.brand}
    if args.queries is not None:
        lines = Path(args.queries).read_text(encoding="utf-8").splitlines()
        for line in lines:
            if line.strip():
                result = search.search(line.strip(), **options)
                print(json.dumps(result.to_dict(), ensure_ascii=False), flush=True)
        return 0
    result = search.search(args.query or None, image=args.image, **options)
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
        return 0
    if args.explain:
        _print_understood(result.understood)
    elif result.understood.get("concepts"):
        found = ", ".join(f"{kind}={value}" for kind, value in result.understood["concepts"])
        print(f"understood: {found}")
    for rank, hit in enumerate(result.hits, start=1):
        print(f"{rank:>3}. {hit.id:<12} {hit.score:6.3f}  {hit.title}")
    return 0


def _print_understood(understood: dict) -> None:
    """How the query was read, step by step, so a merchant can see why and fix an alias."""
    if understood.get("converted_script"):
        print(f"script:      converted to simplified Chinese: {understood['normalised']}")
    for fix in understood.get("corrections", []):
        print(f"spelling:    {fix['typed']} -> {fix['corrected']}")
    for m in understood.get("mappings", []):
        score = f" ({m['score']:.3f})" if "score" in m else ""
        print(f"mapped:      {m['phrase']} -> {m['kind']}={m['value']} via {m['via']}{score}")
    if understood.get("dropped"):
        print(f"filler:      {' '.join(understood['dropped'])}")
    if understood.get("unknown"):
        print(f"unknown:     {' '.join(understood['unknown'])}")
    for group in understood.get("constraints", []):
        print("constraint:  " + " or ".join(f"{kind}={value}" for kind, value in group))
    if "search_text" in understood:
        print(f"searched as: {understood['search_text']!r} (BM25), "
              f"{understood.get('dense_text', '')!r} (dense)")
    if understood.get("image_type"):
        print(f"image type:  {understood['image_type']}")


def cmd_serve(args: argparse.Namespace) -> int:
    """The HTTP API over the workspace's artifacts and the graph store (Ctrl-C stops it)."""
    import uvicorn

    from api.app import EVENT_POLL_S, create_app

    if args.workers > 1:  # each worker builds its own app from the environment
        if args.workspace is not None:
            os.environ["SHOPGRAPH_WORKSPACE"] = str(args.workspace)
        if args.store is not None:
            os.environ["SHOPGRAPH_STORE"] = args.store
        os.environ["SHOPGRAPH_FOLLOW_EVENTS"] = "1"
        base = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}"
        print(f"shopgraph API on {base}:{args.port} ({args.workers} worker processes over one "
              "workspace and store; each picks up the others' events within "
              f"{EVENT_POLL_S:g} s)")
        uvicorn.run("api.app:app_from_env", factory=True, host=args.host, port=args.port,
                    workers=args.workers, log_level="warning")
        return 0
    app = create_app(args.workspace, store_kind=args.store)
    services = app.state.services
    base = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}:{args.port}"
    loaded = [name for name, part in (("search", services.current),
                                      ("recommender", services.recommender)) if part]
    serving = ", ".join(loaded) or ("nothing yet: run `shopgraph train`, then POST "
                                    "/admin/reload")
    print(f"shopgraph API on {base} (serving {serving})")
    print(f"  shop page: {base}/")
    print(f"  API docs:  {base}/docs")
    print(f"  readiness: {base}/ready")
    uvicorn.run(app, host=args.host, port=args.port)
    return 0


def _print_counts(counts: dict[str, dict[str, int]]) -> None:
    for section in ("nodes", "relationships"):
        print(f"{section}:")
        for name, n in counts[section].items():
            print(f"  {name:<16}{n:>12,}")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; one sub-command per capability."""
    parser = argparse.ArgumentParser(
        prog="shopgraph",
        description="Knowledge-graph-centred e-commerce search and recommendation.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    load = sub.add_parser("load", help="import a dataset into the graph store")
    load.add_argument("dataset", help="completejourney | fashion | ml100k-kg | generic")
    load.add_argument("--data-dir", type=Path, default=None,
                      help="where the dataset's files are (default: the dataset's own default; "
                           "required for generic)")
    load.add_argument("--json", action="store_true", help="print a JSON summary")
    load.add_argument("--quiet", action="store_true", help="no progress bars")
    _store_options(load)
    load.set_defaults(func=cmd_load)

    stats = sub.add_parser("stats", help="node and relationship counts")
    stats.add_argument("--json", action="store_true", help="print JSON")
    _store_options(stats)
    stats.set_defaults(func=cmd_stats)
    train = sub.add_parser("train", help="build content vectors, search indexes and the "
                                         "hybrid recommender")
    train.add_argument("--text-encoder", default="e5",
                       help="e5 (default, multilingual) | minilm | hf:/path/to/model")
    train.add_argument("--image-encoder", default="efficientnet-lite0",
                       help="efficientnet-lite0 (default) | hf:/path/to/clip")
    train.add_argument("--holdout", type=Path, default=None,
                       help="CSV of user_id,product_id interactions to leave out of training")
    train.add_argument("--no-content", action="store_true",
                       help="no encoders: lexical search (BM25 + graph) in seconds instead of "
                            "content vectors; a full content build already there is kept")
    train.add_argument("--rebuild-content", action="store_true",
                       help="rebuild content artifacts even when they exist")
    train.add_argument("--no-gnn", action="store_true",
                       help="hybrid without the GNN source (slow on a CPU); the closed-form "
                            "graph filter stays, as the graph-aware source")
    train.add_argument("--no-graph-filter", action="store_true",
                       help="hybrid without the graph filter source")
    train.add_argument("--gnn-epochs", type=int, default=None,
                       help="most GNN epochs (early stopping on validation picks fewer)")
    train.add_argument("--engine", choices=("implicit", "spark"), default="implicit",
                       help="what fits the ALS source: implicit (this process) or Spark "
                            "MLlib (local mode, or the cluster at --spark-master)")
    train.add_argument("--spark-master", default=None, metavar="URL",
                       help="Spark master for --engine spark, e.g. spark://host:7077, yarn, "
                            "k8s://https://host:6443 (default: local[threads])")
    train.add_argument("--json", action="store_true", help="print a JSON summary")
    train.add_argument("--quiet", action="store_true", help="no progress output")
    _store_options(train)
    train.set_defaults(func=cmd_train)

    recommend = sub.add_parser("recommend", help="personalised recommendations for a user")
    recommend.add_argument("user_id", nargs="?", default="", help="a user id")
    recommend.add_argument("--users", type=Path, default=None,
                           help="a file with one user id per line; one JSON line per user")
    recommend.add_argument("--k", type=int, default=10, help="how many (default 10)")
    recommend.add_argument("--category", default=None, help="only this category (path prefix)")
    recommend.add_argument("--brand", default=None, help="only this brand")
    recommend.add_argument("--diversity", type=float, default=0.0,
                           help="0 (default, pure relevance) .. 1 (MMR diversity re-ranking)")
    recommend.add_argument("--explain", action="store_true", help="say why each item")
    recommend.add_argument("--json", action="store_true", help="print JSON (with reasons)")
    _workspace_option(recommend)
    recommend.set_defaults(func=cmd_recommend)

    related = sub.add_parser("related", help="products related to a product")
    related.add_argument("product_id", help="a product id")
    related.add_argument("--k", type=int, default=10, help="how many (default 10)")
    related.add_argument("--json", action="store_true", help="print JSON")
    _workspace_option(related)
    related.set_defaults(func=cmd_related)

    evaluation = sub.add_parser("evaluate", help="all models side by side on a data set's "
                                                 "split")
    evaluation.add_argument("dataset", help="ml100k-kg | gowalla | completejourney")
    evaluation.add_argument("--data-dir", type=Path, default=None,
                            help="where the data set's files are (default: its own default)")
    evaluation.add_argument("--models", default=None,
                            help="comma-separated subset of popularity,itemknn,bpr,als,gnn,"
                                 "hybrid (default: all)")
    evaluation.add_argument("--protocol", default=None,
                            choices=("per-user", "global-time", "random", "published"),
                            help="how test rows are chosen: each user's latest 20 %% "
                                 "(per-user), everything after a time cut (global-time: how a "
                                 "deployed model is used), a random 20 %% per user, or the "
                                 "data set's own split (published, gowalla); default: the "
                                 "data set's usual one")
    evaluation.add_argument("--cut", type=float, default=None,
                            help="share of rows that trains (0.8), or for global-time a "
                                 "quantile of timestamps or a Unix timestamp")
    evaluation.add_argument("--k", type=int, default=20, help="cut-off K (default 20)")
    evaluation.add_argument("--gnn-epochs", type=int, default=None, help="most GNN epochs")
    evaluation.add_argument("--no-gnn", action="store_true",
                            help="leave the GNN out of the hybrid (it is slow on a CPU; the "
                                 "graph filter source stays)")
    evaluation.add_argument("--json", action="store_true", help="print the full JSON report")
    evaluation.add_argument("--quiet", action="store_true", help="no progress output")
    evaluation.set_defaults(func=cmd_evaluate)

    search = sub.add_parser("search", help="search products by text and/or image")
    search.add_argument("query", nargs="?", default="", help="words, Chinese or English")
    search.add_argument("--image", type=Path, default=None, help="a photo to search by")
    search.add_argument("--queries", type=Path, default=None,
                        help="a file with one query per line; prints one JSON line per query")
    search.add_argument("--k", type=int, default=10, help="how many results (default 10)")
    search.add_argument("--category", default=None, help='e.g. "Apparel > Topwear"')
    search.add_argument("--brand", default=None, help="brand name")
    search.add_argument("--json", action="store_true", help="print JSON")
    search.add_argument("--explain", action="store_true",
                        help="show how the query was understood (script, spelling, aliases, "
                             "embedding mappings, graph constraints)")
    _workspace_option(search)
    search.set_defaults(func=cmd_search)

    serve = sub.add_parser("serve", help="run the HTTP API (search, recommendations, events)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="interface to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--workers", type=_positive_int, default=1,
                       help="server processes sharing the workspace and store (default 1; "
                            "about one per core)")
    _store_options(serve)
    serve.set_defaults(func=cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `shopgraph` console script."""
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except DataError as exc:
        print(f"shopgraph: bad input: {exc}", file=sys.stderr)
        return 2
    except (ValueError, ConnectionError, FileNotFoundError) as exc:
        print(f"shopgraph: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
