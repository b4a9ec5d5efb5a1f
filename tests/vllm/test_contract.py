"""The quick-start's openai SDK contract tests, run again with vLLM behind the gateway."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.test_openai_contract import (  # noqa: F401  (collected here, on this module's live_server)
    LONG,
    openai_client,
    test_errors_raise_the_sdk_class,
    test_max_tokens_gives_length,
    test_n_2,
    test_non_streaming,
    test_stop,
    test_stream_disconnect_aborts_generation,
    test_streaming,
)
from tests.conftest import LiveServer
from tests.vllm.servers import LONG_REQUEST_TOKENS

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def live_server(single_tenant_gateway: LiveServer) -> LiveServer:
    return single_tenant_gateway


@pytest.fixture
def long_request() -> dict[str, Any]:
    # vLLM makes the quick-start's 900 tokens in about 2 s: on a loaded runner they were over
    # before the client had read 3 chunks
    return LONG | {"max_tokens": LONG_REQUEST_TOKENS}
