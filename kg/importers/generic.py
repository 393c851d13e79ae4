"""The generic format: how a merchant loads their own catalog (specified in docs/generic-format.md).

A directory holds any of `products`, `users`, `interactions` and `triples`, each as `.csv` or
`.jsonl`. Everything is read and validated here, before a store is touched, and every error
names the file, the physical line and the field, because the person fixing it has only the file
in front of them. Interactions may point at products and users loaded earlier, so whether their
endpoints exist is checked by `GraphStore.load` (each relationship carries its file and line).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import math
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from kg.importers.base import (
    CATEGORY_PATH_SEPARATOR,
    ImportResult,
    add_attributes,
    add_category_tree,
    require_columns,
)
from kg.schema import (
    ATTRIBUTE,
    BRAND,
    CATEGORY,
    ENTITY,
    INTERACTED,
    INTERACTION_KINDS,
    MADE_BY,
    ORIGIN_FILE,
    ORIGIN_LINE,
    PRODUCT,
    REL,
    SAME_AS,
    USER,
    DataError,
    GraphBatch,
)

TABLES: tuple[str, ...] = ("products", "users", "interactions", "triples", "aliases")
FORMATS: tuple[str, ...] = ("csv", "jsonl")
REQUIRED: dict[str, list[str]] = {
    "products": ["id"],
    "users": ["id"],
    "interactions": ["user_id", "product_id", "kind", "timestamp"],
    "triples": ["head", "relation", "tail"],
    "aliases": ["kind", "value", "aliases"],
}
# columns of products.csv with a fixed meaning; every other column becomes Attribute nodes
PRODUCT_FIELDS: tuple[str, ...] = (
    "id", "title", "brand", "category_path", "description", "image", "price", "entity",
)
CATEGORY_SEPARATOR = ">"

Row = tuple[int, dict[str, Any]]  # (physical line, field -> raw value)


def build(data_dir: Path | None, progress: bool = False) -> ImportResult:
    """Read a generic-format directory into one batch; raise DataError before anything loads."""
    if data_dir is None:
        raise DataError("the generic format has no default location: give the directory "
                        "that holds products/users/interactions/triples (.csv or .jsonl)")
    directory = Path(data_dir)
    if not directory.is_dir():
        raise DataError("directory not found", file=str(directory))
    files = _find_files(directory)

    batch = GraphBatch()
    result = ImportResult("generic", batch)
    readers = {
        "products": _products, "users": _users,
        "interactions": _interactions, "triples": _triples, "aliases": _aliases,
    }
    for table, path in files.items():
        readers[table](path, batch, result, progress)
    return result


# ---- locating and reading files -----------------------------------------------------------
def _find_files(directory: Path) -> dict[str, Path]:
    """The one file per table present in `directory`; DataError on none at all or on both."""
    found: dict[str, Path] = {}
    for table in TABLES:
        present = [directory / f"{table}.{ext}" for ext in FORMATS]
        present = [p for p in present if p.exists()]
        if len(present) > 1:
            raise DataError(
                f"both {present[0].name} and {present[1].name} exist; keep only one",
                file=str(present[0]),
            )
        if present:
            if not present[0].is_file():
                raise DataError("not a regular file", file=str(present[0]))
            found[table] = present[0]
    if not found:
        expected = ", ".join(f"{t}.csv/.jsonl" for t in TABLES)
        raise DataError(f"no generic-format file found; expected at least one of {expected}",
                        file=str(directory))
    return found


def _read_text(path: Path) -> str:
    """The file as text (UTF-8, optional BOM), with the line of the first undecodable byte."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read file: {exc.strerror or exc}", file=str(path)) from exc
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise DataError(f"not valid UTF-8 (byte 0x{data[exc.start]:02x})",
                        file=str(path), line=line) from exc


def _rows(path: Path, required: list[str], progress: bool) -> Iterator[Row]:
    """Rows of a .csv or .jsonl file with their physical line numbers, shape-checked."""
    text = _read_text(path)
    rows = _csv_rows(path, text, required) if path.suffix == ".csv" else _jsonl_rows(path, text)
    if not progress:
        return rows
    return _with_bar(rows, text.count("\n") or None, f"generic: {path.name}")


def _with_bar(rows: Iterator[Row], total: int | None, desc: str) -> Iterator[Row]:
    """Pass rows through, advancing a progress bar by physical lines every few thousand rows."""
    shown = 0
    with tqdm(total=total, desc=desc, unit=" lines", leave=False) as bar:
        for n, (line, row) in enumerate(rows):
            if n % 4096 == 0:
                bar.update(line - shown)
                shown = line
            yield line, row
        if total:
            bar.update(total - shown)


