"""MovieLens-100K with a Freebase knowledge graph, in RecBole's atomic-file format.

Five tab-separated files with typed headers (`user_id:token`): users, items (movies), ratings,
item -> entity links and entity triples. Columns are matched by the name before the ':', so
their order does not matter. Files are split line by line (no quoting in this format) so that
every row keeps its physical line number for error messages; conversion is vectorised.
See docs/datasets.md for the graph this produces.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from kg.importers.base import ImportResult, require_columns, require_file, shared_data_dir
from kg.schema import (
    CATEGORY,
    ENTITY,
    IN_CATEGORY,
    INTERACTED,
    ORIGIN_FILE,
    ORIGIN_LINE,
    PRODUCT,
    REL,
    SAME_AS,
    USER,
    DataError,
    GraphBatch,
)

DATASET = "ml100k-kg"
PREFIX = "ml-100k"
GENRE_PREFIX = "genre:"
# placeholders the files use for "not known" (item 267 has title and year 'unkonwn')
PLACEHOLDERS = frozenset({"", "unknown", "unkonwn"})
TITLE_YEAR = re.compile(r"\((\d{4})\)\s*$")


def default_dir() -> Path:
    """Where the shared copy of the data set lives."""
    return shared_data_dir() / "ml-100k-kg"


@dataclass
class AtomicFile:
    """One atomic file's rows as strings (columns named without their type) plus `_line`."""

    path: Path
    frame: pd.DataFrame

    def fail(self, bad: pd.Series, field: str, message: str) -> None:
        """Raise a DataError at the first row flagged in `bad`, if any."""
        if bad.any():
            row = self.frame[bad].iloc[0]
            raise DataError(
                f"{message}: {row[field]!r} ({int(bad.sum())} such rows)",
                file=str(self.path), line=int(row["_line"]), field=field,
            )

    def integers(self, field: str) -> pd.Series:
        """A column as int64; a value that is not a whole number is a DataError."""
        values = pd.to_numeric(self.frame[field], errors="coerce")
        self.fail(values.isna() | (values != values.round()), field, "not an integer")
        return values.astype("int64")

    def floats(self, field: str) -> pd.Series:
        """A column as float64; a value that is not a number is a DataError."""
        values = pd.to_numeric(self.frame[field], errors="coerce")
        self.fail(values.isna(), field, "not a number")
        return values.astype("float64")

    def unique(self, field: str) -> None:
        """Ids must be unique: a second definition would silently overwrite the first."""
        self.fail(self.frame[field].duplicated(), field, "duplicate id")

    def origin(self) -> dict[str, object]:
        """`_file`/`_line` columns so a store's endpoint check can name the source line."""
        return {ORIGIN_FILE: self.path.name, ORIGIN_LINE: self.frame["_line"].to_numpy()}


def read_atomic(path: Path, required: list[str], progress: bool = False) -> AtomicFile:
    """Read a RecBole atomic file, keeping `required` columns (by name before the ':')."""
    require_file(path)
    with open(path, encoding="utf-8", newline="") as handle:
        text = handle.read()
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines or not lines[0].strip():
        raise DataError("empty file, expected a header line", file=str(path), line=1)
    header = [h.strip().split(":", 1)[0] for h in lines[0].rstrip("\r").split("\t")]
    require_columns(path, header, required)
    width = len(header)
    rows: list[list[str]] = []
    numbers: list[int] = []
    for number, line in enumerate(
        tqdm(lines[1:], desc=f"{DATASET}: read {path.name}", unit=" rows", disable=not progress),
        start=2,
    ):
        line = line.rstrip("\r")
        if not line.strip():
            continue  # blank line
        fields = line.split("\t")
        if len(fields) != width:
            raise DataError(
                f"{'too few' if len(fields) < width else 'too many'} fields: {len(fields)}, "
                f"expected {width}",
                file=str(path), line=number, field=header[min(len(fields), width - 1)],
            )
        rows.append(fields)
        numbers.append(number)
    frame = pd.DataFrame(rows, columns=header, dtype=str)
    frame = frame.loc[:, ~frame.columns.duplicated()][required]
    frame = frame.apply(lambda col: col.str.strip())
    frame["_line"] = numbers
    return AtomicFile(path, frame)


