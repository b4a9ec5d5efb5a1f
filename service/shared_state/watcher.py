"""A thread that keeps this gateway's copy of the shared state current: LISTEN, and a poll as a backstop.

Each write to the state tables sends ``NOTIFY loragate_state`` at its commit; the watcher listens
on a connection of its own and refreshes on every notification, so a change reaches every gateway
in milliseconds. It also refreshes every ``interval`` seconds whatever it hears: a notification
lost while the connection was down (or dropped by a pooler in between) delays a change by at most
that long. A refresh reads only what changed since the last one (``keys_since``, ``tenants``).

When the database cannot be reached the watcher logs one warning, keeps the copy it has (requests
go on with the last known keys and tenants), retries every ``interval`` and logs when it is back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .database import CHANNEL, StateUnavailable, connect

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

POLL_SECONDS = 2.0  # the bound on a change's delay when its notification is lost
WAKE_SECONDS = 0.25  # how often the thread looks at its stop flag while it waits


class StateWatcher:
    def __init__(self, url: str, name: str, refresh: Callable[[], None], interval: float = POLL_SECONDS):
        self.url = url
        self.name = name  # the database, without its password
        self.refresh = refresh
        self.interval = interval
        self.refreshed = time.monotonic()  # when the copy was last known to be current
        self._stop = threading.Event()
        self._down: str | None = None  # why the database is out of reach, while it is
        self._thread = threading.Thread(target=self._run, name="loragate-state-watch", daemon=True)

    def start(self) -> StateWatcher:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        import psycopg

        while not self._stop.is_set():
            try:
                with connect(self.url, "loragate-state-watch") as listener:
                    listener.execute(f"LISTEN {CHANNEL}".encode())
                    self._refresh()  # what changed while this thread was not listening
                    self._listen(listener)
            except (psycopg.Error, StateUnavailable) as exc:
                if self._down is None:
                    log.warning(
                        "the shared state database %s is out of reach (%s); the keys and tenants"
                        " known now stay in force, and changes made elsewhere wait until it is back",
                        self.name,
                        exc,
                    )
                self._down = str(exc)
                self._stop.wait(self.interval)
            except Exception:  # a bug must not stop the refreshes for good
                log.exception("refreshing the shared state failed; retrying in %.1f s", self.interval)
                self._stop.wait(self.interval)

    def _listen(self, listener: psycopg.Connection[tuple[Any, ...]]) -> None:
        next_poll = time.monotonic() + self.interval
        while not self._stop.is_set():
            woken = any(True for _ in listener.notifies(timeout=WAKE_SECONDS, stop_after=1))
            if woken or time.monotonic() >= next_poll:
                self._refresh()
                next_poll = time.monotonic() + self.interval

    def _refresh(self) -> None:
        self.refresh()
        self.refreshed = time.monotonic()
        if self._down is not None:
            log.warning("the shared state database %s is back; keys and tenants are current", self.name)
            self._down = None
