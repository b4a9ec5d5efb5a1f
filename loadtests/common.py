"""What the benchmarks share: the load, how a target is addressed, one request, the paired probe.

Shared pieces live here and in ``servers``. A benchmark module imports the parts it runs
(``bench_vllm`` runs ``bench_instant`` and ``bench_vllm_probe``; ``bench_instant`` runs
``bench_client`` and ``bench_fairness``), never the module that runs it: no import circle.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass

import httpx
import torch
from tqdm import tqdm

from loadtests.probe import Probe, cpu_seconds, per_request_ms

MODEL = "SmolLM2-135M-Instruct"
TARGET_MS = 2.0  # the target for what the gateway adds, p50
VIA, DIRECT, FLOOR = "gateway -> vLLM", "vLLM direct", "floor relay"
DEPARTMENTS = ("plain", "it", "legal")  # base, then the two demo adapters: ``servers.TENANTS``
PROMPTS = [
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Explain gravity in one sentence.",
    "List three uses of a paperclip.",
    "How do I reset a forgotten password on a laptop?",
    "Summarise the plot of Romeo and Juliet.",
    "What are the benefits of regular exercise?",
    "Give me a recipe for pancakes.",
    "Why is the sky blue?",
    "Translate 'good morning' into Spanish and French.",
    "What is a LoRA adapter in machine learning?",
    "Describe a cat to someone who has never seen one.",
    "How does a refrigerator keep food cold?",
    "Write an email asking for a day off.",
    "What should I pack for a weekend hiking trip?",
    "Tell me a fun fact about octopuses.",
]


def machine() -> str:
    """The line each report starts with: figures from different machines do not compare."""
    return (
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, python {platform.python_version()}"
    )


@dataclass
class Target:
    """Where requests go and how each department's request is addressed there."""

    name: str
    url: str  # .../v1/chat/completions
    headers: dict[str, str]
    models: dict[str, str]  # department -> body "model"
    department_header: bool


def targets(gateway_port: int, upstream: str, key: str, served: str) -> tuple[Target, Target]:
    """The gateway (tenant acme's key, a department header) and its upstream addressed directly."""
    via = Target(VIA, f"http://127.0.0.1:{gateway_port}/v1/chat/completions",
                 {"Authorization": f"Bearer {key}"}, dict.fromkeys(DEPARTMENTS, served), True)  # fmt: skip
    direct = Target(DIRECT, f"{upstream}/v1/chat/completions", {},
                    {"plain": served, "it": "acme-it@1", "legal": "acme-legal@1"}, False)  # fmt: skip
    return via, direct


async def one(
    client: httpx.AsyncClient, target: Target, department: str, prompt: str, new_tokens: int
) -> tuple[float, float, int]:
    """One streamed chat request, read to its end: (seconds, seconds to the first token, tokens)."""
    body = {
        "model": target.models[department],
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": new_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    headers = target.headers | ({"X-Department": department} if target.department_header else {})
    started = time.perf_counter()
    first = None
    tokens = 0
    async with client.stream("POST", target.url, json=body, headers=headers) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if first is None and chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - started
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return time.perf_counter() - started, first or 0.0, tokens


async def paired_probe(
    via: Target, direct: Target, pairs: int, gateway_pid: int, bar: tqdm, upstream_pid: int | None = None
) -> Probe:
    """Added latency without load noise: one-token requests, gateway and direct in turn, one at a time.

    The order alternates, so neither side always comes second (warm caches, a woken vLLM).
    """
    added = []
    gateway_before = cpu_seconds(gateway_pid)
    upstream_before = cpu_seconds(upstream_pid) if upstream_pid else None
    async with httpx.AsyncClient(timeout=60) as client:
        for i in range(pairs):
            department, prompt = DEPARTMENTS[i % 3], PROMPTS[i % len(PROMPTS)]
            latency = {}
            for target in (via, direct) if i % 2 == 0 else (direct, via):
                latency[target.name] = (await one(client, target, department, prompt, 1))[0]
            added.append(latency[via.name] - latency[direct.name])
            bar.update(1)
    gateway = per_request_ms(gateway_pid, gateway_before, pairs)
    upstream = None
    if upstream_pid and upstream_before:  # it serves both sides of each pair
        upstream = per_request_ms(upstream_pid, upstream_before, 2 * pairs)
    return Probe(added, gateway, upstream)
