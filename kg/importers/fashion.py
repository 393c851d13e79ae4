"""Fashion Product Images (Small): a catalog with a category tree, attributes, brands and photos.

`styles.csv` is read with the csv module rather than pandas so that every row keeps its physical
line number (errors name the line a user has to fix) and so that the 22 lines with an unquoted
comma in the title (the last column) can be repaired instead of dropped. Everything after
parsing is vectorised. See docs/datasets.md for the graph this produces and the brand rule.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from kg.importers.base import (
    ImportResult,
    add_aliases,
    add_attributes,
    add_category_tree,
    add_chinese_names,
    require_columns,
    require_file,
    shared_data_dir,
)
from kg.schema import (
    ATTRIBUTE,
    BRAND,
    MADE_BY,
    PRODUCT,
    DataError,
    GraphBatch,
)

DATASET = "fashion"
STYLES = "styles.csv"
TITLE = "productDisplayName"
CATEGORY_LEVELS = ("masterCategory", "subCategory", "articleType")
# attribute kind -> column; values become Attribute nodes "kind=value"
ATTRIBUTE_COLUMNS = {
    "colour": "baseColour", "season": "season", "usage": "usage", "gender": "gender",
    "year": "year",
}
REQUIRED = ["id", *CATEGORY_LEVELS, *dict.fromkeys(ATTRIBUTE_COLUMNS.values()), TITLE]
# the data set writes "NA" for "not applicable / unknown" (baseColour 15x, usage 316x)
MISSING_VALUES = frozenset({"", "NA"})
PATH_SEP = " > "

# Words that mark the audience in a title: the brand is what comes before the first of them.
# "Baby", "Lady" and "Ladies" are left out on purpose: in this catalog they are mostly colour or
# product words ("Baby Pink", "Blue Lady Perfume"), not the audience.
GENDER_WORDS = frozenset({
    "men", "women", "men's", "women's", "mens", "womens", "unisex",
    "boys", "girls", "boy", "girl", "boy's", "girl's", "kids", "kid's",
    "kids-boys", "kids-girls", "kids-boy", "kids-girl", "kids-unisex", "infant", "infants",
})
MAX_BRAND_WORDS = 4  # "United Colors of Benetton Men ..." is the longest common brand


def default_dir() -> Path:
    """Where the shared copy of the data set lives."""
    return shared_data_dir() / "fashion"


def derive_brand(title: str) -> tuple[str | None, str]:
    """The brand a title names and which rule found it ("gender", "first_word" or "none").

    Titles read "<Brand words> <audience word> <rest>" ("Peter England Men Party Blue Jeans"),
    so the brand is the words before the first audience word when that word is the 2nd to 5th
    word (brands of 1 to 4 words); otherwise the first word ("Lakme Absolute Lip Colour").
    The first word itself is never taken as the audience word, so "Kids Ville Girls Top"
    gives the brand "Kids Ville".
    """
    words = title.split()
    if not words:
        return None, "none"
    for i in range(1, min(len(words), MAX_BRAND_WORDS + 1)):
        if words[i].lower() in GENDER_WORDS:
            return " ".join(words[:i]), "gender"
    return words[0], "first_word"


def _read_styles(
    path: Path, progress: bool
) -> tuple[pd.DataFrame, list[int]]:
    """Rows of styles.csv as strings plus a `_line` column; also the lines that were repaired."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise DataError("empty file, expected a header line", file=str(path), line=1) from None
        require_columns(path, header, REQUIRED)
        width, title_at = len(header), header.index(TITLE)
        rows: list[list[str]] = []
        lines: list[int] = []
        repaired: list[int] = []
        for row in tqdm(reader, desc="fashion: read styles.csv", unit=" rows",
                        disable=not progress):
            line = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line
            if len(row) < width:
                raise DataError(
                    f"too few fields: {len(row)}, expected {width}",
                    file=str(path), line=line, field=header[len(row)],
                )
            if len(row) > width:
                if title_at != width - 1:
                    raise DataError(
                        f"too many fields: {len(row)}, expected {width}",
                        file=str(path), line=line, field=header[-1],
                    )
                # an unquoted comma inside the title: the surplus fields belong to it
                row = [*row[:title_at], ",".join(row[title_at:])]
                repaired.append(line)
            rows.append(row)
            lines.append(line)
    frame = pd.DataFrame(rows, columns=header, dtype=str)
    frame = frame[REQUIRED].apply(lambda col: col.str.strip())
    frame["_line"] = lines
    return frame, repaired


def _fail_at(path: Path, frame: pd.DataFrame, bad: pd.Series, field: str, message: str) -> None:
    """Raise a DataError for the first row flagged in `bad`, if any."""
    if bad.any():
        row = frame[bad].iloc[0]
        raise DataError(
            f"{message}: {row[field]!r} ({int(bad.sum())} such rows)",
            file=str(path), line=int(row["_line"]), field=field,
        )


def _validate(path: Path, frame: pd.DataFrame) -> pd.Series:
    """Check ids and years; returns the year column as nullable integers."""
    _fail_at(path, frame, ~frame["id"].str.fullmatch(r"\d+"), "id", "id is not an integer")
    dup = frame["id"].duplicated()
    if dup.any():
        row = frame[dup].iloc[0]
        first = frame.loc[frame["id"] == row["id"], "_line"].iloc[0]
        raise DataError(
            f"duplicate id {row['id']!r} (first on line {first})",
            file=str(path), line=int(row["_line"]), field="id",
        )
    years = frame["year"].where(~frame["year"].isin(MISSING_VALUES))
    numeric = pd.to_numeric(years, errors="coerce")
    whole = numeric.notna() & (numeric == numeric.round())
    _fail_at(path, frame, years.notna() & ~whole, "year", "year is not an integer")
    return numeric.astype("Int64")


