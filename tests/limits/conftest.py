"""Fixtures: a fake clock for the memory backend, and a REAL redis-server (Debian's ``redis-server``).

Without redis-server these tests are skipped on a workstation and fail under CI
(``apt-get install -y redis-server``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from .redis_server import REDIS_SERVER, RedisServer


class FakeClock:
    """Monotonic and wall time that move only when a test says so."""

    def __init__(self, wall: datetime = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)):
        self.mono = 1000.0
        self.wall = wall.timestamp()

    def monotonic(self) -> float:
        return self.mono

    def time(self) -> float:
        return self.wall

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _need_redis() -> None:
    if REDIS_SERVER is None:
        message = "redis-server is not installed: apt-get install -y redis-server"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the session's tests; each test starts from an empty database."""
    _need_redis()
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    assert redis_server.command("FLUSHALL").startswith(b"+OK")
    return redis_server.url


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, which it may stop and start again (outages)."""
    _need_redis()
    server = RedisServer(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()
