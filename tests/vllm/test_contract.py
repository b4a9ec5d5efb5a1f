"""The quick-start's openai SDK contract tests, run again with vLLM behind the gateway.

The quick-start's disconnect test reads the engine's running count from ``/ready``; with vLLM
behind the gateway those counts are read from vLLM's /metrics in the background, seconds old.
``test_disconnect.py`` checks the same with vLLM's own counters instead.
"""

from __future__ import annotations

import pytest

from tests.api.test_openai_contract import (  # noqa: F401  (collected here, on this module's live_server)
    openai_client,
    test_errors_raise_the_sdk_class,
    test_max_tokens_gives_length,
    test_n_2,
    test_non_streaming,
    test_stop,
    test_streaming,
)
from tests.conftest import LiveServer

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def live_server(single_tenant_gateway: LiveServer) -> LiveServer:
    return single_tenant_gateway
