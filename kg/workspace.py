"""Where a shopgraph run keeps its files, and which graph store it talks to."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from kg.store import GraphStore

StoreKind = Literal["embedded", "neo4j"]
DEFAULT_WORKSPACE = "workspace"


def default_workspace() -> Path:
    """`$SHOPGRAPH_WORKSPACE`, else `./workspace` in the current directory."""
    return Path(os.environ.get("SHOPGRAPH_WORKSPACE", DEFAULT_WORKSPACE))


def default_store_kind() -> StoreKind:
    """`$SHOPGRAPH_STORE` (embedded|neo4j); embedded by default, so no server is needed."""
    kind = os.environ.get("SHOPGRAPH_STORE", "embedded")
    if kind not in ("embedded", "neo4j"):
        raise ValueError(f"SHOPGRAPH_STORE must be 'embedded' or 'neo4j', not {kind!r}")
    return kind  # type: ignore[return-value]


def open_store(kind: StoreKind | None = None, workspace: str | os.PathLike[str] | None = None
               ) -> GraphStore:
    """Open the embedded store in `workspace/graph`, or Neo4j from NEO4J_* settings."""
    kind = kind or default_store_kind()
    if kind == "neo4j":
        from kg.neo4j_store import Neo4jStore

        return Neo4jStore()
    if kind == "embedded":
        from kg.embedded import EmbeddedStore

        return EmbeddedStore(Path(workspace or default_workspace()) / "graph")
    raise ValueError(f"unknown store {kind!r}; expected 'embedded' or 'neo4j'")
