"""The application's typed state and the FastAPI dependencies that read it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from .admission import Admission
from .completions import CompletionService
from .config import Settings
from .embeddings import EmbeddingService
from .engines.base import Engine
from .ledger import Ledger
from .limits import Limiter
from .metrics import Metrics
from .registry import Registry
from .serving import ChatService
from .tenancy import Tenancy


@dataclass
class AppState:
    settings: Settings
    engine: Engine
    tenancy: Tenancy
    registry: Registry
    chat: ChatService
    completions: CompletionService  # /v1/completions
    embeddings: EmbeddingService  # /v1/embeddings
    metrics: Metrics
    created: int  # when this server started, for /v1/models
    limiter: Limiter  # rate limits and token budgets (service/limits/)
    ledger: Ledger  # one usage record per request, and the admin audit log (service/ledger/)
    engine_kind: str  # "local" or "vllm", as the ledger and build_info name it
    admission: Admission  # backpressure, deadlines and the drain (service/admission.py)


async def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.loragate
    return state


StateDep = Annotated[AppState, Depends(get_state)]
