"""What every importer returns, and helpers they share for reading files with line numbers."""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from kg.lexicons import load_aliases, load_lexicon
from kg.schema import (
    ATTRIBUTE,
    BRAND,
    CATEGORY,
    HAS_ATTRIBUTE,
    IN_CATEGORY,
    SUBCATEGORY_OF,
    DataError,
    GraphBatch,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def shared_data_dir() -> Path:
    """`$SHOPGRAPH_DATA_DIR`, else `../shared/data` beside the project checkout."""
    env = os.environ.get("SHOPGRAPH_DATA_DIR")
    return Path(env) if env else PROJECT_ROOT.parent / "shared" / "data"


@dataclass
class ImportResult:
    """A validated-to-parse batch plus what the importer noticed on the way."""

    dataset: str
    batch: GraphBatch
    notes: list[str] = field(default_factory=list)  # e.g. "repaired 22 lines with commas"
    stats: dict[str, int] = field(default_factory=dict)  # source rows read, per file


def require_file(path: Path) -> Path:
    """The file itself, or a DataError naming it: a clear message beats a pandas traceback."""
    if not path.is_file():
        raise DataError("file not found", file=str(path))
    return path


def require_columns(path: Path, columns: list[str], required: list[str]) -> None:
    """Fail on the header line when a required column is missing."""
    missing = [c for c in required if c not in columns]
    if missing:
        raise DataError(
            f"missing required column(s) {missing}; found {columns}",
            file=str(path), line=1, field=missing[0],
        )


CATEGORY_PATH_SEPARATOR = " > "


def add_category_tree(batch: GraphBatch, product_ids: pd.Series, levels: list[pd.Series]) -> int:
    """Category nodes for every path prefix, SUBCATEGORY_OF links and each product's leaf.

    `levels[d]` holds each product's level-`d` name (null when absent). A Category's id is its
    path ("Apparel > Topwear > Shirts"), so equal names under different parents stay apart; a
    path stops at its first missing level. Returns how many categories were added.
    """
    paths: list[pd.Series] = []
    for depth, names in enumerate(levels):
        names = names.astype("string").str.strip().replace("", pd.NA)
        path = names if depth == 0 else (paths[-1] + CATEGORY_PATH_SEPARATOR + names).where(
            paths[-1].notna() & names.notna())
        paths.append(path)
        nodes = pd.DataFrame({"id": path, "name": names, "level": depth}).dropna(subset=["id"])
        batch.add_nodes(CATEGORY, nodes.drop_duplicates("id"))
        if depth:
            links = pd.DataFrame({"source": path, "target": paths[depth - 1]}).dropna()
            batch.add_rels(SUBCATEGORY_OF, links.drop_duplicates())
    leaf = paths[-1]
    for path in reversed(paths[:-1]):
        leaf = leaf.fillna(path)
    batch.add_rels(IN_CATEGORY, pd.DataFrame({"source": product_ids, "target": leaf}).dropna())
    return len(batch.node_frame(CATEGORY))


def add_attributes(batch: GraphBatch, product_ids: pd.Series, kind: str, values: pd.Series
                   ) -> int:
    """Attribute nodes `kind=value` and HAS_ATTRIBUTE links; null or blank values get none."""
    values = values.astype("string").str.strip().replace("", pd.NA)
    links = pd.DataFrame({"source": product_ids, "value": values}).dropna(subset=["value"])
    links["target"] = kind + "=" + links["value"]
    nodes = links.drop_duplicates("target")
    batch.add_nodes(ATTRIBUTE, pd.DataFrame(
        {"id": nodes["target"], "kind": kind, "value": nodes["value"]}))
    batch.add_rels(HAS_ATTRIBUTE, links[["source", "target"]])
    return len(links)


def add_chinese_names(batch: GraphBatch, lexicon: str, category_levels: Sequence[str],
                      attribute_kinds: Collection[str]) -> int:
    """Copy the bilingual lexicon `kg/lexicons/<lexicon>.tsv` onto the batch's nodes.

    A row whose kind is an attribute kind names the Attribute node `kind=value`; one whose kind
    is `category_levels[d]` names every level-`d` Category called `value` (whatever its parent).
    Nodes get `name_zh` and `names_zh`; rows naming nothing in the batch are skipped, and a kind
    that is neither raises DataError. Call after the categories and attributes are added.
    Returns how many nodes were named.
    """
    table = load_lexicon(lexicon, kinds={*category_levels, *attribute_kinds})
    names = ["name_zh", "names_zh"]
    attributes = table[table["kind"].isin(list(attribute_kinds))]
    attributes = attributes.assign(id=attributes["kind"] + "=" + attributes["value"])
    attributes = attributes[attributes["id"].isin(batch.node_frame(ATTRIBUTE)["id"])]
    if len(attributes):
        batch.add_nodes(ATTRIBUTE, attributes[["id", *names]])
    levels = {kind: depth for depth, kind in enumerate(category_levels)}
    by_level = table[table["kind"].isin(levels)]
    by_level = by_level.assign(level=by_level["kind"].map(levels))
    categories = batch.node_frame(CATEGORY)
    named = pd.DataFrame(columns=["id", *names])
    if {"name", "level"} <= set(categories.columns):
        named = categories[["id", "name", "level"]].merge(
            by_level, left_on=["name", "level"], right_on=["value", "level"])
    if len(named):
        batch.add_nodes(CATEGORY, named[["id", *names]])
    return len(attributes) + len(named)


BRAND_KIND = "brand"
WORLD_BRANDS = "world_brands"  # kg/lexicons/world_brands.tsv, applied by every add_aliases


def alias_nodes(table: pd.DataFrame, batch: GraphBatch, category_levels: Sequence[str],
                attribute_kinds: Collection[str]) -> dict[str, pd.DataFrame]:
    """Rows of (id, aliases) per node label for an alias table of kind, value, aliases.

    An attribute kind names the Attribute `kind=value`; `category_levels[d]` (or `category`,
    any level) names the Categories called `value`; `brand` names the Brand whose id is the
    lower-cased value. Only nodes in `batch` are named; aliases of one node are merged.
    """
    out: dict[str, pd.DataFrame] = {}
    attributes = table[table["kind"].isin(list(attribute_kinds))]
    attributes = attributes.assign(id=attributes["kind"] + "=" + attributes["value"])
    out[ATTRIBUTE] = attributes[attributes["id"].isin(batch.node_frame(ATTRIBUTE)["id"])]
    categories = batch.node_frame(CATEGORY)
    levels = {kind: depth for depth, kind in enumerate(category_levels)}
    named = table.iloc[0:0].assign(id=pd.Series(dtype="string"))
    if {"name", "level"} <= set(categories.columns):
        by_level = table[table["kind"].isin(levels)]
        by_level = by_level.assign(level=by_level["kind"].map(levels))
        any_level = table[table["kind"] == "category"]
        named = pd.concat([
            categories[["id", "name", "level"]].merge(
                by_level, left_on=["name", "level"], right_on=["value", "level"]),
            categories[["id", "name"]].merge(any_level, left_on="name", right_on="value"),
        ])
    out[CATEGORY] = named
    brands = table[table["kind"] == BRAND_KIND]
    brands = brands.assign(id=brands["value"].str.lower().str.split().str.join(" "))
    out[BRAND] = brands[brands["id"].isin(batch.node_frame(BRAND).get("id", pd.Series()))]
    merged = {}
    for label, frame in out.items():
        if len(frame):
            merged[label] = frame.groupby("id", as_index=False)["aliases"].agg(
                lambda names: "|".join(dict.fromkeys(
                    n for joined in names for n in joined.split("|") if n)))
    return merged


def add_aliases(batch: GraphBatch, lexicon: str, category_levels: Sequence[str],
                attribute_kinds: Collection[str]) -> int:
    """Copy the alias lexicon `kg/lexicons/<lexicon>.tsv`, and the world brand names of the
    catalog's brands (`kg/lexicons/world_brands.tsv`), onto the batch's nodes as `aliases`.

    Call after categories, attributes and brands are added. Returns how many nodes were named.
    """
    table = load_aliases(lexicon, kinds={*category_levels, *attribute_kinds, BRAND_KIND,
                                         "category"})
    # international brands' names (耐克, 斯凯奇, ck) for whichever of them the catalog sells
    table = pd.concat([table, load_aliases(WORLD_BRANDS, kinds={BRAND_KIND})],
                      ignore_index=True)
    named = alias_nodes(table, batch, category_levels, attribute_kinds)
    for label, frame in named.items():
        batch.add_nodes(label, frame[["id", "aliases"]])
    return sum(len(f) for f in named.values())
