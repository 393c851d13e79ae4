"""The product graph's schema: node labels, relationship types and the batch a load writes.

Every relationship type has fixed endpoint labels, so a relationship is identified by its
type, the ids of its two endpoints and (for INTERACTED and REL) one discriminating property.
Both stores rely on this to MERGE idempotently.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

Scalar = str | int | float | bool

PRODUCT = "Product"
BRAND = "Brand"
CATEGORY = "Category"
USER = "User"
ATTRIBUTE = "Attribute"
ENTITY = "Entity"

NODE_LABELS: tuple[str, ...] = (PRODUCT, BRAND, CATEGORY, USER, ATTRIBUTE, ENTITY)

INTERACTION_KINDS: tuple[str, ...] = ("view", "cart", "purchase", "rating")


@dataclass(frozen=True)
class RelType:
    """A relationship type with its endpoint labels and optional discriminating property."""

    name: str
    source: str
    target: str
    key: str | None = None


MADE_BY = RelType("MADE_BY", PRODUCT, BRAND)
IN_CATEGORY = RelType("IN_CATEGORY", PRODUCT, CATEGORY)
SUBCATEGORY_OF = RelType("SUBCATEGORY_OF", CATEGORY, CATEGORY)
HAS_ATTRIBUTE = RelType("HAS_ATTRIBUTE", PRODUCT, ATTRIBUTE)
INTERACTED = RelType("INTERACTED", USER, PRODUCT, key="kind")
SAME_AS = RelType("SAME_AS", PRODUCT, ENTITY)
REL = RelType("REL", ENTITY, ENTITY, key="type")

REL_TYPES: dict[str, RelType] = {
    r.name: r
    for r in (MADE_BY, IN_CATEGORY, SUBCATEGORY_OF, HAS_ATTRIBUTE, INTERACTED, SAME_AS, REL)
}


class DataError(ValueError):
    """Bad input data, located by file, line and field so a user can fix it."""

    def __init__(
        self, message: str, *, file: str | None = None, line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.file, self.line, self.field = file, line, field
        where = ", ".join(
            part for part in (
                file and f"{file}",
                line is not None and f"line {line}",
                field and f"field '{field}'",
            ) if part
        )
        super().__init__(f"{where}: {message}" if where else message)


Source = tuple[str, int]  # (file, line) a row came from, for error messages
KnownIds = Callable[[str, Iterable[str]], set[str]]  # (label, ids) -> those already stored


ORIGIN_FILE, ORIGIN_LINE = "_file", "_line"  # optional columns naming where a row came from
ENDPOINT_COLUMNS = ("source", "target", "key")


def clean_props(props: Mapping[str, Any]) -> dict[str, Scalar]:
    """Drop None/NaN values and unwrap numpy scalars: stores keep no nulls, only plain values."""
    out: dict[str, Scalar] = {}
    for k, v in props.items():
        if v is None or (isinstance(v, float) and v != v):
            continue
        if hasattr(v, "item"):
            v = v.item()
        out[k] = v
    return out


def nullable(frame: pd.DataFrame) -> pd.DataFrame:
    """Numpy int/float/bool columns as pandas' nullable dtypes.

    Then a property that some rows lack stays an integer (Int64 with NA) instead of turning
    into floats when frames are combined, and a float such as a weight of 2.0 stays a float.
    """
    wanted = {}
    for column, dtype in frame.dtypes.items():
        if isinstance(dtype, pd.api.extensions.ExtensionDtype):
            continue
        if pd.api.types.is_bool_dtype(dtype):
            wanted[column] = "boolean"
        elif pd.api.types.is_integer_dtype(dtype):
            wanted[column] = "Int64"
        elif pd.api.types.is_float_dtype(dtype):
            wanted[column] = "Float64"
    return frame.astype(wanted) if wanted else frame


def upsert_frame(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Collapse rows sharing `keys`, later non-null values winning (Cypher's `SET n += row`)."""
    if frame.empty or not frame.duplicated(keys).any():
        return frame.reset_index(drop=True)
    merged = frame.groupby(keys, sort=False, as_index=False, dropna=False).last()
    return merged[list(frame.columns)]  # groupby moves the keys first; keep the input's order


