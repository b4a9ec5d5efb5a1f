"""The /v1 pipeline: every route gets the same checks, errors, docs and cancellation."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from starlette.types import Message

from service.api.pipeline import until_disconnected
from service.app import API_ROUTES
from service.errors import ClientDisconnected
from tests.api.helpers import assert_envelope


class Receiver:
    """An ASGI ``receive`` whose disconnect the test sends."""

    def __init__(self) -> None:
        self.gone = asyncio.Event()

    async def __call__(self) -> Message:
        await self.gone.wait()
        return {"type": "http.disconnect"}


async def test_work_that_finishes_returns_its_value() -> None:
    async def work() -> int:
        await asyncio.sleep(0)
        return 7

    assert await until_disconnected(Receiver(), work()) == 7


async def test_a_client_that_leaves_cancels_the_work() -> None:
    receive, cancelled = Receiver(), asyncio.Event()

    async def work() -> None:
        try:
            await asyncio.Event().wait()  # until cancelled
        except asyncio.CancelledError:
            cancelled.set()
            raise

    task = asyncio.ensure_future(until_disconnected(receive, work()))
    await asyncio.sleep(0)
    receive.gone.set()
    with pytest.raises(ClientDisconnected):
        await asyncio.wait_for(task, 5)
    assert cancelled.is_set()


async def test_someone_elses_cancellation_stays_a_cancellation() -> None:
    """A server shutting down cancels the task: that must not read as a client that left."""
    started = asyncio.Event()

    async def work() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.ensure_future(until_disconnected(Receiver(), work()))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize("route", API_ROUTES, ids=lambda r: f"{r.method} {r.path}")
async def test_every_route_needs_a_key_and_answers_errors_in_the_envelope(
    fake_client: httpx.AsyncClient, route: Any
) -> None:
    response = await fake_client.request(route.method, route.path, headers={"authorization": "Bearer nope"})
    assert_envelope(response, 401, code="invalid_api_key")
    assert response.headers["x-request-id"].startswith("req-")


async def test_an_unknown_v1_path_is_a_404_envelope(fake_client: httpx.AsyncClient) -> None:
    response = await fake_client.get("/v1/nope")
    assert_envelope(response, 404, code="unknown_url")
    assert response.headers["x-request-id"]


async def test_a_wrong_method_is_a_405_envelope(fake_client: httpx.AsyncClient) -> None:
    assert_envelope(await fake_client.post("/v1/models", json={}), 405)


async def test_openapi_describes_every_v1_route_from_its_models(fake_client: httpx.AsyncClient) -> None:
    doc = (await fake_client.get("/openapi.json")).json()
    for route in API_ROUTES:
        operation = doc["paths"][route.path][route.method.lower()]
        answer = operation["responses"]["200"]["content"]["application/json"]["schema"]
        assert set(route.response.model_fields) <= set(answer["properties"])
        assert (
            "error"
            in operation["responses"]["default"]["content"]["application/json"]["schema"]["properties"]
        )
        if route.request is not None:
            body = operation["requestBody"]["content"]["application/json"]["schema"]
            assert set(route.request.model_fields) <= set(body["properties"])
        if route.stream is not None:
            assert "text/event-stream" in operation["responses"]["200"]["content"]


def test_validation_errors_read_the_same_from_pydantic_and_fastapi() -> None:
    from service.api.pipeline import first_problem

    fastapi_style = first_problem([{"type": "missing", "loc": ("body", "model"), "msg": "Field required"}])
    pydantic_style = first_problem([{"type": "missing", "loc": ("model",), "msg": "Field required"}])
    assert fastapi_style.message == pydantic_style.message == "Invalid value for model: Field required"
    assert fastapi_style.param == pydantic_style.param == "model"
    assert first_problem([]).status_code == 400


async def test_an_os_error_of_the_servers_own_is_a_500_not_a_gone_client(
    fake_client: httpx.AsyncClient, fake: Any
) -> None:
    """An unreadable file (EACCES, EIO) while answering is the server's fault: a logged 500, not a 499."""
    fake.fail_at_start = PermissionError(13, "Permission denied")
    body = {"model": fake.model_name, "messages": [{"role": "user", "content": "hi"}]}
    response = await fake_client.post("/v1/chat/completions", json=body)
    assert_envelope(response, 500)
