"""The application's typed state and the FastAPI dependencies that read it."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from .chat import ChatService
from .config import Settings
from .engines.base import Engine
from .errors import AuthenticationError


@dataclass
class AppState:
    settings: Settings
    engine: Engine
    chat: ChatService
    created: int  # when this server started, for /v1/models


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.loragate
    return state


StateDep = Annotated[AppState, Depends(get_state)]


def require_api_key(request: Request, state: StateDep) -> None:
    """Bearer-token check; the key is compared in constant time and never logged."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationError(
            "You didn't provide an API key. Send it in the Authorization header as `Bearer YOUR_KEY`."
        )
    key = state.settings.api_key
    if key is None or not hmac.compare_digest(token.strip().encode(), key.get_secret_value().encode()):
        raise AuthenticationError("Incorrect API key provided.")


AuthDep = Depends(require_api_key)
