"""Bilingual names for graph nodes, so query understanding can map Chinese words to nodes.

A lexicon is a TSV of `kind`, English value, Chinese names ("|"-separated synonyms, first is
the display name). Importers copy them onto nodes as `name_zh` (display) and `names_zh`
(all synonyms, "|"-joined): the names then live in the knowledge graph, in either store.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from kg.schema import DataError

LEXICONS = Path(__file__).resolve().parent


def load_lexicon(name: str) -> pd.DataFrame:
    """Columns `kind`, `value`, `name_zh`, `names_zh` from `kg/lexicons/<name>.tsv`."""
    path = LEXICONS / f"{name}.tsv"
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 3 or not all(p.strip() for p in parts):
            raise DataError("expected 3 tab-separated fields: kind, value, names",
                            file=str(path), line=number)
        kind, value, names = (p.strip() for p in parts)
        synonyms = [n.strip() for n in names.split("|") if n.strip()]
        rows.append({"kind": kind, "value": value, "name_zh": synonyms[0],
                     "names_zh": "|".join(synonyms)})
    return pd.DataFrame(rows)
