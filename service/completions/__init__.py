"""Serving ``/v1/completions`` (see ``service.py``): the plan, the choices and logprobs, the stream."""

from .service import CompletionService
from .streams import merged

__all__ = ["CompletionService", "merged"]