def _csv_rows(path: Path, text: str, required: list[str]) -> Iterator[Row]:
    """CSV rows as dicts; the header is line 1 and a record's line is where it starts."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    file = str(path)
    try:
        header = next(reader, [])
        columns = [c.strip() for c in header]
        seen: set[str] = set()
        for position, column in enumerate(columns, start=1):
            if not column:
                raise DataError(f"column {position} has no name", file=file, line=1)
            if column in seen:
                raise DataError(f"duplicate column name {column!r}", file=file, line=1,
                                field=column)
            seen.add(column)
        require_columns(path, columns, required)
        width = len(columns)
        start = reader.line_num + 1
        for record in reader:
            line, start = start, reader.line_num + 1
            if not record:  # blank line
                continue
            if len(record) != width:
                raise DataError(
                    f"expected {width} fields as in the header, found {len(record)}",
                    file=file, line=line,
                    field=columns[len(record)] if len(record) < width else None,
                )
            yield line, dict(zip(columns, record, strict=True))
    except csv.Error as exc:
        raise DataError(f"malformed CSV: {exc}", file=file, line=reader.line_num) from exc


def _no_constants(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def _jsonl_rows(path: Path, text: str) -> Iterator[Row]:
    """One JSON object per non-blank line; repeated or empty keys are errors, as in CSV."""
    file = str(path)

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if not key.strip():
                raise DataError("empty field name", file=file, line=line)
            if key in out:
                raise DataError(f"duplicate field {key!r}", file=file, line=line, field=key)
            out[key] = value
        return out

    line = 0
    for line, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw, object_pairs_hook=pairs, parse_constant=_no_constants)
        except DataError:
            raise
        except ValueError as exc:  # JSONDecodeError is a ValueError
            raise DataError(f"not valid JSON: {exc}", file=file, line=line) from exc
        if not isinstance(obj, dict):
            raise DataError(f"expected a JSON object, found {_json_type(obj)}",
                            file=file, line=line)
        yield line, obj


# ---- field values -------------------------------------------------------------------------
def _json_type(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), "null" if value is None else "a number")


def _text(value: Any, file: str, line: int, field: str) -> str:
    """A value as stripped text; JSON numbers and booleans as JSON writes them, null as ''."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool | int | float):
        return json.dumps(value)
    raise DataError(f"expected text, found {_json_type(value)}", file=file, line=line,
                    field=field)


def _required(row: dict[str, Any], field: str, file: str, line: int) -> str:
    value = row.get(field)
    value = value.strip() if type(value) is str else _text(value, file, line, field)
    if not value:
        raise DataError("empty required value", file=file, line=line, field=field)
    return value


def _number(value: Any, file: str, line: int, field: str) -> float | None:
    """A finite float, None for an empty value; DataError for anything else."""
    if isinstance(value, str):
        value = value.strip()
        if not value:
            return None
        try:
            number = float(value)
        except ValueError:
            number = math.nan
    elif isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif value is None:
        return None
    else:
        number = math.nan
    if not math.isfinite(number):
        raise DataError(f"expected a number, found {value!r}", file=file, line=line,
                        field=field)
    return number


