"""Dataset importers: each turns files into a `GraphBatch`, which a store then loads.

An importer reads and validates everything before the store writes anything, so a bad file
leaves the store as it was; every write is a MERGE, so loading the same data twice gives the
same graph.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from kg.importers.base import ImportResult, shared_data_dir
from kg.store import GraphStore, LoadReport

# name -> "module:function"; modules are imported on use so the CLI starts fast
IMPORTERS: dict[str, str] = {
    "completejourney": "kg.importers.completejourney:build",
    "fashion": "kg.importers.fashion:build",
    "ml100k-kg": "kg.importers.ml100k_kg:build",
    "generic": "kg.importers.generic:build",
    "gowalla": "kg.importers.gowalla:build",
}

Builder = Callable[[Path | None, bool], ImportResult]


def get_importer(name: str) -> Builder:
    """The build function for dataset `name` (raises ValueError listing the known names)."""
    if name not in IMPORTERS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(IMPORTERS)}")
    module, func = IMPORTERS[name].split(":")
    return getattr(importlib.import_module(module), func)


def load_dataset(
    name: str, store: GraphStore, data_dir: Path | str | None = None, progress: bool = False
) -> tuple[ImportResult, LoadReport]:
    """Read dataset `name` from `data_dir` (its default when None) and load it into `store`."""
    result = get_importer(name)(Path(data_dir) if data_dir else None, progress)
    report = store.load(result.batch, progress=progress)
    return result, report


__all__ = ["IMPORTERS", "ImportResult", "get_importer", "load_dataset", "shared_data_dir"]
