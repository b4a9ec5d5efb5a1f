"""Continuous batching for a transformers causal LM, on one worker thread.

Each loop turn admits waiting requests (prefilled together, then merged into
the running batch) and runs one decode step for every running sequence. A
request that arrives while others decode joins at the next step; a finished or
cancelled sequence leaves at once. Results go back to the asyncio side with
``loop.call_soon_threadsafe``; nothing here touches the event loop otherwise.

Fault isolation: one tenant's request must never end another's. What is done per row
(sampling, grammar masks, stop strings, detokenising, logprobs) is guarded per row, so a
failure there fails that row's request alone. A prefill that fails is retried one job at a
time, so only the job it cannot run fails; the running batch is untouched by it. Only a
failed decode step, the forward pass every running row shares, fails every request in flight.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace

import torch
from transformers import PreTrainedModel

from ..base import EngineEvents
from .kv_batch import KVBatch, slack_cache
from .logprobs import TokenTexts, entry, output_layer_inputs, prompt_entries, sampled
from .lora import LoraSlots
from .rows import Job, LogprobTrail, Row
from .sampling import make_bias, make_generator, needs_processing, next_token
from .text import Detokenizer, TextStream

log = logging.getLogger(__name__)
_TURNS_KEPT = 4096  # requests whose last turn is remembered


__all__ = ["Job", "Scheduler"]
_Row = Row  # the name tests knew it by


class Scheduler:
    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: Detokenizer,
        *,
        eos_token_ids: list[int],
        pad_token_id: int,
        max_batch_size: int,
        max_prefill_tokens: int = 8192,
        max_loaded_adapters: int = 8,
        events: EngineEvents | None = None,
    ):
        self.lora = LoraSlots(model, max_loaded_adapters, events)
        self.config = model.config
        self.tokenizer = tokenizer
        self.device = model.device
        self.eos_ids = torch.tensor(sorted(set(eos_token_ids)), device=self.device)
        self._eos_set = set(eos_token_ids)
        self.pad_id = pad_token_id
        self.texts = TokenTexts(tokenizer)  # tokens' own texts, for logprobs
        self.max_batch_size = max_batch_size
        self.max_prefill_tokens = max_prefill_tokens  # jobs x longest prompt, per prefill (its memory)
        self._waiting: deque[Job] = deque()
        self._turns = 0  # jobs taken so far
        self._last_turn: dict[str, int] = {}  # request (Job.group) -> the turn its last job was taken
        self._wake = threading.Condition()
        self._closing = False
        self._rows: list[Row] = []
        self._admitting: list[Job] = []  # taken from the queue, not yet rows: in flight too
        self._batch: KVBatch | None = None
        self._next: torch.Tensor | None = None  # next input token per row
        self._thread = threading.Thread(target=self._run, name="loragate-scheduler", daemon=True)

    # -- the asyncio side ----------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._wake:
            self._waiting.append(job)
            self._wake.notify()

    def close(self) -> None:
        with self._wake:
            self._closing = True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    @property
    def model(self) -> PreTrainedModel:
        """The base model (PEFT, once an adapter is loaded, wraps it in ``lora.model``)."""
        return self.lora.base

    @property
    def running(self) -> int:
        return len(self._rows)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    # -- the worker thread ---------------------------------------------------
    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._wake:
                    while not self._closing and not self._waiting and not self._rows:
                        self._wake.wait()
                    if self._closing:
                        break
                try:
                    self._admit()
                    if self._rows:
                        self._decode_step()
                except Exception as exc:  # the shared forward pass: no row can be singled out
                    log.exception("generation step failed")
                    self._fail_all(exc, waiting=False)
        self._fail_all(RuntimeError("the engine is shutting down"), waiting=True)

    def _take_waiting(self) -> list[Job]:
        """The next jobs, as many as free rows and the prefill's token budget allow.

        Fair between requests: the next job is the first waiting one of the request with the
        fewest rows in the batch (and just taken), then of the one whose last turn is the oldest,
        so one request of many jobs (``/v1/completions`` with 256 prompts: a job each) cannot
        queue every later request behind all of them. Among equals, first come, first served.

        A job alone is always taken (its prompt is within the budget: the engine refuses longer
        ones), so a long prompt is prefilled on its own rather than padding every short one to it.
        """
        room = self.max_batch_size - len(self._rows)
        taken: list[Job] = []
        width = 0
        with self._wake:
            load: dict[str, int] = {}  # rows per request, in the batch and taken
            for row in self._rows:
                load[row.job.group] = load.get(row.job.group, 0) + 1
            while room > 0:
                job = self._next_fair(load)
                if job is None:
                    break
                if job.request.n > room and (taken or self._rows):
                    break  # wait until enough rows are free
                alone = job.request.sampling.prompt_logprobs  # prefilled alone: its positions are read
                if taken and (alone or taken[0].request.sampling.prompt_logprobs):
                    break
                wider = max(width, len(job.prompt_ids))
                if taken and (len(taken) + 1) * wider > self.max_prefill_tokens:
                    break  # the next prefill takes it
                width = wider
                self._waiting.remove(job)
                job.queue_seconds = time.monotonic() - job.submitted
                taken.append(job)
                room -= job.request.n
                load[job.group] = load.get(job.group, 0) + job.request.n
                self._turns += 1
                self._last_turn[job.group] = self._turns
        if len(self._last_turn) > _TURNS_KEPT:  # forget requests that wait no more
            waiting = {job.group for job in self._waiting}
            self._last_turn = {g: t for g, t in self._last_turn.items() if g in waiting}
        return taken

    def _next_fair(self, load: dict[str, int]) -> Job | None:
        """The first waiting job of the request with the fewest rows in ``load``, then the oldest
        last turn; drops cancelled jobs."""
        while self._waiting and self._waiting[0].cancelled:
            self._waiting.popleft()
        best: Job | None = None
        best_key = (0, 0)
        for job in self._waiting:
            if job.cancelled:
                continue
            key = (load.get(job.group, 0), self._last_turn.get(job.group, 0))
            if best is None or key < best_key:
                best, best_key = job, key
                if key == (0, 0):  # a request with nothing running that never had a turn
                    break
        return best

    def _admit(self) -> None:
        jobs = self._with_adapters_loaded(self._take_waiting())
        if not jobs:
            return
        # Only the prefill is retried: joining changes the shared batch, so a failure there is the
        # batch's (the worker's _fail_all), not a job's.
        try:
            prefilled = self._prefill(jobs)
        except Exception as exc:
            if len(jobs) == 1:
                self._fail_prefill(jobs[0], exc)
                return
            log.warning("prefill of %d requests failed (%s); retrying them one at a time", len(jobs), exc)
        else:
            self._join(*prefilled)
            return
        for job in jobs:  # only a job that cannot be prefilled on its own fails
            try:
                alone = self._prefill([job])
            except Exception as exc:
                self._fail_prefill(job, exc)
            else:
                self._join(*alone)

    def _fail_prefill(self, job: Job, exc: Exception) -> None:
        log.error("prefill failed for request %s: %s: %s", job.request.request_id, type(exc).__name__, exc)
        self._admitting = []
        job.send(exc)

    def _prefill(self, jobs: list[Job]) -> tuple[KVBatch, list[Row], list[int]]:
        """Run the jobs' prompts together and pick each row's first token; the running batch is untouched."""
        self._admitting = jobs
        width = max(len(j.prompt_ids) for j in jobs)
        ids = torch.full((len(jobs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(jobs), width), dtype=torch.long)
        for i, job in enumerate(jobs):
            ids[i, width - len(job.prompt_ids) :] = torch.tensor(job.prompt_ids)
            mask[i, width - len(job.prompt_ids) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        cache = slack_cache(self.config)
        prompt_logprobs = jobs[0].request.sampling.prompt_logprobs  # such a job is prefilled alone
        keep: AbstractContextManager[list[torch.Tensor]] = (
            output_layer_inputs(self.model) if prompt_logprobs else nullcontext([])
        )
        with keep as hidden:
            out = self.lora.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=(mask.cumsum(dim=1) - 1).clamp(min=0),
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=0 if prompt_logprobs else 1,
                **self.lora.forward_kwargs([j.request.adapter for j in jobs]),
            )
        if prompt_logprobs:
            job = jobs[0]
            top_n = job.request.sampling.top_logprobs
            job.prompt_logprobs = prompt_entries(self.model, hidden[0][0], job.prompt_ids, top_n, self.texts)
        logits = out.logits[:, -1, :].float()
        expand = torch.repeat_interleave(
            torch.arange(len(jobs), device=self.device),
            torch.tensor([j.request.n for j in jobs], device=self.device),
        )
        group = KVBatch(cache, mask)
        group.select(expand)
        rows = [self._new_row(job, index) for job in jobs for index in range(job.request.n)]
        firsts = [
            self._guarded_pick(row, logits[job_pos].clone())
            for row, job_pos in zip(rows, expand.tolist(), strict=True)
        ]
        return group, rows, firsts

    def _join(self, group: KVBatch, rows: list[Row], firsts: list[int]) -> None:
        """The prefilled rows join the running batch; each sends its first token."""
        if self._batch is None:
            self._batch = group
        else:
            self._batch.extend(group)
        self._rows.extend(rows)
        self._admitting = []
        first = torch.tensor(firsts, device=self.device)
        self._next = first if self._next is None else torch.cat([self._next, first])
        for row, token in zip(rows, firsts, strict=True):
            self._guarded_accept(row, token)
        self._drop_finished()

    def _with_adapters_loaded(self, jobs: list[Job]) -> list[Job]:
        """Load the adapters these jobs need; a job whose adapter fails to load fails alone."""
        requests = [r.job.request for r in self._rows] + [j.request for j in jobs]
        in_use = {request.adapter for request in requests if request.adapter is not None}
        ready = []
        for job in jobs:
            name = job.request.adapter
            try:
                if name is not None:
                    if job.adapter_path is None:
                        raise ValueError(f"no path for adapter {name!r}")
                    self.lora.ensure(name, job.adapter_path, in_use)
            except Exception as exc:
                log.exception("loading adapter %s failed", name)
                job.send(exc)
                continue
            ready.append(job)
        return ready

    def _new_row(self, job: Job, index: int) -> Row:
        params = job.request.sampling
        if params.seed is not None and index:  # n choices from one seed must differ
            params = replace(params, seed=params.seed + index)
        if job.grammar is not None:  # the grammar decides where the output ends
            params = replace(params, min_tokens=0, ignore_eos=False)
        penalised = params.presence_penalty != 0.0 or params.frequency_penalty != 0.0
        return Row(
            job=job,
            index=index,
            params=params,
            text=TextStream(self.tokenizer, params.stop),
            generator=make_generator(params, self.device),
            seen=torch.tensor(job.prompt_ids, device=self.device),
            queue_seconds=job.queue_seconds,
            grammar=job.grammar.row() if job.grammar is not None else None,
            counts=torch.zeros(self.config.vocab_size, device=self.device) if penalised else None,
            bias=make_bias(params, self.device),
            trail=LogprobTrail() if params.logprobs else None,
            prompt_logprobs=job.prompt_logprobs is not None,
            special=job.grammar is not None or params.logprobs,
        )

    def _decode_step(self) -> None:
        self._drop_cancelled()
        if not self._rows:
            return
        assert self._batch is not None and self._next is not None
        batch = self._batch
        mask = torch.cat([batch.mask, batch.mask.new_ones((batch.rows, 1))], dim=1)
        out = self.lora.model(
            input_ids=self._next.view(-1, 1),
            attention_mask=mask,
            position_ids=batch.positions(),
            past_key_values=batch.cache,
            cache_position=torch.tensor([batch.columns], device=self.device),
            use_cache=True,
            **self.lora.forward_kwargs([row.job.request.adapter for row in self._rows]),
        )
        batch.mask = mask
        logits = out.logits[:, -1, :].float()  # a CPU argmaxes float32 ~3x faster than bfloat16
        tokens = torch.argmax(logits, dim=-1).tolist()
        for i, row in enumerate(self._rows):
            if row.special or needs_processing(row.params, row.generated):
                tokens[i] = self._guarded_pick(row, logits[i])
        self._next = torch.tensor(tokens, device=self.device)
        for row, token in zip(self._rows, tokens, strict=True):
            self._guarded_accept(row, token)
        self._drop_finished()

    def _guarded_pick(self, row: Row, logits: torch.Tensor) -> int:
        """The row's next token; if picking fails, the row's request fails alone (token: the pad id).

        ``logits``: the row's raw logits. Logprobs come from them as they are; then the row's
        grammar masks them and the sampler picks.
        """
        if row.finished or row.job.cancelled:
            return self.pad_id
        try:
            logprobs = sampled(logits) if row.trail is not None else None
            logits = logits.float()
            if row.grammar is not None:
                row.grammar.apply(logits)
            token = next_token(
                logits,
                row.params,
                seen=row.seen,
                generated=row.generated,
                stop_token_ids=self.eos_ids,
                generator=row.generator,
                counts=row.counts,
                bias=row.bias,
            )
            if row.trail is not None and logprobs is not None:
                row.trail.picked = entry(logprobs, token, row.params.top_logprobs, self.texts)
            return token
        except Exception as exc:
            self._fail_row(row, exc)
            return self.pad_id

    def _guarded_accept(self, row: Row, token: int) -> None:
        if row.finished or row.job.cancelled:
            return
        try:
            row.accept(token, self._eos_set)
        except Exception as exc:
            self._fail_row(row, exc)

    def _fail_row(self, row: Row, exc: Exception) -> None:
        """Fail the row's request (all its choices); every other request goes on.

        The job counts as cancelled from here, so its other rows (in the batch or being admitted)
        do nothing more and leave at the next step.
        """
        request_id = row.job.request.request_id
        log.error("request %s failed in its own row: %s: %s", request_id, type(exc).__name__, exc)
        row.finished = True
        row.job.cancelled = True
        row.job.send(exc)

    def _keep(self, keep: list[int]) -> None:
        if len(keep) == len(self._rows):
            return
        assert self._batch is not None and self._next is not None
        self._rows = [self._rows[i] for i in keep]
        if not self._rows:
            self._batch, self._next = None, None
            return
        index = torch.tensor(keep, device=self.device)
        self._batch.select(index)
        self._next = self._next.index_select(0, index)

    def _drop_finished(self) -> None:
        self._keep([i for i, row in enumerate(self._rows) if not row.finished])

    def _drop_cancelled(self) -> None:
        self._keep([i for i, row in enumerate(self._rows) if not row.job.cancelled])

    def _fail_all(self, exc: BaseException, *, waiting: bool) -> None:
        """Fail the jobs in flight (and the queued ones too when ``waiting``); reset the batch."""
        jobs = {row.job for row in self._rows} | set(self._admitting)
        if waiting:
            with self._wake:
                jobs.update(self._waiting)
                self._waiting.clear()
        self._rows, self._admitting, self._batch, self._next = [], [], None, None  # before anyone hears
        for job in jobs:
            job.send(exc)