def _users(data_dir: Path, batch: GraphBatch, progress: bool) -> AtomicFile:
    """User nodes with their demographics; age is an integer."""
    users = read_atomic(data_dir / f"{PREFIX}.user",
                        ["user_id", "age", "gender", "occupation", "zip_code"], progress)
    users.unique("user_id")
    frame = users.frame
    props = {c: frame[c].where(frame[c] != "") for c in ("gender", "occupation", "zip_code")}
    batch.add_nodes(USER, pd.DataFrame({
        "id": frame["user_id"], "age": users.integers("age"), **props,
    }))
    return users


def _items(data_dir: Path, batch: GraphBatch, notes: list[str], progress: bool) -> AtomicFile:
    """Product nodes (title, year) and one level-0 Category per genre with IN_CATEGORY."""
    items = read_atomic(data_dir / f"{PREFIX}.item",
                        ["item_id", "movie_title", "release_year", "class"], progress)
    items.unique("item_id")
    frame = items.frame
    title = frame["movie_title"].where(~frame["movie_title"].str.lower().isin(PLACEHOLDERS))
    year = pd.to_numeric(frame["release_year"].where(
        frame["release_year"].str.fullmatch(r"\d{4}")), errors="coerce")
    # RecBole's conversion split "Title (1995) (V)" into title "Title (1995)" and year "V"
    from_title = pd.to_numeric(title.str.extract(TITLE_YEAR, expand=False), errors="coerce")
    recovered = year.isna() & from_title.notna()
    year = year.fillna(from_title).astype("Int64")
    unknown_year = frame["release_year"][year.isna()]
    if recovered.any():
        notes.append(
            f"{PREFIX}.item: release_year taken from the title's '(YYYY)' for "
            f"{int(recovered.sum())} item(s) whose year field is not a year: "
            + ", ".join(f"item {i} ({v!r})" for i, v in
                        zip(frame["item_id"][recovered], frame["release_year"][recovered]))
        )
    if len(unknown_year) or title.isna().any():
        notes.append(
            f"{PREFIX}.item: {int(title.isna().sum())} item(s) without a title and "
            f"{len(unknown_year)} without a year (placeholder values such as 'unkonwn' dropped)"
        )
    batch.add_nodes(PRODUCT, pd.DataFrame({"id": frame["item_id"], "title": title, "year": year}))

    genres = frame[["item_id", "class"]].assign(genre=frame["class"].str.split())
    genres = genres.explode("genre").dropna(subset=["genre"])
    placeholder = genres["genre"].str.lower().isin(PLACEHOLDERS)
    if placeholder.any():
        notes.append(
            f"{PREFIX}.item: genre 'unknown' (MovieLens' placeholder) is not a Category; "
            f"{int(placeholder.sum())} item(s) listed it"
        )
    genres = genres[~placeholder].drop_duplicates(["item_id", "genre"])
    names = pd.Series(genres["genre"].unique(), dtype=str)
    batch.add_nodes(CATEGORY, pd.DataFrame({"id": GENRE_PREFIX + names, "name": names,
                                            "level": 0}))
    batch.add_rels(IN_CATEGORY, pd.DataFrame({"source": genres["item_id"],
                                              "target": GENRE_PREFIX + genres["genre"]}))
    return items