def _attributes(frame: pd.DataFrame, years: pd.Series, batch: GraphBatch) -> dict[str, int]:
    """Attribute nodes `kind=value` and HAS_ATTRIBUTE edges; missing values get no edge."""
    links = 0
    for kind, column in ATTRIBUTE_COLUMNS.items():
        values = years.astype("string") if kind == "year" else frame[column]
        values = values.where(~values.isin(MISSING_VALUES))
        links += add_attributes(batch, frame["id"], kind, values)
    return {"attributes": len(batch.node_frame(ATTRIBUTE)), "has_attribute": links}


def _brands(frame: pd.DataFrame, batch: GraphBatch) -> dict[str, int]:
    """Brand per product from its title; Brand id is the lower-cased name."""
    derived = [derive_brand(t) for t in frame[TITLE]]
    rule = pd.Series([r for _, r in derived], index=frame.index)
    name = pd.Series([b for b, _ in derived], index=frame.index, dtype="string")
    made = pd.DataFrame({"source": frame["id"], "name": name}).dropna(subset=["name"])
    made["target"] = made["name"].str.lower()
    # one display name per brand: its most frequent spelling, ties alphabetically
    spellings = made.groupby(["target", "name"], as_index=False).size()
    spellings = spellings.sort_values(["target", "size", "name"], ascending=[True, False, True])
    nodes = spellings.drop_duplicates("target")[["target", "name"]]
    batch.add_nodes(BRAND, nodes.rename(columns={"target": "id"}))
    batch.add_rels(MADE_BY, made[["source", "target"]])
    return {
        "brands": len(nodes),
        "brand_by_gender_word": int((rule == "gender").sum()),
        "brand_by_first_word": int((rule == "first_word").sum()),
        "brand_missing": int((rule == "none").sum()),
    }


def _image_ids(images_dir: Path) -> set[str]:
    """Product ids that have a photo: listed once instead of one stat per product."""
    if not images_dir.is_dir():
        return set()
    return {name[:-4] for name in os.listdir(images_dir) if name.endswith(".jpg")}


def build(data_dir: Path | None = None, progress: bool = False) -> ImportResult:
    """Read styles.csv (and the image folder) into a batch of products, categories,
    attributes and brands; raises DataError (file, line, field) on input it cannot use."""
    data_dir = Path(data_dir) if data_dir is not None else default_dir()
    path = require_file(data_dir / STYLES)
    frame, repaired = _read_styles(path, progress)
    years = _validate(path, frame)

    batch = GraphBatch()
    with_image = frame["id"].isin(_image_ids(data_dir / "images"))
    products = pd.DataFrame({
        "id": frame["id"],
        "title": frame[TITLE].where(frame[TITLE] != ""),
        # absolute, so encoders find the photo whatever the working directory
        "image": (str((data_dir / "images").resolve()) + "/" + frame["id"] + ".jpg").where(
            with_image),
        "year": years,
    })
    batch.add_nodes(PRODUCT, products)
    stats = {"styles_rows": len(frame), "repaired_lines": len(repaired),
             "products": len(products), "images": int(with_image.sum())}
    levels = [frame[c].where(~frame[c].isin(MISSING_VALUES)) for c in CATEGORY_LEVELS]
    stats["categories"] = add_category_tree(batch, frame["id"], levels)
    stats.update(_attributes(frame, years, batch))
    stats["chinese_names"] = add_chinese_names(batch, "fashion_zh", CATEGORY_LEVELS,
                                               ATTRIBUTE_COLUMNS)
    stats.update(_brands(frame, batch))
    stats["aliases"] = add_aliases(batch, "fashion_aliases", CATEGORY_LEVELS,
                                   ATTRIBUTE_COLUMNS)

    notes = []
    if repaired:
        notes.append(
            f"repaired {len(repaired)} lines whose title held an unquoted comma "
            f"(joined the surplus fields with ','): lines {_abbrev(repaired)}"
        )
    na_counts = {kind: int(frame[col].isin(MISSING_VALUES).sum())
                 for kind, col in ATTRIBUTE_COLUMNS.items()}
    skipped = ", ".join(f"{k} {n}" for k, n in na_counts.items() if n)
    if skipped:
        notes.append(f"empty or 'NA' values got no Attribute: {skipped}")
    notes.append(
        f"brands: {stats['brands']} distinct; {stats['brand_by_gender_word']} products by the "
        f"words before the audience word, {stats['brand_by_first_word']} by the first word, "
        f"{stats['brand_missing']} without a title"
    )
    notes.append(f"{stats['images']} of {len(products)} products have an image")
    return ImportResult(dataset=DATASET, batch=batch, notes=notes, stats=stats)


def _abbrev(values: Iterable[int], limit: int = 10) -> str:
    """A short list for a note: the first `limit` values, then how many more."""
    items = list(values)
    head = ", ".join(map(str, items[:limit]))
    return head + (f" and {len(items) - limit} more" if len(items) > limit else "")
