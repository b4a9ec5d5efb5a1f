"""Re-reading a file when it changes: what the keys, tenants and aliases files and the templates share.

A file's *signature* is what changes when it is edited or replaced: its mtime, size and inode (an
atomic ``os.replace`` makes a new inode even within the file system's mtime resolution). Readers
compare it on every request, so it is one ``os.stat`` of a string made once: building a ``Path``
per call would cost more than the stat itself.

:class:`FileWatch` is the common case: one file, one value loaded from it, the last good value kept
when a new version is refused. The registry's adapter folders and the L1 templates use
:func:`signature` with their own caches (see their docstrings for why).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Generic, TypeVar

_log = logging.getLogger(__name__)

T = TypeVar("T")
Signature = tuple[int, int, int]  # (mtime_ns, size, inode)

_UNREAD = object()  # the signature of a watch whose file is read on first use: equal to none


def signature(path: str) -> Signature | None:
    """``path``'s signature, or None when it cannot be stat-ed (missing): cheap enough for every request."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


def signatures(paths: Iterable[str]) -> tuple[Signature | None, ...]:
    """The signatures of several files (a registry adapter's three, on every use), in one call.

    A loop of ``os.stat`` here rather than a call of :func:`signature` per file: the calls would add
    about 7% to the stats' cost.
    """
    found: list[Signature | None] = []
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError:
            found.append(None)
        else:
            found.append((stat.st_mtime_ns, stat.st_size, stat.st_ino))
    return tuple(found)


class FileWatch(Generic[T]):
    """A value loaded from a file, loaded again only when the file's signature changed.

    ``load`` raising one of ``refused`` is a bad version of the file: it is logged once (to ``log``,
    the owner's logger, as ``"<error>; <keeps>"``), not retried until the file changes again, and
    the last good value keeps serving. Any other error propagates and the load is retried on the
    next call. The first load happens here and its errors, ``refused`` ones included, are the
    caller's (there is no good value to keep yet); given ``initial``, the file is read on first use
    instead, and ``initial`` is the value a refused first version leaves in force. ``on_loaded``
    hears of each value loaded after the constructor's.
    """

    def __init__(
        self,
        path: Path | str,
        load: Callable[[], T],
        *,
        refused: type[Exception] | tuple[type[Exception], ...] = (),
        log: logging.Logger = _log,
        keeps: str = "the previous version keeps serving",
        on_loaded: Callable[[T], None] | None = None,
        initial: T | None = None,
    ):
        self.path = str(path)  # made once: the hot path stats a str
        self._load = load
        self._refused = refused
        self._log = log
        self._keeps = keeps
        self._on_loaded = on_loaded
        self._lock = threading.Lock()
        # one attribute, replaced whole: a reader without the lock sees a signature and its value
        self._state: tuple[object, T] = (
            (_UNREAD, initial) if initial is not None else (signature(self.path), load())
        )

    def current(self) -> T:
        """The value for the file as it is now: a stat, and a load only when the file changed."""
        known, value = self._state
        if signature(self.path) == known:
            return value
        return self._reload()

    def last(self) -> T:
        """The value in force, without looking at the file (what served before a reload)."""
        return self._state[1]

    def _reload(self) -> T:
        with self._lock:  # one thread loads; the others wait for its value
            now = signature(self.path)  # before reading: a change during the read is seen next time
            known, value = self._state
            if now == known:
                return value
            try:
                value = self._load()
            except self._refused as exc:
                self._log.error("%s; %s", exc, self._keeps)
                self._state = (now, value)  # a broken version is reported once, not on every request
                return value
            self._state = (now, value)
            if self._on_loaded is not None:
                self._on_loaded(value)
            return value
