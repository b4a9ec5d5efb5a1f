"""The embedded engine: transformers and PEFT (LoRA adapters) in this process.

Loading happens on a background thread after ``start()``, so the gateway
answers ``/health`` at once and ``/ready`` turns 200 when the model can
generate. Generation runs on the scheduler's worker thread, never on the
event loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncGenerator, Callable, Sequence
from pathlib import Path
from typing import Any

from ...domain import ChatMessage, Delta, GenerationRequest, SamplingParams
from ...errors import (
    ContextLengthError,
    EngineFailure,
    EngineUnavailableError,
    InvalidRequestError,
    ModelNotFoundError,
)
from ...model_store import MODEL_LOAD_LOCK
from ..base import EngineEvents, EngineHealth
from .grammar import Grammar, GrammarCache, GrammarLimitError
from .scheduler import Job, Scheduler
from .tool_parser import parse_tool_calls
from .tools import TemplateTraits, render, template_traits

log = logging.getLogger(__name__)


def auto_dtype(device: str) -> Any:
    """bfloat16 where the hardware computes it natively (GPUs, AVX512/AMX CPUs), else float32.

    On an AVX2-only CPU, bfloat16 matmuls are emulated, slower than float32 (docs/benchmarks.md).
    """
    import torch

    if device.startswith("cuda"):
        return torch.bfloat16
    return torch.bfloat16 if "AVX512" in torch.backends.cpu.get_cpu_capability() else torch.float32


class LocalEngine:
    def __init__(
        self,
        model_path: Path,
        *,
        model_name: str,
        dtype: str = "auto",
        device: str = "auto",
        threads: int | None = None,
        max_batch_size: int = 32,
        max_context: int | None = None,
        max_prefill_tokens: int = 8192,
        max_loaded_adapters: int = 8,
        grammar_cache_size: int = 128,
        prepare: Callable[[], object] | None = None,
        scheduler: Callable[..., Scheduler] = Scheduler,
    ):
        self.model_path = model_path
        self.model_name = model_name
        self.max_context = max_context or 0
        self._dtype, self._device, self._threads = dtype, device, threads
        self._max_batch_size = max_batch_size
        self.max_prefill_tokens = max_prefill_tokens
        self._max_loaded_adapters = max_loaded_adapters
        self._grammar_cache_size = grammar_cache_size
        self._scheduler: Scheduler | None = None
        self._tokenizer: Any = None
        self._traits = TemplateTraits()  # what the chat template does with tools (probed at load)
        self.grammars: GrammarCache | None = None  # compiled output grammars, set at load
        self.vocab_size = 0  # token ids below this are valid (logit_bias)
        self._error: str | None = None
        self._loader: threading.Thread | None = None
        self._adapter_paths: dict[str, Path] = {}  # name -> registry folder, set by ensure_adapter
        self._prepare = prepare  # makes model_path exist (the packaged model's conversion)
        self._make_scheduler = scheduler  # tests pass one whose steps they can hold
        self._events = EngineEvents()

    def subscribe(self, events: EngineEvents) -> None:
        """Where adapter loads and evictions go; call it before ``start()``."""
        self._events = events

    # -- lifecycle -------------------------------------------------------------
    async def start(self) -> None:
        """Begin loading in the background; ``health()`` says when it is done."""
        self._loader = threading.Thread(target=self._load_guarded, name="loragate-loader", daemon=True)
        self._loader.start()

    def load(self) -> None:
        """Load the model and start the scheduler (blocking)."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if self._threads:
            torch.set_num_threads(self._threads)
        device = self._device if self._device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = auto_dtype(device) if self._dtype == "auto" else getattr(torch, self._dtype)
        tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        # PreTrainedModel.to is wrapped by functools.wraps, whose typeshed type does not bind self
        with MODEL_LOAD_LOCK:
            model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=dtype).to(device).eval()  # type: ignore[arg-type]
        eos = model.generation_config.eos_token_id
        eos_ids = [eos] if isinstance(eos, int) else list(eos or [tokenizer.eos_token_id])
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
        self.max_context = self.max_context or int(model.config.max_position_embeddings)
        scheduler = self._make_scheduler(
            model,
            tokenizer,
            eos_token_ids=eos_ids,
            pad_token_id=pad,
            max_batch_size=self._max_batch_size,
            max_prefill_tokens=self.max_prefill_tokens,
            max_loaded_adapters=self._max_loaded_adapters,
            events=self._events,
        )
        self.vocab_size = min(len(tokenizer), int(model.config.vocab_size))
        self.grammars = GrammarCache(
            tokenizer, int(model.config.vocab_size), eos_ids, self._grammar_cache_size
        )
        self._traits = template_traits(tokenizer)
        scheduler.start()
        self._tokenizer, self._scheduler = tokenizer, scheduler
        log.info("loaded %s from %s on %s (%s)", self.model_name, self.model_path, device, dtype)

    def _load_guarded(self) -> None:
        try:
            if self._prepare is not None:
                self._prepare()
            self.load()
        except Exception as exc:
            log.exception("the embedded engine failed to load")
            self._error = f"{type(exc).__name__}: {exc}"

    async def close(self) -> None:
        if self._loader is not None:
            await asyncio.to_thread(self._loader.join)
        if self._scheduler is not None:
            await asyncio.to_thread(self._scheduler.close)
            self._scheduler = None
        if self.grammars is not None:
            self.grammars.close()

    async def health(self) -> EngineHealth:
        if self._scheduler is not None:
            return EngineHealth(
                True, "ready", {"running": self._scheduler.running, "waiting": self._scheduler.waiting}
            )
        if self._error:
            return EngineHealth(False, f"failed to load: {self._error}")
        return EngineHealth(False, "loading")

    async def ensure_adapter(self, name: str, path: Path) -> None:
        """Remember where ``name`` lives; the worker loads it when a request first needs it."""
        if not (path / "adapter_config.json").is_file():
            raise ModelNotFoundError(f"The adapter `{name}` has no files to load.", param="model")
        self._adapter_paths[name] = path

    # -- generation --------------------------------------------------------------
    def render_prompt(self, messages: Sequence[ChatMessage]) -> str:
        """The text the model sees: the messages after the model's chat template."""
        return self.render(GenerationRequest("", messages, _NO_SAMPLING))

    def render(self, request: GenerationRequest) -> str:
        """A chat request's prompt text: messages and tools through the chat template (tools.py)."""
        return render(self._tokenizer, self._traits, request)

    def encode(self, messages: Sequence[ChatMessage]) -> list[int]:
        return list(self._tokenizer(self.render_prompt(messages), add_special_tokens=False).input_ids)

    def encode_request(self, request: GenerationRequest) -> list[int]:
        """The prompt's ids: a raw prompt as it is (special tokens as the tokenizer adds them,
        like vLLM's completions), or the chat messages through the template."""
        if request.prompt is not None:
            return list(self._tokenizer(request.prompt).input_ids)
        return list(self._tokenizer(self.render(request), add_special_tokens=False).input_ids)

    def _check_logit_bias(self, request: GenerationRequest) -> None:
        for token, _ in request.sampling.logit_bias:
            if not 0 <= token < self.vocab_size:
                raise InvalidRequestError(
                    f"logit_bias has token id {token}, outside this model's vocabulary "
                    f"(0 to {self.vocab_size - 1}).",
                    param="logit_bias",
                )

    def _check_prompt(self, request: GenerationRequest, prompt_ids: list[int]) -> None:
        """400 for a prompt the engine cannot prefill: empty, over the prefill budget or the context."""
        where = "prompt" if request.prompt is not None else "messages"
        if not prompt_ids:  # a raw prompt of characters the tokenizer drops (some control characters)
            raise InvalidRequestError(f"The {where} has no tokens for this model.", param=where)
        if len(prompt_ids) > self.max_prefill_tokens:  # its prefill alone would pass the memory budget
            raise ContextLengthError(
                f"This server prefills at most {self.max_prefill_tokens} prompt tokens at once; your "
                f"{where} have {len(prompt_ids)} tokens. Please shorten them.",
                param=where,
            )
        wanted = len(prompt_ids) + request.sampling.max_tokens
        if wanted > self.max_context:
            raise ContextLengthError(
                f"This model's maximum context length is {self.max_context} tokens. However, you requested "
                f"{wanted} tokens ({len(prompt_ids)} in the {where}, {request.sampling.max_tokens} in the "
                f"completion). Please reduce the length of the {where} or completion.",
                param=where,
            )

    async def _compile(self, request: GenerationRequest) -> Grammar | None:
        if request.constraint is None:
            return None
        assert self.grammars is not None  # set at load, with the scheduler
        return await self.grammars.get_async(request.constraint)

    def stream(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        """The request's deltas; with tools and ``auto`` (no constraint), calls become ``tool_calls``."""
        deltas = self._stream(request)
        if request.tools and request.tool_choice == "auto" and request.constraint is None:
            names = [str(tool.get("function", tool).get("name")) for tool in request.tools]
            return parse_tool_calls(deltas, names, request.parallel_tool_calls)
        return deltas

    async def _stream(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        scheduler = self._scheduler
        if scheduler is None:
            raise EngineUnavailableError("The model is still loading; retry shortly.")
        adapter_path = None
        if request.adapter is not None:
            adapter_path = self._adapter_paths.get(request.adapter)
            if adapter_path is None:
                raise ModelNotFoundError(f"The adapter `{request.adapter}` is not registered.", param="model")
        self._check_logit_bias(request)
        prompt_ids = await asyncio.to_thread(self.encode_request, request)
        self._check_prompt(request, prompt_ids)
        grammar = await self._compile(request)
        job = Job(
            request=request,
            prompt_ids=prompt_ids,
            loop=asyncio.get_running_loop(),
            adapter_path=adapter_path,
            grammar=grammar,
        )
        scheduler.submit(job)
        finished = 0
        try:
            while finished < request.n:
                item = await job.queue.get()
                if isinstance(item, BaseException):
                    raise _failure(item) from item
                if item.finish_reason is not None:
                    finished += 1
                yield item
        finally:
            if finished < request.n:
                job.cancelled = True


def _failure(exc: BaseException) -> Exception:
    """What a request's failure in the worker becomes: the engine's (500), or its schema's (400)."""
    if isinstance(exc, GrammarLimitError):  # the schema's grammar outgrew its limits while decoding
        return InvalidRequestError(
            "This JSON schema's grammar exceeded the server's limits while decoding; simplify the "
            "schema (fewer or simpler patterns, bounded strings).",
            param="response_format",
        )
    return EngineFailure("The engine failed while generating this response.")


_NO_SAMPLING = SamplingParams(max_tokens=1)
