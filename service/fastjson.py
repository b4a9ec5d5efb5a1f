"""JSON on the hot path with orjson, and the standard library for what orjson refuses.

A request through the vLLM engine decodes every chunk of the replica's stream and encodes its
answer: with ``json`` that was ~10% of the gateway's CPU per request at concurrency 64, and orjson
does it in a third of the time or less (docs/benchmarks.md). orjson refuses what strict JSON
refuses (``NaN``, ``Infinity``) and what it cannot encode (integers past 64 bits, unknown types);
those go through ``json``, so nothing changes but the speed.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def loads(data: str | bytes) -> Any:
    """``json.loads``; raises ``ValueError`` for text that is not JSON."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def dumps(content: Any) -> bytes:
    """Compact UTF-8 JSON (``json.dumps(..., ensure_ascii=False, separators=(",", ":")).encode()``)."""
    try:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:
        return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()
