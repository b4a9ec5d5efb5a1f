"""Shared-state fixtures: a fresh database on the session's real PostgreSQL (``tests.ledger``'s server).

The server fixture is tests/ledger's, imported, not copied: without PostgreSQL these tests are
skipped on a workstation and fail under CI.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from service.shared_state import SharedState
from tests.ledger.conftest import postgres  # noqa: F401  # the session's PostgreSQL server
from tests.ledger.pg import PostgresServer

BASE = "base-model"
TENANTS = """
tenants:
  acme:
    default_department: it
    departments:
      it: {adapter: acme-it}
      legal: {}
  globex:
    departments:
      sales: {}
"""


@pytest.fixture
def state_url(postgres: PostgresServer) -> str:  # noqa: F811
    """An empty database of the test's own."""
    return postgres.create_database(f"state_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def gateways(state_url: str) -> Iterator[tuple[SharedState, SharedState]]:
    """Two gateways' views of one database, without watchers: a test refreshes them when it wants."""
    first, second = SharedState(state_url, BASE, watch=False), SharedState(state_url, BASE, watch=False)
    first.tenants.replace(TENANTS, "test")
    second.refresh()
    yield first, second
    first.close()
    second.close()
