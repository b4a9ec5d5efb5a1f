"""Who may use ``/admin/v1`` (the admin key), and ``/metrics`` and ``/ready`` when ``metrics_auth`` is on.

The admin key (``admin_api_key``) is compared in constant time (``hmac.compare_digest`` over the
keys' SHA-256, so that not even the length shows). A valid tenant key gets 403 ``permission_denied``
there; no key or any other key, 401. Without an admin key the admin routes are not mounted at
all, so every ``/admin`` path is a 404.

The audit log names the admin as ``admin:<8 hex>``, the start of the admin key's SHA-256: rotating
the key shows in the log, and 32 bits of a hash say nothing useful about a random key.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Request
from pydantic import SecretStr

from ..errors import AuthenticationError, PermissionDeniedError
from ..state import AppState, StateDep
from ..tenancy import MISSING_KEY, WRONG_KEY

GUARDED = frozenset({"/ready", "/metrics"})  # what metrics_auth protects; /health stays open (liveness)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def actor_id(admin_key: SecretStr) -> str:
    """The admin key's name in the audit log."""
    return "admin:" + hashlib.sha256(admin_key.get_secret_value().encode()).hexdigest()[:8]


def bearer(authorization: str | None) -> str | None:
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def is_admin_key(state: AppState, token: str) -> bool:
    admin = state.settings.admin_api_key
    return admin is not None and hmac.compare_digest(_digest(token), _digest(admin.get_secret_value()))


async def admin_actor(request: Request, state: StateDep) -> str:
    """The admin's actor id; 401 without the admin key, 403 for a tenant's key."""
    authorization = request.headers.get("authorization")
    token = bearer(authorization)
    if token is None:
        raise AuthenticationError(MISSING_KEY)
    if is_admin_key(state, token):
        assert state.settings.admin_api_key is not None
        return actor_id(state.settings.admin_api_key)
    await state.tenancy.authenticate_async(authorization)  # 401 for a key that is no one's
    raise PermissionDeniedError("This API key may not use the admin API: it needs the admin key.")


ActorDep = Annotated[str, Depends(admin_actor)]


async def scrape_key(request: Request, state: StateDep) -> None:
    """With ``metrics_auth``: ``/metrics`` and ``/ready`` want the admin key or any valid tenant key.

    The health and metrics routers are included with this dependency only when the setting is on;
    ``/health`` shares the router with ``/ready`` and stays open.
    """
    route = request.scope.get("route")
    if getattr(route, "path", None) not in GUARDED:
        return
    authorization = request.headers.get("authorization")
    token = bearer(authorization)
    if token is None:
        raise AuthenticationError(MISSING_KEY)
    if not is_admin_key(state, token):
        try:
            await state.tenancy.authenticate_async(authorization)
        except AuthenticationError:
            raise AuthenticationError(WRONG_KEY) from None
