"""``/v1/embeddings`` relayed to an OpenAI-compatible server (vLLM with an embedding model, or another).

One shared ``httpx.AsyncClient`` per gateway, with the upstream timeouts of the vLLM backend. The
request goes on with the configured model name and the upstream's key (never the client's); its
answer comes back as it is, base64 included. The upstream's errors map as the vLLM backend's do
(``engines/vllm/wire.py``): its 400s stay 400s, its 404 is ``model_not_found``, 429 stays 429, and
anything else (its 5xx, a refused key, no answer at all) is a 502.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from ..errors import InvalidRequestError, LoragateError, ModelNotFoundError, RateLimitError, UpstreamError
from ..protocol_completions import EmbeddingRequest

MAX_MESSAGE = 500  # characters of an upstream's error message passed on


class UpstreamEmbedder:
    def __init__(
        self,
        base_url: str,
        *,
        model_name: str | None,
        api_key: str | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 300.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        self.model_name = model_name
        self.url = base_url.rstrip("/").removesuffix("/v1") + "/v1/embeddings"
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        timeout = httpx.Timeout(read_timeout, connect=connect_timeout)
        self._client = httpx.AsyncClient(timeout=timeout, headers=headers, transport=transport)

    async def start(self) -> None:
        """Nothing to load: connections open with the first request."""

    async def close(self) -> None:
        await self._client.aclose()

    async def embed(self, body: EmbeddingRequest, inputs: list[str]) -> dict[str, Any]:
        payload = body.model_dump(exclude_unset=True, exclude_none=True)
        payload["model"] = self.model_name or body.model
        payload["input"] = inputs if isinstance(body.input, list) else inputs[0]
        try:
            response = await self._client.post(self.url, json=payload)
        except httpx.TimeoutException:
            raise UpstreamError("The embeddings server did not answer in time.") from None
        except httpx.HTTPError as exc:
            raise UpstreamError(f"The embeddings server cannot be reached ({type(exc).__name__}).") from None
        if response.status_code != 200:
            raise upstream_error(response.status_code, response.text)
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not (isinstance(answer, dict) and isinstance(answer.get("data"), list)):
            raise UpstreamError("The embeddings server sent an answer that is not an embedding list.")
        answer["model"] = body.model  # the name the client knows, as every route answers
        return answer


def upstream_error(status: int, text: str) -> LoragateError:
    """A non-200 answer from the embeddings server, as the error the client should see."""
    message, param, code = text[:MAX_MESSAGE] or f"status {status}", None, None
    try:
        payload = json.loads(text)
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        inner = payload.get("error", payload)
        if isinstance(inner, dict):
            message = str(inner.get("message") or message)[:MAX_MESSAGE]
            param = inner.get("param") if isinstance(inner.get("param"), str) else None
            code = inner.get("code") if isinstance(inner.get("code"), str) else None
        elif isinstance(inner, str):
            message = inner[:MAX_MESSAGE]
    if status in (400, 413, 422):
        return InvalidRequestError(message, param=param, code=code)
    if status == 404:
        return ModelNotFoundError(message, param="model")
    if status == 429:
        return RateLimitError(message)
    if status in (401, 403):  # the gateway's own key to it: not the client's to fix
        return UpstreamError(f"The embeddings server refused the gateway's credentials ({status}).")
    return UpstreamError(f"The embeddings server failed this request ({status}): {message}")
