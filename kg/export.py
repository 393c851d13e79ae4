"""Snapshots of a store for learning: a PyG `HeteroData` and a user x product CSR matrix.

Both use the same id maps — every label's ids sorted as strings, row `i` of a node type is
`ids[label][i]` — so a GNN's product rows, ALS's item columns and the graph agree by
construction, and the same store always exports the same numbering.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

from kg.schema import INTERACTED, NODE_LABELS, PRODUCT, REL, REL_TYPES, USER
from kg.store import GraphStore

if TYPE_CHECKING:
    from torch_geometric.data import HeteroData


def node_type(label: str) -> str:
    """PyG node type name for a label (`Product` -> `product`)."""
    return label.lower()


def edge_type(rel_name: str) -> tuple[str, str, str]:
    """PyG edge type for a relationship type, e.g. `('product', 'made_by', 'brand')`."""
    rel = REL_TYPES[rel_name]
    return node_type(rel.source), rel.name.lower(), node_type(rel.target)


@dataclass
class GraphSnapshot:
    """Every node and relationship table of a store plus the id maps derived from them."""

    nodes: dict[str, pd.DataFrame]
    rels: dict[str, pd.DataFrame]
    ids: dict[str, list[str]]

    @classmethod
    def from_store(cls, store: GraphStore) -> GraphSnapshot:
        nodes, rels = store.tables()
        ids = {label: sorted(nodes[label]["id"].astype(str)) for label in NODE_LABELS}
        return cls(nodes, rels, ids)

    def index(self, label: str) -> dict[str, int]:
        """Id -> row number for `label`."""
        return {node_id: i for i, node_id in enumerate(self.ids[label])}

    def _positions(self, label: str, values: pd.Series) -> np.ndarray:
        lookup = pd.Index(self.ids[label])
        pos = lookup.get_indexer(values.astype(str))
        if (pos < 0).any():
            bad = values.astype(str)[pos < 0].iloc[0]
            raise ValueError(f"relationship points at unknown {label} {bad!r}")
        return pos

    def interaction_matrix(self, kinds: list[str] | None = None, split: str | None = None
                           ) -> sp.csr_matrix:
        """Users x products, summing `weight` over the chosen interaction kinds (all if None).

        `split` keeps only relationships whose `split` property has that value (data sets that
        ship their own train/test split, such as gowalla).
        """
        table = self.rels[INTERACTED.name]
        if kinds is not None:
            table = table[table["key"].isin(kinds)]
        if split is not None:
            if "split" not in table:
                raise ValueError("these interactions carry no `split` property")
            table = table[table["split"] == split]
        weights = _numeric(table, "weight", 1.0).astype(float)
        rows = self._positions(USER, table["source"])
        cols = self._positions(PRODUCT, table["target"])
        shape = (len(self.ids[USER]), len(self.ids[PRODUCT]))
        matrix = sp.coo_matrix((weights, (rows, cols)), shape=shape).tocsr()
        matrix.sum_duplicates()
        return matrix

    def to_hetero_data(self) -> HeteroData:
        """A PyG HeteroData: `num_nodes` and `ids` per node type, `edge_index` per relationship.

        INTERACTED edges also carry `edge_weight` and `edge_time`; REL edges carry `edge_label`
        (an index into `data['entity', 'rel', 'entity'].relations`). Node features are added
        by the encoders, not here.
        """
        import torch
        from torch_geometric.data import HeteroData

        data = HeteroData()
        for label in NODE_LABELS:
            store = data[node_type(label)]
            store.num_nodes = len(self.ids[label])
            store.ids = list(self.ids[label])
        for name, rel in REL_TYPES.items():
            table = self.rels[name]
            if table.empty:
                continue
            src = self._positions(rel.source, table["source"])
            dst = self._positions(rel.target, table["target"])
            edges = data[edge_type(name)]
            edges.edge_index = torch.as_tensor(np.vstack([src, dst]), dtype=torch.long)
            if name == INTERACTED.name:
                weight = _numeric(table, "weight", 1.0).astype(np.float32)
                edges.edge_weight = torch.as_tensor(weight)
                edges.edge_time = torch.as_tensor(_numeric(table, "ts", 0).astype(np.int64))
            if name == REL.name:
                relations = sorted(table["key"].astype(str).unique())
                codes = pd.Index(relations).get_indexer(table["key"].astype(str))
                edges.edge_label = torch.as_tensor(codes, dtype=torch.long)
                edges.relations = relations
        return data

    def save_id_maps(self, directory: Path) -> Path:
        """Write the id maps as JSON beside other training artifacts."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "id_maps.json"
        path.write_text(json.dumps(self.ids))
        return path


def _numeric(table: pd.DataFrame, column: str, default: float) -> np.ndarray:
    """A numeric column with nulls (or the whole column, when absent) set to `default`."""
    if column not in table:
        return np.full(len(table), default)
    return pd.to_numeric(table[column], errors="coerce").fillna(default).to_numpy(float)


def export_graph(store: GraphStore) -> GraphSnapshot:
    """Snapshot `store` for learning (`.to_hetero_data()`, `.interaction_matrix()`)."""
    return GraphSnapshot.from_store(store)


def product_catalog(snapshot: GraphSnapshot) -> pd.DataFrame:
    """One row per product with its graph context flattened, for search and content encoders.

    Columns: `id`, the product's own properties (title, image, ...), `brand` (name),
    `category` (leaf path, "A > B > C") and one column per attribute kind (values "|"-joined
    when a product has several). Rows follow `snapshot.ids["Product"]`, so row i is product i
    everywhere.
    """
    products = snapshot.nodes[PRODUCT].set_index("id").reindex(snapshot.ids[PRODUCT])
    products.index.name = "id"
    brands = snapshot.nodes["Brand"].set_index("id")
    made_by = snapshot.rels["MADE_BY"]
    if not made_by.empty and "name" in brands:
        names = made_by.assign(brand=made_by["target"].map(brands["name"]))
        products["brand"] = names.drop_duplicates("source").set_index("source")["brand"]
    in_category = snapshot.rels["IN_CATEGORY"]
    if not in_category.empty:
        products["category"] = in_category.drop_duplicates("source").set_index(
            "source")["target"]
    attributes = snapshot.nodes["Attribute"]
    has = snapshot.rels["HAS_ATTRIBUTE"]
    if not has.empty and "kind" in attributes:
        lookup = attributes.set_index("id")
        has = has.assign(kind=has["target"].map(lookup["kind"]),
                         value=has["target"].map(lookup["value"]))
        values: dict[str, dict[str, list[str]]] = {}
        for source, kind, value in zip(has["source"], has["kind"], has["value"]):
            if isinstance(kind, str):
                values.setdefault(kind, {}).setdefault(source, []).append(str(value))
        for kind, by_product in values.items():
            products[kind] = pd.Series({p: "|".join(sorted(v)) for p, v in by_product.items()},
                                       dtype="string")
    return products.reset_index()