def _ratings(
    data_dir: Path, batch: GraphBatch, users: AtomicFile, items: AtomicFile,
    notes: list[str], progress: bool,
) -> AtomicFile:
    """INTERACTED kind=rating with weight=rating, ts=timestamp, count=1."""
    inter = read_atomic(data_dir / f"{PREFIX}.inter",
                        ["user_id", "item_id", "rating", "timestamp"], progress)
    frame = inter.frame
    inter.fail(~frame["user_id"].isin(users.frame["user_id"]), "user_id", "unknown user")
    inter.fail(~frame["item_id"].isin(items.frame["item_id"]), "item_id", "unknown item")
    repeated = int(frame.duplicated(["user_id", "item_id"]).sum())
    if repeated:
        notes.append(f"{PREFIX}.inter: {repeated} repeated (user, item) ratings: the last "
                     "one in the file is kept")
    batch.add_rels(INTERACTED, pd.DataFrame({
        "source": frame["user_id"], "target": frame["item_id"], "kind": "rating",
        "weight": inter.floats("rating"), "ts": inter.integers("timestamp"), "count": 1,
        **inter.origin(),
    }))
    return inter


def _knowledge_graph(
    data_dir: Path, batch: GraphBatch, items: AtomicFile, notes: list[str], progress: bool
) -> tuple[AtomicFile, AtomicFile, int]:
    """Entity nodes (every head, tail and linked entity), REL triples and SAME_AS links."""
    kg = read_atomic(data_dir / f"{PREFIX}.kg", ["head_id", "relation_id", "tail_id"], progress)
    link = read_atomic(data_dir / f"{PREFIX}.link", ["item_id", "entity_id"], progress)
    triples = kg.frame
    for field in ("head_id", "relation_id", "tail_id"):
        kg.fail(triples[field] == "", field, "empty value")
    for field in ("item_id", "entity_id"):
        link.fail(link.frame[field] == "", field, "empty value")
    known = link.frame["item_id"].isin(items.frame["item_id"])
    if not known.all():
        notes.append(
            f"{PREFIX}.link: dropped {int((~known).sum())} row(s) for items not in "
            f"{PREFIX}.item (first on line {int(link.frame['_line'][~known].iloc[0])})"
        )
    links = link.frame[known]
    entities = pd.Series(
        pd.concat([triples["head_id"], triples["tail_id"], links["entity_id"]]).unique(),
        dtype=str,
    )
    batch.add_nodes(ENTITY, pd.DataFrame({"id": entities}))
    batch.add_rels(REL, pd.DataFrame({
        "source": triples["head_id"], "target": triples["tail_id"],
        "type": triples["relation_id"], **kg.origin(),
    }))
    batch.add_rels(SAME_AS, pd.DataFrame({
        "source": links["item_id"], "target": links["entity_id"],
        ORIGIN_FILE: link.path.name, ORIGIN_LINE: links["_line"].to_numpy(),
    }))
    return kg, link, len(entities)


def build(data_dir: Path | None = None, progress: bool = False) -> ImportResult:
    """Read the five atomic files into a batch of users, movies, genres, ratings and the
    Freebase graph; raises DataError (file, line, field) on input it cannot use."""
    data_dir = Path(data_dir) if data_dir is not None else default_dir()
    batch = GraphBatch()
    notes: list[str] = []
    users = _users(data_dir, batch, progress)
    items = _items(data_dir, batch, notes, progress)
    inter = _ratings(data_dir, batch, users, items, notes, progress)
    kg, link, n_entities = _knowledge_graph(data_dir, batch, items, notes, progress)
    triples = kg.frame
    stats = {
        "user_rows": len(users.frame), "item_rows": len(items.frame),
        "inter_rows": len(inter.frame), "kg_rows": len(triples), "link_rows": len(link.frame),
        "genres": len(batch.node_frame(CATEGORY)), "entities": n_entities,
        "relations": int(triples["relation_id"].nunique()),
        "duplicate_triples": int(triples.duplicated(["head_id", "relation_id", "tail_id"]).sum()),
    }
    if stats["duplicate_triples"]:
        notes.append(f"{PREFIX}.kg: {stats['duplicate_triples']} repeated triples merged")
    notes.append(
        f"read {stats['user_rows']} users, {stats['item_rows']} items, "
        f"{stats['inter_rows']} ratings, {stats['kg_rows']} triples over "
        f"{stats['relations']} relations, {stats['link_rows']} item-entity links; "
        f"{n_entities} entities"
    )
    return ImportResult(dataset=DATASET, batch=batch, notes=notes, stats=stats)
