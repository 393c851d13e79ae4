"""Typed request/response bodies of the HTTP API, so the OpenAPI schema documents every field."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

Scalar = str | int | float | bool
Property = Scalar | list[Scalar]  # Neo4j allows homogeneous lists as property values


class ErrorBody(BaseModel):
    """Every error: one human-readable sentence (validation errors add the raw `errors`)."""

    detail: str
    errors: list[dict[str, Any]] | None = None


class SearchHitOut(BaseModel):
    id: str = Field(description="Product id")
    score: float = Field(description="Fused relevance score (higher is better)")
    title: str
    sources: dict[str, float] = Field(
        default_factory=dict, description="Per-source scores: bm25, text, image, graph")


class UnderstoodOut(BaseModel):
    """How the query was read against the graph (for explanations and debugging)."""

    english: str | None = Field(None, description="English rendering of the text query")
    matched: list[str] = Field(default_factory=list, description="Query phrases mapped to nodes")
    concepts: list[tuple[str, str]] = Field(
        default_factory=list, description="(kind, value) graph concepts, e.g. (colour, Black)")
    image_type: str | None = Field(None, description="Article type voted by an image query")


class SearchOut(BaseModel):
    query: str | None
    understood: UnderstoodOut
    hits: list[SearchHitOut]
    personalised: bool = Field(False, description="Whether a user's history re-ranked the hits")


class NodeRefOut(BaseModel):
    label: str
    id: str


class NodeOut(NodeRefOut):
    properties: dict[str, Property] = Field(default_factory=dict)


class ProductOut(BaseModel):
    id: str
    properties: dict[str, Property]
    brand: NodeOut | None = None
    categories: list[NodeOut] = Field(default_factory=list)
    attributes: list[NodeOut] = Field(default_factory=list)


class NeighbourOut(NodeOut):
    distance: int = Field(description="Hops from the centre node")


class RelationshipOut(BaseModel):
    """The hop that first reached a node (the neighbourhood is a breadth-first tree)."""

    type: str
    start: NodeRefOut
    end: NodeRefOut
    oriented: bool = Field(
        description="True when start->end is the stored direction (the schema fixes it when "
                    "the endpoint labels differ); false for same-label types such as "
                    "SUBCATEGORY_OF, where start is the node the traversal came from")


class NeighbourhoodOut(BaseModel):
    centre: NodeOut
    depth: int
    nodes: list[NeighbourOut]
    relationships: list[RelationshipOut]
    truncated: bool = Field(description="True when `limit` cut the neighbourhood short")


class HealthOut(BaseModel):
    status: str = "ok"


class ReadyOut(BaseModel):
    status: str = "ready"
    products: int
    artifacts: str = Field(description="Version (content hash) of the loaded search artifacts")
    store: str


class ReloadOut(BaseModel):
    status: str = "reloaded"
    products: int
    artifacts: str
    previous_artifacts: str | None
    seconds: float
