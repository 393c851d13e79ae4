"""A small, hand-checkable shop graph shared by the recommender, service and CLI tests.

Brands: Acme (p1 p2 p3), Nova (p4 p7 p8), Zeta (p5 p6). Categories: Apparel > Shoes
(p1 p2 p4), Apparel > Shirts (p3 p5), Home > Kitchen (p6 p7 p8). p7 is out of stock; p8 has
no interactions. Users u1..u6 each bought five products at increasing times; shoe buyers
(u1-u3) and kitchen buyers (u4-u6) form two tastes; u7 exists with one view only.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from kg.importers.base import add_attributes, add_category_tree
from kg.schema import BRAND, INTERACTED, MADE_BY, PRODUCT, USER, GraphBatch

if TYPE_CHECKING:
    from recommender.training import HybridConfig

PRODUCTS = pd.DataFrame({
    "id": [f"p{i}" for i in range(1, 9)],
    "title": ["Red runner", "Blue runner", "Acme shirt", "Nova boot", "Zeta shirt",
              "Zeta pan", "Nova pot", "Nova kettle"],
    "brand": ["Acme", "Acme", "Acme", "Nova", "Zeta", "Zeta", "Nova", "Nova"],
    "top": ["Apparel", "Apparel", "Apparel", "Apparel", "Apparel", "Home", "Home", "Home"],
    "leaf": ["Shoes", "Shoes", "Shirts", "Shoes", "Shirts", "Kitchen", "Kitchen", "Kitchen"],
    "colour": ["Red", "Blue", "Red", "Black", "Blue", "Black", "Red", "Red"],
    "in_stock": [True, True, True, True, True, True, False, True],
})

PURCHASES = {
    "u1": ["p1", "p2", "p3", "p4", "p5"],
    "u2": ["p2", "p1", "p4", "p3", "p6"],
    "u3": ["p4", "p1", "p2", "p5", "p3"],
    "u4": ["p6", "p7", "p5", "p6", "p3"],
    "u5": ["p7", "p6", "p1", "p5", "p3"],
    "u6": ["p6", "p5", "p7", "p2", "p3"],
}


def small_shop() -> GraphBatch:
    """The graph above as a batch ready for `store.load`."""
    batch = GraphBatch()
    batch.add_nodes(PRODUCT, PRODUCTS[["id", "title", "in_stock"]])
    batch.add_nodes(BRAND, pd.DataFrame({"id": ["b:" + b for b in sorted(set(PRODUCTS.brand))],
                                         "name": sorted(set(PRODUCTS.brand))}))
    batch.add_rels(MADE_BY, pd.DataFrame({"source": PRODUCTS["id"],
                                          "target": "b:" + PRODUCTS["brand"]}))
    add_category_tree(batch, PRODUCTS["id"], [PRODUCTS["top"], PRODUCTS["leaf"]])
    add_attributes(batch, PRODUCTS["id"], "colour", PRODUCTS["colour"])
    rows = []
    for user, items in PURCHASES.items():
        for step, item in enumerate(items):
            rows.append({"source": user, "target": item, "kind": "purchase", "weight": 1.0,
                         "ts": 1_000 + 10 * step + int(user[1:])})
    rows.append({"source": "u7", "target": "p6", "kind": "view", "weight": 1.0, "ts": 2_000})
    users = sorted({r["source"] for r in rows})
    batch.add_nodes(USER, pd.DataFrame({"id": users}))
    batch.add_rels(INTERACTED, pd.DataFrame(rows))
    return batch


def trained_shop(workspace: Path, config: HybridConfig) -> Path:
    """The small shop in an embedded store under `workspace`, with content artifacts and a
    recommender trained with `config`: the workspace API and notebook tests start from."""
    from kg.embedded import EmbeddedStore
    from recommender.content import build_content
    from recommender.training import train_recommender

    with EmbeddedStore(workspace / "graph") as store:
        store.load(small_shop())
        build_content(store, workspace)
        train_recommender(store, workspace, config, log=lambda _: None)
    return workspace
