"""A local embedding model: a transformers ``AutoModel`` in this process, on one worker thread.

The vector of a text is the mean of the model's last hidden states over its tokens (the attention
mask leaves the padding out), L2-normalised, in float32. Rows are padded on the right, so that a
causal model's tokens see the same context alone or in a batch, and a text gets the same vector
whatever it is batched with (to float rounding).

The model loads on the worker thread when the gateway starts; requests that come earlier wait
for it. The worker takes every request waiting when it is free (several requests' inputs in one
round), tokenises them, refuses the inputs that are too long (400), and runs the rest sorted by
length in batches of at most ``max_batch_rows`` rows and ``max_batch_tokens`` padded tokens.
Nothing of it runs on the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import (
    EngineFailure,
    EngineUnavailableError,
    InvalidRequestError,
    LoragateError,
    ServingConfigError,
)
from ..model_store import MODEL_LOAD_LOCK
from ..protocol_completions import EmbeddingRequest

log = logging.getLogger(__name__)

Vectors = npt.NDArray[np.float32]
MAX_ROUND_INPUTS = 4096  # inputs of several requests taken into one round
MAX_REQUEST_TOKENS = 300_000  # tokens of one request's inputs together (OpenAI's limit)
UNBOUNDED = 1_000_000  # tokenizers without a limit say 1e30


@dataclass(eq=False)
class _Job:
    texts: list[str]
    dimensions: int | None
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[tuple[Vectors, int]]


class LocalEmbedder:
    def __init__(
        self,
        path: Path,
        *,
        model_name: str,
        device: str = "auto",
        max_batch_rows: int = 64,
        max_batch_tokens: int = 16_384,
    ):
        self.path = path
        self.model_name: str | None = model_name
        self.dimensions: int | None = None  # known once loaded
        self.max_length = 0  # tokens per input, known once loaded
        self._device = device
        self._max_rows, self._max_tokens = max_batch_rows, max_batch_tokens
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._error: str | None = None
        self._model: Any = None
        self._tokenizer: Any = None
        self._pad_id = 0

    async def start(self) -> None:
        """Start the worker, which loads the model first."""
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(target=self._work, name="loragate-embeddings", daemon=True)
            self._thread.start()

    async def close(self) -> None:
        self._closed = True
        if self._thread is not None:
            self._queue.put(None)  # after the jobs already waiting
            await asyncio.to_thread(self._thread.join)
            self._thread = None

    async def embed(self, body: EmbeddingRequest, inputs: list[str]) -> dict[str, Any]:
        if self._closed:
            raise EngineUnavailableError("The embedding model is shutting down.")
        await self.start()
        loop = asyncio.get_running_loop()
        job = _Job(inputs, body.dimensions, loop, loop.create_future())
        self._queue.put(job)
        vectors, tokens = await job.future
        return embedding_list(vectors, body.model, tokens, body.encoding_format)

    # -- the worker thread ----------------------------------------------------------------------
    def load(self) -> None:
        import torch
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        device = self._device if self._device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        tokenizer = AutoTokenizer.from_pretrained(self.path)
        config = AutoConfig.from_pretrained(self.path)
        with MODEL_LOAD_LOCK:  # not beside another model's load (service.model_store)
            model = AutoModel.from_pretrained(self.path, dtype=torch.float32).to(device).eval()
        limits = [int(tokenizer.model_max_length), int(getattr(config, "max_position_embeddings", 0) or 0)]
        self.max_length = min(limit for limit in [*limits, UNBOUNDED] if limit > 0)
        self.dimensions = int(config.hidden_size)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self._pad_id = int(pad or 0)
        self._tokenizer, self._model = tokenizer, model
        log.info("loaded the embedding model %s from %s on %s", self.model_name, self.path, device)

    def _work(self) -> None:
        try:
            self.load()
        except Exception as exc:
            log.exception("the local embedding model failed to load")
            self._error = f"{type(exc).__name__}: {exc}"
        while True:
            job = self._queue.get()
            if job is None:
                return
            jobs, stop = [job], False
            while sum(len(j.texts) for j in jobs) < MAX_ROUND_INPUTS:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                jobs.append(more)
            self._serve(jobs)
            if stop:
                return

    def _serve(self, jobs: list[_Job]) -> None:
        """One round; whatever fails, each job gets an answer and the worker goes on."""
        if self._error is not None:
            for job in jobs:
                _settle(job, error=ServingConfigError("The embedding model could not be loaded."))
            return
        try:
            self._round(jobs)
        except Exception:
            log.exception("an embedding round failed")
            for job in jobs:  # those already answered keep their answer (_settle skips them)
                _settle(job, error=EngineFailure("The embedding model failed on this request."))

    def _round(self, jobs: list[_Job]) -> None:
        encoded: list[tuple[_Job, list[list[int]]]] = []
        for job in jobs:
            if job.future.cancelled():  # the client left while it waited
                continue
            try:
                encoded.append((job, self._encode(job)))
            except LoragateError as exc:
                _settle(job, error=exc)
        if not encoded:
            return
        answers = _Answers(encoded)
        try:
            self._compute([ids for _, rows in encoded for ids in rows], answers.done)
        except Exception:
            log.exception("embedding %d inputs failed", sum(len(rows) for _, rows in encoded))
            for job, _ in encoded:  # those already answered keep their answer (_settle skips them)
                _settle(job, error=EngineFailure("The embedding model failed on this request."))

    def _encode(self, job: _Job) -> list[list[int]]:
        if job.dimensions is not None and job.dimensions != self.dimensions:
            raise InvalidRequestError(
                f"This embedding model has {self.dimensions} dimensions and cannot shorten its vectors; "
                "leave dimensions out or send that number.",
                param="dimensions",
                code="unsupported_parameter",
            )
        rows: list[list[int]] = list(self._tokenizer(job.texts, add_special_tokens=True)["input_ids"])
        tokens = sum(len(ids) for ids in rows)
        if tokens > MAX_REQUEST_TOKENS:
            raise InvalidRequestError(
                f"The inputs have {tokens} tokens in all; this server embeds at most {MAX_REQUEST_TOKENS} "
                "in one request. Send them in several requests.",
                param="input",
            )
        for index, ids in enumerate(rows):
            if not ids:
                raise InvalidRequestError(f"Input {index} has no tokens.", param="input")
            if len(ids) > self.max_length:
                raise InvalidRequestError(
                    f"Input {index} has {len(ids)} tokens; this embedding model takes at most "
                    f"{self.max_length}. Please shorten it.",
                    param="input",
                )
        return rows

    def _compute(
        self, rows: list[list[int]], done: Callable[[Vectors, list[int]], None] | None = None
    ) -> Vectors:
        """The rows' vectors, in batches of similar lengths; ``done(vectors, batch)`` after each batch."""
        import torch

        assert self.dimensions is not None
        out = np.empty((len(rows), self.dimensions), dtype=np.float32)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        device = next(self._model.parameters()).device
        start = 0
        while start < len(order):
            end = start + 1  # a batch grows while its padded size fits (the last row is the longest)
            while (
                end < len(order)
                and end - start < self._max_rows
                and (end - start + 1) * len(rows[order[end]]) <= self._max_tokens
            ):
                end += 1
            batch = order[start:end]
            width = len(rows[batch[-1]])
            ids = torch.full((len(batch), width), self._pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, : len(rows[i])] = torch.tensor(rows[i])
                mask[row, : len(rows[i])] = 1
            with torch.inference_mode():
                ids, mask = ids.to(device), mask.to(device)
                hidden = self._model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
                weights = mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1)
                vectors = torch.nn.functional.normalize(pooled, p=2.0, dim=-1)
            out[batch] = vectors.cpu().numpy()
            if done is not None:
                done(out, batch)
            start = end
        return out


