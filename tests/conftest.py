"""Session-wide fixtures: one real Neo4j server for every neo4j-marked test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kg.neo4j_store import Neo4jSettings, Neo4jStore
from tests.neo4j_server import Neo4jServer, neo4j_or_skip


@pytest.fixture(scope="session")
def neo4j_server() -> Iterator[Neo4jServer]:
    """Neo4j 5.26 Community on a free loopback port, auth on; stopped after the session."""
    server = neo4j_or_skip()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def neo4j_settings(neo4j_server: Neo4jServer) -> Neo4jSettings:
    return Neo4jSettings(uri=neo4j_server.uri, user=neo4j_server.user,
                         password=neo4j_server.password)


@pytest.fixture
def neo4j_store(neo4j_settings: Neo4jSettings) -> Iterator[Neo4jStore]:
    """An empty Neo4j store (the database is cleared before each test)."""
    store = Neo4jStore(neo4j_settings)
    store.clear()
    yield store
    store.close()
