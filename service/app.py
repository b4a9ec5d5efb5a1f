"""The application factory. Nothing is built at import time.

``create_app(settings)`` returns a FastAPI app whose lifespan starts the engine
(loading in the background, so ``/ready`` says when it can generate) and
closes it on shutdown. Tests pass their own engine (and NVML module).
Each app has its own metrics registry, served at ``/metrics``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from . import __version__
from .admin import routes as admin
from .admin.auth import scrape_key
from .admission import Admission
from .api import chat, completions, embeddings, health, metrics, models
from .api.openapi import describe
from .api.pipeline import ApiRouter, first_problem
from .completions import CompletionService
from .config import Settings
from .embeddings import EmbeddingService
from .engines.base import Engine, ReportsEvents
from .errors import LoragateError, MethodNotAllowedError, NotFoundError, error_envelope
from .gpu import GpuCollector
from .ledger import open_ledger
from .limits import build_limiter
from .metrics import Metrics
from .middleware import GatewayMiddleware
from .planning import Planner
from .prompts import TemplateStore
from .registry import Registry
from .serving import ChatService
from .shared_state import build_tenancy
from .state import AppState

log = logging.getLogger(__name__)

EngineFactory = Callable[[Settings], Engine]


def local_engine(settings: Settings, engine: Callable[..., Engine] | None = None) -> Engine:
    """The embedded engine on ``settings``; ``engine``: a LocalEngine subclass or partial (tests)."""
    from .model_store import prepare_model, require_extra

    require_extra("local", "the embedded engine (engine: local)")  # a clear error on the slim install
    from .engines.local.engine import LocalEngine

    path = settings.resolved_model_path
    return (engine or LocalEngine)(
        path,
        model_name=settings.model_name,
        dtype=settings.dtype,
        device=settings.device,
        threads=settings.threads,
        max_batch_size=settings.max_batch_size,
        max_context=settings.max_context,
        max_prefill_tokens=settings.max_prefill_tokens,
        max_loaded_adapters=settings.max_loaded_adapters,
        grammar_cache_size=settings.grammar_cache_size,
        prepare=None if settings.model_path else lambda: prepare_model(path),
    )


def vllm_engine(settings: Settings) -> Engine:
    from .engines.vllm.factory import vllm_engine as build

    return build(settings)


ENGINES: dict[str, EngineFactory] = {"local": local_engine, "vllm": vllm_engine}


def default_engine(settings: Settings) -> Engine:
    """The engine ``settings.engine`` names."""
    return ENGINES[settings.engine](settings)


def engine_kind(engine: Engine) -> str:
    """``LocalEngine`` -> ``local``: the build_info label."""
    return type(engine).__name__.removesuffix("Engine").lower() or "unknown"


API_ROUTES = (chat.ROUTE, completions.ROUTE, embeddings.ROUTE, models.ROUTE, models.RETRIEVE)


class LoragateApp(FastAPI):
    """FastAPI, but every ``/v1`` request goes to the API pipeline, ahead of the framework's layers.

    ``/v1`` is the gateway's hot path (``service/api/pipeline.py`` says why). FastAPI serves the
    operational routes (``/health``, ``/ready``, ``/metrics``), the admin API and the docs.
    """

    def __init__(self, api: ApiRouter, admission: Admission, **options: Any):
        super().__init__(**options)
        self.api = api
        self.admission = admission

    def drain(self) -> None:
        """The server begins to shut down: no new generating requests, and ``shutdown_grace`` for
        those in flight (``service/admission.py``). ``loragate serve``'s server calls it."""
        self.admission.drain()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/", len(scope.get("root_path", ""))):
            scope["app"] = self  # as Starlette does: the routes read the app's state through it
            await self.api(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def create_app(
    settings: Settings, engine_factory: EngineFactory = default_engine, *, nvml: Any = None
) -> LoragateApp:
    """``nvml``: a stand-in for the ``pynvml`` module (tests); None reads the real one at scrape time."""
    if settings.api_key is None:
        raise ValueError("create_app needs settings with an api_key (see Settings.with_dev_key)")
    gpu = GpuCollector(nvml)
    telemetry = Metrics(gpu)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = engine_factory(settings)
        if isinstance(engine, ReportsEvents):
            engine.subscribe(telemetry)
        telemetry.build_info(__version__, engine_kind(engine), settings.model_name)
        tenancy = await asyncio.to_thread(build_tenancy, settings)  # state_url: connects and loads
        registry = Registry.from_settings(settings)
        templates = TemplateStore(
            settings.prompts_dir,
            telemetry,
            render_timeout=settings.template_render_timeout,
            max_chars=settings.max_template_chars,
        )
        planner = Planner(settings, engine, tenancy, templates, registry)
        app.state.loragate = AppState(
            settings=settings,
            engine=engine,
            tenancy=tenancy,
            registry=registry,
            chat=ChatService(engine, planner),
            completions=CompletionService(engine, planner, telemetry),
            embeddings=EmbeddingService.from_settings(settings, tenancy, telemetry),
            metrics=telemetry,
            created=int(time.time()),
            limiter=build_limiter(settings),
            ledger=await asyncio.to_thread(
                open_ledger, settings.resolved_ledger_url, batch_seconds=settings.ledger_batch_seconds
            ),
            engine_kind=engine_kind(engine),
            admission=admission,
        )
        await engine.start()
        await app.state.loragate.embeddings.start()  # a local embedding model loads in the background
        gc.freeze()  # what start-up built lives as long as the server: the collector need not rescan it
        try:
            yield
        finally:
            state = app.state.loragate
            await state.embeddings.close()
            await engine.close()
            await state.limiter.aclose()
            await state.ledger.aclose()  # last: every answer's record is written
            await asyncio.to_thread(state.tenancy.close)  # state_url: stops the watcher
            gpu.close()

    api = ApiRouter(API_ROUTES, max_body_bytes=settings.max_request_bytes, metrics=telemetry)
    admission = Admission.from_settings(settings)
    app = LoragateApp(
        api,
        admission,
        title="loragate",
        version=__version__,
        summary="OpenAI-compatible gateway for LoRA-customised models",
        lifespan=lifespan,
    )
    app.add_middleware(GatewayMiddleware, max_body_bytes=settings.max_request_bytes)
    _install_error_handlers(app)
    scrape_guard = [Depends(scrape_key)] if settings.metrics_auth else []  # /ready and /metrics want a key
    for router in (health.router, metrics.router):
        app.include_router(router, dependencies=scrape_guard)
    if settings.admin_api_key is not None:  # else every /admin path is a 404
        app.include_router(admin.router)
    generated = app.openapi
    app.openapi = lambda: describe(generated(), api.routes)  # type: ignore[method-assign]  # FastAPI documents it as overridable
    return app


def _install_error_handlers(app: FastAPI) -> None:
    """FastAPI's own errors become the gateway's (``errors.py``), rendered as every route renders them."""

    @app.exception_handler(LoragateError)
    async def loragate_error(_: Request, exc: LoragateError) -> JSONResponse:
        return JSONResponse(exc.envelope(), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return await loragate_error(request, first_problem(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error = {404: NotFoundError, 405: MethodNotAllowedError}.get(exc.status_code)
        if error is not None:
            return await loragate_error(request, error(str(exc.detail)))
        kind = "invalid_request_error" if exc.status_code < 500 else "internal_error"  # any other status
        return JSONResponse(error_envelope(str(exc.detail), kind), status_code=exc.status_code)
