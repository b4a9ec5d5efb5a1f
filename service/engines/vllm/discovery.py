"""Upstream discovery: an ``--upstream`` URL whose host is a DNS name stands for every address it has.

A Kubernetes headless Service (or a compose service scaled out) resolves to one address per
vLLM pod. Each address is a replica of its own, so requests spread over the pods and adapter
affinity knows which pod holds what; the name is looked up again every
``upstream_resolve_interval`` seconds, so pods join and leave without a gateway restart.
An IP-literal URL is one replica and is never looked up.

The lookup is a seam (``Resolver``): ``system_resolver`` (``loop.getaddrinfo``) by default, a
scripted one in tests. A failed lookup keeps the replicas the name had (a DNS hiccup must not
empty the pool; the health checks say whether they still answer) and is reported.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
RESOLVE_TIMEOUT = 10.0  # seconds a lookup may take before it counts as failed


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses the system's resolver gives for ``host`` (IPv4 and IPv6), each once, in its order."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def is_ip_literal(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass
class Target:
    """One ``--upstream`` URL whose host is a name, and what its last lookup found."""

    url: str  # base URL, without /v1
    host: str
    port: int
    addresses: tuple[str, ...] = ()
    error: str | None = None  # the last lookup's failure; None once one succeeds

    @classmethod
    def of(cls, url: str) -> Target:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(url, parts.hostname or "", port)

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"

    def status(self) -> dict[str, object]:
        """What ``/ready`` shows of it."""
        found: dict[str, object] = {"url": self.url, "addresses": list(self.addresses)}
        if self.error is not None:
            found["error"] = self.error
        return found


async def lookup(target: Target, resolver: Resolver) -> bool:
    """Resolve ``target`` again: True if ``target.addresses`` now holds the answer, False if it failed
    (then ``target.error`` says why and the addresses stay as they were)."""
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT):
            addresses = tuple(await resolver(target.host, target.port))
        if not addresses:
            raise OSError("no addresses")
    except (OSError, TimeoutError) as exc:  # socket.gaierror is an OSError
        target.error = f"{target.host} does not resolve: {exc or 'timed out'}"
        return False
    target.addresses, target.error = addresses, None
    return True
