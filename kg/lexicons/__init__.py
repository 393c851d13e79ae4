"""Bilingual names for graph nodes, so query understanding can map Chinese words to nodes.

A lexicon is a TSV of `kind`, English value, Chinese names ("|"-separated synonyms, first is
the display name). The kind is an attribute kind ("colour", "brand_type") or the name of a
category level ("articleType", "product_category"): the importer that loads the lexicon says
which levels it has. Importers copy the names onto nodes as `name_zh` (display) and `names_zh`
(all synonyms, "|"-joined) with `kg.importers.base.add_chinese_names`: the names then live in
the knowledge graph, in either store.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import pandas as pd

from kg.schema import DataError

LEXICONS = Path(__file__).resolve().parent


def load_lexicon(name: str, kinds: Collection[str] | None = None) -> pd.DataFrame:
    """Columns `kind`, `value`, `name_zh`, `names_zh` from `kg/lexicons/<name>.tsv`.

    Raises DataError (file, line) on a malformed row, a repeated (kind, value) pair, or, when
    `kinds` is given, a kind outside it: a typo must not silently leave nodes unnamed.
    """
    path = LEXICONS / f"{name}.tsv"
    rows = []
    first_line: dict[tuple[str, str], int] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 3 or not all(p.strip() for p in parts):
            raise DataError("expected 3 tab-separated fields: kind, value, names",
                            file=str(path), line=number)
        kind, value, names = (p.strip() for p in parts)
        if kinds is not None and kind not in kinds:
            raise DataError(f"unknown kind {kind!r}; expected one of {sorted(kinds)}",
                            file=str(path), line=number, field="kind")
        if (kind, value) in first_line:
            raise DataError(f"{kind} {value!r} is already named on line "
                            f"{first_line[kind, value]}", file=str(path), line=number,
                            field="value")
        first_line[kind, value] = number
        synonyms = [n.strip() for n in names.split("|") if n.strip()]
        rows.append({"kind": kind, "value": value, "name_zh": synonyms[0],
                     "names_zh": "|".join(synonyms)})
    return pd.DataFrame(rows, columns=["kind", "value", "name_zh", "names_zh"])


def load_aliases(name: str, kinds: Collection[str] | None = None) -> pd.DataFrame:
    """Columns `kind`, `value`, `aliases` ("|"-joined) from `kg/lexicons/<name>.tsv`.

    Same format and checks as `load_lexicon` (DataError naming file, line and field); the kind
    may also be `brand`. Aliases are in any language: query understanding routes Chinese ones
    to its substring matcher and the rest to its word matcher.
    """
    table = load_lexicon(name, kinds)
    return table.rename(columns={"names_zh": "aliases"})[["kind", "value", "aliases"]]
