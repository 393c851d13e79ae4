"""The `shopgraph` command line: thin wrappers over the library, errors as one clear line.

Heavy modules (torch, the importers) are imported inside the commands so `shopgraph --help`
and `shopgraph stats` start fast.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from kg.schema import DataError
from kg.store import GraphStore
from kg.workspace import DEFAULT_WORKSPACE, StoreKind, default_store_kind, open_store


def _store_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workspace", type=Path, default=None,
        help=f"directory for the embedded store and artifacts (default: $SHOPGRAPH_WORKSPACE "
             f"or ./{DEFAULT_WORKSPACE})",
    )
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
