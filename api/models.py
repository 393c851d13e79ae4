"""Typed request/response bodies of the HTTP API, so the OpenAPI schema documents every field."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

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
    normalised: str | None = Field(
        None, description="The query after NFKC, lower case and traditional -> simplified")
    converted_script: bool = Field(False, description="Traditional Chinese was converted")
    corrections: list[dict[str, str]] = Field(
        default_factory=list, description="Spelling corrections: {typed, corrected}")
    mappings: list[dict[str, Any]] = Field(
        default_factory=list, description="Each mapped phrase: {phrase, kind, value, via} with "
        "via = name | alias | spelling | embedding (+ score), so a merchant can fix an alias")
    dropped: list[str] = Field(default_factory=list, description="Filler left out of the search")
    constraints: list[list[tuple[str, str]]] = Field(
        default_factory=list, description="Graph constraints: one group per phrase, any of its "
        "(kind, value) satisfies it")
    search_text: str | None = Field(None, description="Text given to BM25")
    dense_text: str | None = Field(None, description="Text given to the dense model")
    unknown: list[str] = Field(default_factory=list, description="Words nothing could map")
    dense: bool | None = Field(None, description="Whether the dense model scored the text (not "
                               "when the graph understood every word)")


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
    """Which parts serve: a part that is not loaded is named in `not_loaded` with the reason."""

    status: str = "ready"
    products: int | None = Field(None, description="Products in the search artifacts")
    artifacts: str | None = Field(
        None, description="Version (content hash) of the loaded search artifacts")
    recommender: str | None = Field(None, description="Version of the loaded recommender")
    recommender_users: int | None = Field(None, description="Users the recommender knows")
    store: str
    pid: int = Field(description="The server process that answered (one of `--workers`)")
    event_seq: int = Field(0, description="Newest event of the store's log applied here")
    not_loaded: dict[str, str] = Field(
        default_factory=dict, description="Part (search, recommender) -> why it is not loaded")


class ReloadOut(BaseModel):
    status: str = "reloaded"
    products: int | None
    artifacts: str | None
    previous_artifacts: str | None
    recommender: str | None = Field(None, description="Recommender version now serving")
    previous_recommender: str | None = None
    not_loaded: dict[str, str] = Field(
        default_factory=dict, description="Parts absent from the workspace, with the reason")
    seconds: float


# ---- recommendations and events -------------------------------------------------------------
class RecommendationOut(BaseModel):
    id: str = Field(description="Product id")
    score: float = Field(description="Blend score (higher is better; comparable within a list)")
    title: str | None = None
    brand: str | None = None
    category: str | None = Field(None, description='Category path, e.g. "Home > Kitchen"')
    image: str | None = Field(None, description="The photo's URL: this API's "
                                                "/products/{id}/image, or an http(s) URL")
    sources: list[str] = Field(
        default_factory=list, description="Sources behind the item: als, copurchase, gnn, "
                                          "kg_brand, kg_category, kg_attribute, popularity")
    reasons: list[str] | None = Field(
        None, description="Readable reasons, one per source (recommendations: only with "
                          "explain=true)")


class RecommendationsOut(BaseModel):
    user: str
    version: str = Field(description="Recommender version that answered")
    items: list[RecommendationOut]


class RelatedOut(BaseModel):
    product: str
    version: str = Field(description="Recommender version that answered")
    items: list[RecommendationOut]


class UsersOut(BaseModel):
    """Some shopper ids the recommender knows, e.g. for a shop front's user picker."""

    version: str = Field(description="Recommender version that answered")
    total: int = Field(description="Shoppers the recommender knows (live ones included)")
    users: list[str] = Field(description="Up to `limit` ids, in the recommender's order")


EventKind = Literal["view", "cart", "purchase"]


class EventIn(BaseModel):
    """One shopper interaction, as a shop front sends it."""

    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(min_length=1, max_length=200, description="Shopper id (new ids are "
                                                                   "created in the graph)")
    product_id: str = Field(min_length=1, max_length=200, description="An existing product")
    kind: EventKind
    ts: int | None = Field(None, ge=0, description="Unix seconds; default: now")
    event_id: str | None = Field(
        None, min_length=1, max_length=200,
        description="Idempotency key: an event whose id was recorded before changes nothing")


class EventOut(BaseModel):
    """What was recorded: the graph edge after the write and the live recommender's state."""

    user_id: str
    product_id: str
    kind: EventKind
    ts: int = Field(description="The event's time (unix seconds)")
    status: Literal["recorded", "duplicate", "unknown_product"] = Field(
        "recorded", description="recorded; duplicate (its event_id was recorded before, "
                                "nothing changed); unknown_product (not recorded)")
    event_id: str | None = None
    seq: int | None = Field(None, description="The event's position in the store's event log")
    count: int = Field(description="Events of this kind between this user and product so far "
                                   "(the INTERACTED edge's `count`)")
    new_user: bool = Field(description="True when this event created the User node")
    recommender: str | None = Field(
        None, description="Recommender version updated live; None when none is loaded or it "
                          "does not know the product (trained before it existed)")
    history: int | None = Field(
        None, description="Distinct products in the user's live history afterwards")


class EventsOut(BaseModel):
    """A batch of events: how many of each outcome, and one result per event, in order."""

    recorded: int
    duplicates: int
    unknown_products: int
    results: list[EventOut]