class GraphBatch:
    """Nodes and relationships to upsert in one load; for a repeated key later values win.

    Importers add rows one at a time or whole DataFrames. A load validates the whole batch
    before its first write, so bad input never leaves a store half-written.
    """

    def __init__(self) -> None:
        self._node_rows: dict[str, list[dict[str, Any]]] = {}
        self._node_frames: dict[str, list[pd.DataFrame]] = {}
        self._rel_rows: dict[str, list[dict[str, Any]]] = {}
        self._rel_frames: dict[str, list[pd.DataFrame]] = {}
        self._cache: dict[str, pd.DataFrame] = {}

    def add_node(self, label: str, node_id: str, props: Mapping[str, Any] | None = None) -> None:
        _check_label(label)
        self._cache.clear()
        row = {**clean_props(props or {}), "id": str(node_id)}
        self._node_rows.setdefault(label, []).append(row)

    def add_nodes(self, label: str, frame: pd.DataFrame) -> None:
        """Add many nodes; `frame` has an `id` column and one column per property."""
        _check_label(label)
        if "id" not in frame.columns:
            raise ValueError(f"{label} frame needs an 'id' column")
        frame = frame.assign(id=frame["id"].astype(str))
        self._cache.clear()
        self._node_frames.setdefault(label, []).append(frame)

    def add_rel(
        self, rel: RelType, source_id: str, target_id: str,
        props: Mapping[str, Any] | None = None, origin: Source | None = None,
    ) -> None:
        row: dict[str, Any] = clean_props(props or {})
        row.update(source=str(source_id), target=str(target_id), key=_key_of(rel, row))
        if origin is not None:
            row[ORIGIN_FILE], row[ORIGIN_LINE] = origin
        self._cache.clear()
        self._rel_rows.setdefault(rel.name, []).append(row)

    def add_rels(self, rel: RelType, frame: pd.DataFrame) -> None:
        """Add many relationships; `frame` has `source`, `target` and property columns."""
        missing = {"source", "target", *([rel.key] if rel.key else [])} - set(frame.columns)
        if missing:
            raise ValueError(f"{rel.name} frame lacks columns {sorted(missing)}")
        key = frame[rel.key].astype(str) if rel.key else ""
        frame = frame.assign(
            source=frame["source"].astype(str), target=frame["target"].astype(str), key=key
        )
        self._cache.clear()
        self._rel_frames.setdefault(rel.name, []).append(frame)

    @property
    def labels(self) -> list[str]:
        return [lb for lb in NODE_LABELS if lb in self._node_rows or lb in self._node_frames]

    @property
    def rel_types(self) -> list[RelType]:
        names = set(self._rel_rows) | set(self._rel_frames)
        return [r for r in REL_TYPES.values() if r.name in names]

    def node_frame(self, label: str) -> pd.DataFrame:
        """All nodes of `label`, one row per id (props merged), columns `id` + properties."""
        if f"n:{label}" not in self._cache:
            self._cache[f"n:{label}"] = self._build_node_frame(label)
        return self._cache[f"n:{label}"]

    def _build_node_frame(self, label: str) -> pd.DataFrame:
        parts = list(self._node_frames.get(label, []))
        if label in self._node_rows:
            parts.append(pd.DataFrame(self._node_rows[label]))
        if not parts:
            return pd.DataFrame({"id": pd.Series(dtype=str)})
        return upsert_frame(pd.concat([nullable(p) for p in parts], ignore_index=True), ["id"])

    def rel_frame(self, rel: RelType, with_origin: bool = False) -> pd.DataFrame:
        """All relationships of `rel`, one row per (source, target, key)."""
        if f"r:{rel.name}" not in self._cache:
            self._cache[f"r:{rel.name}"] = self._build_rel_frame(rel)
        frame = self._cache[f"r:{rel.name}"]
        if not with_origin:
            frame = frame.drop(columns=[ORIGIN_FILE, ORIGIN_LINE], errors="ignore")
        return frame

    def _build_rel_frame(self, rel: RelType) -> pd.DataFrame:
        parts = list(self._rel_frames.get(rel.name, []))
        if rel.name in self._rel_rows:
            parts.append(pd.DataFrame(self._rel_rows[rel.name]))
        if not parts:
            return pd.DataFrame({c: pd.Series(dtype=str) for c in ENDPOINT_COLUMNS})
        frame = pd.concat([nullable(p) for p in parts], ignore_index=True)
        return upsert_frame(frame, list(ENDPOINT_COLUMNS))

    def row_count(self) -> int:
        """Rows after de-duplication: the work a store has to write."""
        return sum(len(self.node_frame(lb)) for lb in self.labels) + sum(
            len(self.rel_frame(r)) for r in self.rel_types
        )

    def check_endpoints(self, known: KnownIds) -> None:
        """Raise DataError naming the first relationship whose endpoint exists nowhere."""
        local = {label: set(self.node_frame(label)["id"]) for label in self.labels}
        for rel in self.rel_types:
            frame = self.rel_frame(rel, with_origin=True)
            for column, label in (("source", rel.source), ("target", rel.target)):
                ids = set(frame[column]) - local.get(label, set())
                missing = ids - known(label, ids) if ids else set()
                if not missing:
                    continue
                bad = frame[frame[column].isin(missing)].iloc[0]
                file = bad.get(ORIGIN_FILE)
                line = bad.get(ORIGIN_LINE)
                raise DataError(
                    f"unknown {label} id {bad[column]!r} in {rel.name} "
                    f"({len(missing)} unknown ids in all)",
                    file=None if pd.isna(file) else str(file),
                    line=None if pd.isna(line) else int(line),
                    field=f"{label.lower()}_id",
                )


def _check_label(label: str) -> None:
    if label not in NODE_LABELS:
        raise ValueError(f"unknown node label {label!r}; expected one of {NODE_LABELS}")


def _key_of(rel: RelType, props: Mapping[str, Any]) -> str:
    if rel.key is None:
        return ""
    if rel.key not in props:
        raise ValueError(f"{rel.name} needs property {rel.key!r}")
    return str(props[rel.key])
