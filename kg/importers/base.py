"""What every importer returns, and helpers they share for reading files with line numbers."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from kg.schema import DataError, GraphBatch

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
