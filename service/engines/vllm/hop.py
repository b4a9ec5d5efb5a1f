"""The calls the vLLM backend makes to one replica, each with the upstream key (``--api-key``).

vLLM checks the key on every ``/v1`` path (chat, completions, adapter loads, models); ``/health``
and ``/metrics`` are open there, but get it too, for a proxy in front of vLLM that guards every
path. The key is a ``SecretStr`` until here, and only its header bytes are kept.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable

import httpx
from pydantic import SecretStr

from .routing import Replica
from .upstream import Headers, Timeouts, UpstreamClient, UpstreamReply

JSON = (b"content-type", b"application/json")


class Hop:
    def __init__(self, client: UpstreamClient, api_key: SecretStr | str | None, timeouts: Timeouts):
        self.client = client
        self.timeouts = timeouts
        key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
        self.has_key = bool(key)
        self.auth: Headers = [(b"authorization", b"Bearer " + key.encode("latin-1"))] if key else []
        self._json: Headers = [JSON, *self.auth]
        self._urls: dict[tuple[str, str], httpx.URL] = {}  # parsed once per (base URL, path)

    def url(self, replica: Replica, path: str) -> httpx.URL:
        found = self._urls.get((replica.url, path))
        if found is None:
            found = self._urls[replica.url, path] = httpx.URL(replica.url + path)
        return found

    async def send(self, replica: Replica, path: str, content: bytes, request_id: str) -> UpstreamReply:
        """A generation request: its reply once the head is in, the body to be read as it comes."""
        headers = [*self._json, (b"x-request-id", request_id.encode("latin-1", "replace"))]
        return await self._request(replica, "POST", path, content, headers, self.timeouts)

    async def get(self, replica: Replica, path: str, timeout: float) -> tuple[int, bytes]:
        timeouts = httpx.Timeout(timeout).as_dict()
        return await _whole(self._request(replica, "GET", path, b"", self.auth, timeouts))

    async def post(self, replica: Replica, path: str, body: object) -> tuple[int, bytes]:
        content = json.dumps(body).encode()
        return await _whole(self._request(replica, "POST", path, content, self._json, self.timeouts))

    def _request(
        self, replica: Replica, method: str, path: str, content: bytes, headers: Headers, timeouts: Timeouts
    ) -> Awaitable[UpstreamReply]:
        url = self.url(replica, path)
        if replica.address is None:  # a client written before discovery need not know ``address``
            return self.client.request(method, url, content, headers, timeouts)
        return self.client.request(method, url, content, headers, timeouts, replica.address)


async def _whole(pending: Awaitable[UpstreamReply]) -> tuple[int, bytes]:
    """A whole answer: its status and body (the backend's calls other than generation)."""
    reply = await pending
    try:
        return reply.status_code, await reply.aread()
    finally:
        await reply.aclose()
