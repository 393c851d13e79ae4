"""The knowledge graph: schema, stores (Neo4j, embedded), importers and export for learning."""

from kg.schema import (
    ATTRIBUTE,
    BRAND,
    CATEGORY,
    ENTITY,
    HAS_ATTRIBUTE,
    IN_CATEGORY,
    INTERACTED,
    MADE_BY,
    NODE_LABELS,
    PRODUCT,
    REL,
    REL_TYPES,
    SAME_AS,
    SUBCATEGORY_OF,
    USER,
    DataError,
    GraphBatch,
    RelType,
)
from kg.store import GraphStore, LoadReport, Neighbour
from kg.workspace import default_workspace, open_store

__all__ = [
    "ATTRIBUTE", "BRAND", "CATEGORY", "ENTITY", "HAS_ATTRIBUTE", "IN_CATEGORY", "INTERACTED",
    "MADE_BY", "NODE_LABELS", "PRODUCT", "REL", "REL_TYPES", "SAME_AS", "SUBCATEGORY_OF", "USER",
    "DataError", "GraphBatch", "GraphStore", "LoadReport", "Neighbour", "RelType",
    "default_workspace", "open_store",
]
