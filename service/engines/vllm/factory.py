"""The vLLM backend as the settings describe it: ``--upstream`` replicas, or ``--spawn``'s own vLLM.

Kept beside the backend, so that a new upstream setting (TLS, the key, discovery) is wired where
the backend is written; ``service/app.py``'s engine table calls ``vllm_engine``.
"""

from __future__ import annotations

import logging

from ...config import Settings
from ...registry import Registry
from ...registry_store import RegistryUnavailable
from .engine import VllmEngine
from .spawn import VllmCommand, VllmSupervisor, lora_rank_limit

log = logging.getLogger(__name__)


def vllm_engine(settings: Settings) -> VllmEngine:
    supervisor = None
    upstream = settings.upstream
    if settings.spawn:
        try:  # the largest rank published sizes vLLM's --max-lora-rank
            registry = Registry.from_settings(settings)
            ranks = [a.manifest.rank for name in registry.names() for a in registry.versions(name)]
        except RegistryUnavailable as exc:
            log.warning("the adapter registry cannot be read (%s): vLLM starts with the default rank", exc)
            ranks = []
        command = VllmCommand(
            python=settings.vllm_python,
            model_path=settings.resolved_model_path,
            served_name=settings.model_name,
            port=settings.vllm_port,
            dtype=settings.dtype,
            max_lora_rank=lora_rank_limit(ranks),
            max_loras=settings.vllm_max_loras,
            max_model_len=settings.max_context,
            extra_args=settings.vllm_args,
            tool_call_parser=settings.tool_call_parser,
            api_key=settings.upstream_api_key,
        )
        supervisor, upstream = VllmSupervisor(command), [command.url]
    return VllmEngine(
        upstream,
        model_name=settings.model_name,
        max_loaded_adapters=settings.max_loaded_adapters,
        affinity_slack=settings.affinity_slack,
        connect_timeout=settings.upstream_connect_timeout,
        read_timeout=settings.upstream_read_timeout,
        health_interval=settings.health_interval,
        api_key=settings.upstream_api_key,
        ca_bundle=settings.upstream_ca_bundle,
        resolve_interval=settings.upstream_resolve_interval,
        supervisor=supervisor,
    )