def _timestamp(value: Any, file: str, line: int, field: str) -> int:
    """Unix seconds (int) from unix seconds (int/float) or an ISO-8601 datetime (naive = UTC)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise DataError("empty required value", file=file, line=line, field=field)
        try:
            return int(text)
        except ValueError:
            pass
        try:
            number = float(text)
        except ValueError:
            try:
                moment = datetime.fromisoformat(text)
            except ValueError:
                number = math.nan
            else:
                if moment.tzinfo is None:
                    moment = moment.replace(tzinfo=UTC)
                return math.floor(moment.timestamp())
    elif isinstance(value, float):
        number = value
    elif value is None:
        raise DataError("empty required value", file=file, line=line, field=field)
    else:
        number = math.nan
    if not math.isfinite(number):
        raise DataError(
            f"expected unix seconds or an ISO-8601 datetime, found {value!r}",
            file=file, line=line, field=field,
        )
    return math.floor(number)


def brand_id(name: str) -> str:
    """A Brand node id: lower-case, whitespace collapsed, so 'ACME  Corp' and 'Acme Corp' meet."""
    return " ".join(name.split()).lower()


def _category_parts(path: str, file: str, line: int) -> list[str]:
    parts = [part.strip() for part in path.split(CATEGORY_SEPARATOR)]
    if not all(parts):
        raise DataError(f"empty category name in {path!r}", file=file, line=line,
                        field="category_path")
    return parts


def _frame(rows: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    """Rows as a DataFrame, dropping property columns that no row filled."""
    frame = pd.DataFrame(rows, columns=columns)
    empty = [c for c in columns if c != "id" and frame[c].isna().all()]
    return frame.drop(columns=empty)


# ---- tables -------------------------------------------------------------------------------
def _products(path: Path, batch: GraphBatch, result: ImportResult, progress: bool) -> None:
    """Products with their brand, category chain, attributes and external entity."""
    file = str(path)
    products: list[dict[str, Any]] = []
    brands: dict[str, str] = {}
    made_by: list[tuple[str, str]] = []
    category_paths: dict[str, list[str]] = {}
    attributes: dict[str, dict[str, str]] = {}  # column -> product id -> value
    entities: dict[str, None] = {}
    same_as: list[tuple[str, str]] = []
    for line, row in _rows(path, REQUIRED["products"], progress):
        pid = _required(row, "id", file, line)
        props: dict[str, Any] = {"id": pid}
        for field in ("title", "description", "image"):
            value = _text(row.get(field), file, line, field)
            if value:
                props[field] = value
        if "image" in props and "://" not in props["image"]:
            # a local photo path is relative to the catalog directory; store it absolute
            props["image"] = str((path.parent / props["image"]).resolve())
        props["price"] = _number(row.get("price"), file, line, "price")
        brand = _text(row.get("brand"), file, line, "brand")
        if brand:
            props["brand"] = brand
            brands[brand_id(brand)] = brand
            made_by.append((pid, brand_id(brand)))
        category = _text(row.get("category_path"), file, line, "category_path")
        if category:
            category_paths[pid] = _category_parts(category, file, line)
        entity = _text(row.get("entity"), file, line, "entity")
        if entity:
            entities[entity] = None
            same_as.append((pid, entity))
        for column, raw in row.items():
            if column in PRODUCT_FIELDS:
                continue
            value = _text(raw, file, line, column)
            if value:
                attributes.setdefault(column, {})[pid] = value
        products.append(props)

    if products:
        columns = ["id", "title", "description", "image", "price", "brand"]
        batch.add_nodes(PRODUCT, _frame(products, columns))
    _add_nodes(batch, BRAND, ["name"], [(k, v) for k, v in brands.items()])
    if category_paths:
        depth = max(len(parts) for parts in category_paths.values())
        levels = [pd.Series([parts[d] if d < len(parts) else None
                             for parts in category_paths.values()], dtype="string")
                  for d in range(depth)]
        add_category_tree(batch, pd.Series(list(category_paths), dtype="string"), levels)
    for column, values in attributes.items():
        add_attributes(batch, pd.Series(list(values), dtype="string"), column,
                       pd.Series(list(values.values()), dtype="string"))
    _add_nodes(batch, ENTITY, [], [(k,) for k in entities])
    for rel, pairs in ((MADE_BY, made_by), (SAME_AS, same_as)):
        if pairs:
            batch.add_rels(rel, pd.DataFrame(pairs, columns=["source", "target"]))
    result.stats[path.name] = len(products)


def _add_nodes(batch: GraphBatch, label: str, props: list[str], rows: list[tuple]) -> None:
    if rows:
        batch.add_nodes(label, pd.DataFrame(rows, columns=["id", *props]))


def _users(path: Path, batch: GraphBatch, result: ImportResult, progress: bool) -> None:
    """Users; every column besides `id` is a text property (empty values are left out)."""
    file = str(path)
    users: list[dict[str, Any]] = []
    columns: dict[str, None] = {"id": None}
    for line, row in _rows(path, REQUIRED["users"], progress):
        props = {"id": _required(row, "id", file, line)}
        for column, raw in row.items():
            if column != "id":
                columns[column] = None
                value = _text(raw, file, line, column)
                if value:
                    props[column] = value
        users.append(props)
    if users:
        batch.add_nodes(USER, _frame(users, list(columns)))
    result.stats[path.name] = len(users)


def _interactions(path: Path, batch: GraphBatch, result: ImportResult, progress: bool) -> None:
    """One INTERACTED per (user, product, kind): count rows, sum weights, keep the latest ts."""
    file = str(path)
    kinds = set(INTERACTION_KINDS)
    # (user, product, kind) -> [count, weight sum, latest ts, first line]
    merged: dict[tuple[str, str, str], list[Any]] = {}
    rows = 0
    for line, row in _rows(path, REQUIRED["interactions"], progress):
        rows += 1
        user = _required(row, "user_id", file, line)
        product = _required(row, "product_id", file, line)
        kind = _required(row, "kind", file, line)
        if kind not in kinds:
            raise DataError(f"unknown kind {kind!r}; expected one of {list(INTERACTION_KINDS)}",
                            file=file, line=line, field="kind")
        ts = _timestamp(row.get("timestamp"), file, line, "timestamp")
        weight = _number(row.get("weight"), file, line, "weight")
        if weight is None:
            weight = 1.0
        key = (user, product, kind)
        seen = merged.get(key)
        if seen is None:
            merged[key] = [1, weight, ts, line]
        else:
            seen[0] += 1
            seen[1] += weight
            seen[2] = max(seen[2], ts)
    if merged:
        keys = list(merged)
        values = list(merged.values())
        batch.add_rels(INTERACTED, pd.DataFrame({
            "source": [k[0] for k in keys],
            "target": [k[1] for k in keys],
            "kind": [k[2] for k in keys],
            "count": pd.array([v[0] for v in values], dtype="int64"),
            "weight": pd.array([v[1] for v in values], dtype="float64"),
            "ts": pd.array([v[2] for v in values], dtype="int64"),
            ORIGIN_FILE: file,
            ORIGIN_LINE: pd.array([v[3] for v in values], dtype="int64"),
        }))
    result.stats[path.name] = rows
    result.stats["interacted_relationships"] = len(merged)
    if rows > len(merged):
        result.notes.append(f"{path.name}: {rows} rows aggregated into {len(merged)} "
                            "INTERACTED relationships (one per user, product and kind)")


def _triples(path: Path, batch: GraphBatch, result: ImportResult, progress: bool) -> None:
    """External knowledge-graph triples: Entity nodes joined by REL {type: relation}."""
    file = str(path)
    entities: dict[str, None] = {}
    triples: dict[tuple[str, str, str], None] = {}
    rows = 0
    for line, row in _rows(path, REQUIRED["triples"], progress):
        rows += 1
        head = _required(row, "head", file, line)
        relation = _required(row, "relation", file, line)
        tail = _required(row, "tail", file, line)
        entities[head] = entities[tail] = None
        triples[(head, tail, relation)] = None
    _add_nodes(batch, ENTITY, [], [(k,) for k in entities])
    if triples:
        batch.add_rels(REL, pd.DataFrame(list(triples), columns=["source", "target", "type"]))
    result.stats[path.name] = rows


def _aliases(path: Path, batch: GraphBatch, result: ImportResult, progress: bool) -> None:
    """Shoppers' words for graph nodes: `kind`, `value`, `aliases` ("|"-separated, any language).

    kind `brand` names the Brand `value`; kind `category` the Category whose path or (for one in
    this directory's products) name is `value`; any other kind the Attribute `kind=value`.
    A node's aliases are the ones its rows list (several rows for one node are joined); loading
    the file again replaces them, so the file is the merchant's list to edit.
    """
    file = str(path)
    named: dict[tuple[str, str], dict[str, None]] = {}
    categories = batch.node_frame(CATEGORY)
    by_name: dict[str, list[str]] = {}
    if {"id", "name"} <= set(categories.columns):
        for cid, name in zip(categories["id"], categories["name"], strict=True):
            by_name.setdefault(str(name), []).append(str(cid))
    rows = 0
    for line, row in _rows(path, REQUIRED["aliases"], progress):
        rows += 1
        kind = _required(row, "kind", file, line)
        value = _required(row, "value", file, line)
        names = [n.strip() for n in _required(row, "aliases", file, line).split("|")]
        if not all(names):
            raise DataError("empty alias between '|' separators", file=file, line=line,
                            field="aliases")
        if kind == "brand":
            targets = [(BRAND, brand_id(value))]
        elif kind == "category":
            if CATEGORY_SEPARATOR in value:
                ids = [CATEGORY_PATH_SEPARATOR.join(_category_parts(value, file, line))]
            else:
                ids = by_name.get(value, [])
            if not ids:
                raise DataError(f"category {value!r} is neither a path (A > B) nor a category "
                                "of this directory's products", file=file, line=line,
                                field="value")
            targets = [(CATEGORY, cid) for cid in ids]
        else:
            targets = [(ATTRIBUTE, f"{kind}={value}")]
        for target in targets:
            named.setdefault(target, {}).update(dict.fromkeys(names))
    for label in (ATTRIBUTE, CATEGORY, BRAND):
        rows_for = [(node_id, "|".join(names)) for (lab, node_id), names in named.items()
                    if lab == label]
        if rows_for:
            frame = pd.DataFrame(rows_for, columns=["id", "aliases"])
            if label == ATTRIBUTE:
                kinds, values = zip(*(i.split("=", 1) for i in frame["id"]), strict=True)
                frame = frame.assign(kind=list(kinds), value=list(values))
            batch.add_nodes(label, frame)
    result.stats[path.name] = rows
