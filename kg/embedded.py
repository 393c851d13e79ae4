"""`EmbeddedStore`: the product graph in plain files, no server needed.

Tables (one Parquet file per label and relationship type) are the system of record; a
networkx MultiDiGraph is built from them on demand for traversals. Each load writes a complete
new version directory and then flips the `CURRENT` pointer with an atomic rename, so a crash or
a failed load never leaves a half-written store: readers see the old version or the new one.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import uuid
from collections.abc import Iterable
from pathlib import Path

import networkx as nx
import pandas as pd
from tqdm.auto import tqdm

from kg.schema import (
    ENDPOINT_COLUMNS,
    INTERACTED,
    NODE_LABELS,
    REL_TYPES,
    GraphBatch,
    RelType,
    Scalar,
    nullable,
    upsert_frame,
)
from kg.store import GraphStore, NodeRef, row_props

FORMAT_VERSION = 1


class EmbeddedStore(GraphStore):
    """A graph store in `directory` (created if missing) that persists across runs."""

    name = "embedded"

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._graph: nx.MultiDiGraph | None = None
        self._id_index: dict[str, tuple[pd.DataFrame, pd.Index]] = {}
        self._nodes: dict[str, pd.DataFrame] = {}
        self._rels: dict[str, pd.DataFrame] = {}
        self._version = self._read_current()
        if self._version:
            self._read_tables(self.directory / self._version)

    # ---- persistence ----------------------------------------------------------------------
    def _read_current(self) -> str | None:
        pointer = self.directory / "CURRENT"
        return pointer.read_text().strip() if pointer.exists() else None

    def _read_tables(self, version_dir: Path) -> None:
        manifest = json.loads((version_dir / "manifest.json").read_text())
        if manifest.get("format") != FORMAT_VERSION:
            raise RuntimeError(f"{version_dir}: unsupported store format {manifest.get('format')}")
        for label in manifest["nodes"]:
            self._nodes[label] = pd.read_parquet(version_dir / "nodes" / f"{label}.parquet")
        for name in manifest["relationships"]:
            self._rels[name] = pd.read_parquet(version_dir / "rels" / f"{name}.parquet")

    def _commit(
        self, nodes: dict[str, pd.DataFrame], rels: dict[str, pd.DataFrame], changed: set[str]
    ) -> None:
        """Write a new version (hard-linking unchanged tables) and flip CURRENT atomically."""
        version = f"v-{uuid.uuid4().hex[:12]}"
        new_dir = self.directory / f".{version}.tmp"
        old_dir = self.directory / self._version if self._version else None
        for sub, tables in (("nodes", nodes), ("rels", rels)):
            (new_dir / sub).mkdir(parents=True)
            for name, frame in tables.items():
                target = new_dir / sub / f"{name}.parquet"
                previous = old_dir / sub / f"{name}.parquet" if old_dir else None
                if name not in changed and previous is not None and previous.exists():
                    os.link(previous, target)
                else:
                    _parquet_safe(frame).to_parquet(target, index=False)
        manifest = {"format": FORMAT_VERSION, "nodes": sorted(nodes), "relationships": sorted(rels)}
        (new_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))
        os.replace(new_dir, self.directory / version)
        pointer_tmp = self.directory / f".CURRENT.{version}.tmp"
        pointer_tmp.write_text(version)
        os.replace(pointer_tmp, self.directory / "CURRENT")
        self._version = version
        for stale in self.directory.iterdir():
            if stale.name != version and stale.name != "CURRENT":
                shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink()

    # ---- GraphStore primitives ------------------------------------------------------------
    def existing_ids(self, label: str, ids: Iterable[str]) -> set[str]:
        table = self._nodes.get(label)
        if table is None:
            return set()
        wanted = pd.Index(list(ids))
        return set(wanted[wanted.isin(table["id"])])

    def _write(self, batch: GraphBatch, progress: bool) -> None:
        with self._lock:
            nodes, rels = dict(self._nodes), dict(self._rels)
            changed: set[str] = set()
            steps = [*batch.labels, *(r.name for r in batch.rel_types)]
            with tqdm(total=len(steps), desc="embedded: merge", disable=not progress) as bar:
                for label in batch.labels:
                    nodes[label] = _merge(nodes.get(label), batch.node_frame(label), ["id"])
                    changed.add(label)
                    bar.update()
                for rel in batch.rel_types:
                    keys = list(ENDPOINT_COLUMNS)
                    rels[rel.name] = _merge(rels.get(rel.name), batch.rel_frame(rel), keys)
                    changed.add(rel.name)
                    bar.update()
            self._commit(nodes, rels, changed)
            self._nodes, self._rels, self._graph = nodes, rels, None

    def node_table(self, label: str) -> pd.DataFrame:
        table = self._nodes.get(label)
        if table is None:
            return pd.DataFrame({"id": pd.Series(dtype=str)})
        return table.copy()

    def rel_table(self, rel: RelType) -> pd.DataFrame:
        table = self._rels.get(rel.name)
        if table is None:
            return pd.DataFrame({c: pd.Series(dtype=str) for c in ENDPOINT_COLUMNS})
        return table.copy()

    def get_node(self, label: str, node_id: str) -> dict[str, Scalar] | None:
        table = self._nodes.get(label)
        if table is None:
            return None
        cached = self._id_index.get(label)
        if cached is None or cached[0] is not table:  # tables are replaced, never mutated
            cached = (table, pd.Index(table["id"]))
            self._id_index[label] = cached
        position = cached[1].get_indexer([str(node_id)])[0]
        if position < 0:
            return None
        return row_props(table.iloc[position].to_dict())

    def _adjacent(
        self, frontier: list[NodeRef], rel_types: list[str] | None
    ) -> list[tuple[NodeRef, str, NodeRef]]:
        # vectorised look-ups on the tables: far cheaper than building the networkx view
        out: list[tuple[NodeRef, str, NodeRef]] = []
        for name, frame in self._rels.items():
            if rel_types is not None and name not in rel_types:
                continue
            rel = REL_TYPES[name]
            for here, there, here_label, there_label in (
                ("source", "target", rel.source, rel.target),
                ("target", "source", rel.target, rel.source),
            ):
                ids = [i for label, i in frontier if label == here_label]
                if not ids:
                    continue
                hit = frame[frame[here].isin(ids)]
                out.extend(((here_label, a), name, (there_label, b))
                           for a, b in zip(hit[here], hit[there]))
        return out

    def _interaction_rows(
        self, user_id: str | None, product_id: str | None, kind: str | None
    ) -> pd.DataFrame:
        table = self.rel_table(INTERACTED)
        mask = pd.Series(True, index=table.index)
        if user_id is not None:
            mask &= table["source"] == user_id
        if product_id is not None:
            mask &= table["target"] == product_id
        if kind is not None:
            mask &= table["key"] == kind
        return table[mask]

    def delete_nodes(self, label: str, ids: Iterable[str]) -> int:
        doomed = {str(i) for i in ids}
        with self._lock:
            table = self._nodes.get(label)
            if table is None or not doomed:
                return 0
            keep = ~table["id"].isin(doomed)
            deleted = int((~keep).sum())
            nodes = {**self._nodes, label: table[keep].reset_index(drop=True)}
            rels = dict(self._rels)
            changed = {label}
            for name, frame in self._rels.items():
                rel = REL_TYPES[name]
                touching = pd.Series(False, index=frame.index)
                if rel.source == label:
                    touching |= frame["source"].isin(doomed)
                if rel.target == label:
                    touching |= frame["target"].isin(doomed)
                if touching.any():
                    rels[name] = frame[~touching].reset_index(drop=True)
                    changed.add(name)
            self._commit(nodes, rels, changed)
            self._nodes, self._rels, self._graph = nodes, rels, None
            return deleted

    def delete_relationships(self, rel: RelType, keys: Iterable[tuple[str, str, str]]) -> int:
        doomed = pd.MultiIndex.from_tuples([tuple(map(str, k)) for k in keys])
        with self._lock:
            frame = self._rels.get(rel.name)
            if frame is None or len(doomed) == 0:
                return 0
            index = pd.MultiIndex.from_frame(frame[list(ENDPOINT_COLUMNS)])
            hit = index.isin(doomed)
            rels = {**self._rels, rel.name: frame[~hit].reset_index(drop=True)}
            self._commit(dict(self._nodes), rels, {rel.name})
            self._rels, self._graph = rels, None
            return int(hit.sum())

    def counts(self) -> dict[str, dict[str, int]]:
        return {
            "nodes": {lb: len(self._nodes.get(lb, ())) for lb in NODE_LABELS},
            "relationships": {name: len(self._rels.get(name, ())) for name in REL_TYPES},
        }

    def clear(self) -> None:
        with self._lock:
            self._commit({}, {}, set())
            self._nodes, self._rels, self._graph = {}, {}, None

    # ---- networkx view --------------------------------------------------------------------
    def graph(self) -> nx.MultiDiGraph:
        """The whole store as a networkx MultiDiGraph keyed by (label, id); built once per version.

        Edge keys are `TYPE` or `TYPE:key` and every edge carries its properties plus `type`.
        """
        with self._lock:
            if self._graph is None:
                graph = nx.MultiDiGraph()
                for label, table in self._nodes.items():
                    graph.add_nodes_from((label, i) for i in table["id"])
                for name, frame in self._rels.items():
                    rel = REL_TYPES[name]
                    graph.add_edges_from(
                        ((rel.source, s), (rel.target, t), f"{name}:{k}" if k else name,
                         {"type": name})
                        for s, t, k in zip(frame["source"], frame["target"], frame["key"])
                    )
                self._graph = graph
            return self._graph


def _merge(old: pd.DataFrame | None, new: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Upsert `new` into `old` with `SET += row` semantics, in nullable dtypes."""
    frame = new if old is None or old.empty else pd.concat([old, nullable(new)],
                                                            ignore_index=True)
    return nullable(upsert_frame(frame, keys).sort_values(keys, ignore_index=True))


def _parquet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """Cast object columns that mix value types to strings so Parquet can store them."""
    fixed = {}
    for column in frame.columns:
        if frame[column].dtype == object:
            kinds = {type(v) for v in frame[column].dropna()}
            if len(kinds) > 1:
                fixed[column] = frame[column].map(lambda v: v if pd.isna(v) else str(v))
    return frame.assign(**fixed) if fixed else frame