class _Answers:
    """A round's jobs, each answered as soon as all its rows are computed (rows run sorted by
    length, so a short request need not wait for a long one of the same round)."""

    def __init__(self, encoded: list[tuple[_Job, list[list[int]]]]):
        self._encoded = encoded
        self._owner = [n for n, (_, rows) in enumerate(encoded) for _ in rows]  # each row's job
        self._left = [len(rows) for _, rows in encoded]
        self._starts = [0]
        for _, rows in encoded:
            self._starts.append(self._starts[-1] + len(rows))

    def done(self, vectors: Vectors, rows: list[int]) -> None:
        """Rows ``rows`` of ``vectors`` are computed."""
        for row in rows:
            n = self._owner[row]
            self._left[n] -= 1
            if self._left[n] == 0:
                job, ids = self._encoded[n]
                result = vectors[self._starts[n] : self._starts[n + 1]].copy()
                _settle(job, result=(result, sum(len(i) for i in ids)))


def _settle(
    job: _Job, *, result: tuple[Vectors, int] | None = None, error: BaseException | None = None
) -> None:
    """Resolve a job's future on its event loop (from the worker thread), unless the client left."""

    def settle() -> None:
        if job.future.done():
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            assert result is not None
            job.future.set_result(result)

    try:
        job.loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the loop is closed: nobody waits
        pass


def embedding_list(vectors: Vectors, model: str, tokens: int, encoding_format: str) -> dict[str, Any]:
    """OpenAI's embedding list; base64 is the vectors' little-endian float32 bytes, as OpenAI sends them."""
    data: list[dict[str, Any]]
    if encoding_format == "base64":
        raw = vectors.astype("<f4", copy=False)
        data = [
            {"object": "embedding", "index": i, "embedding": base64.b64encode(row.tobytes()).decode("ascii")}
            for i, row in enumerate(raw)
        ]
    else:
        data = [
            {"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(vectors.tolist())
        ]
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
