"""Unique ids for requests and answers, without a system call each.

``secrets.token_hex`` reads the OS's random source (a ``getrandom`` call) each time: twice per
request (the request id, the answer's id), ~2% of the gateway's CPU at concurrency 64. These ids
must be unique, not secret: 16 random hex digits drawn once per process (again after a fork),
then a counter, 32 hex digits in all, as before.
"""

from __future__ import annotations

import itertools
import os

_prefix = os.urandom(8).hex()
_counter = itertools.count()


def _reseed() -> None:
    global _prefix, _counter
    _prefix, _counter = os.urandom(8).hex(), itertools.count()


os.register_at_fork(after_in_child=_reseed)


def unique_hex() -> str:
    """32 hex digits, unique within this process and, with overwhelming odds, across processes."""
    return f"{_prefix}{next(_counter):016x}"
