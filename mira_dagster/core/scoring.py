"""Scoring records with a scorer (teacher or student), never paying twice for the same request.

A scorer is a `ScorerSpec` (everything that changes a score; its hash is `scorer_version`) plus a
`ChatBackend` that turns (system, user) into a completion: the offline stand-in or an
OpenAI-compatible endpoint. Replies are cached by (record_id, scorer_version) in a `ReplyCache` as they
arrive, in batches, so a crash loses at most one batch and a re-run sends nothing already answered.

A reply that parses as `partial` or `parse_error` is asked again, the same request, up to `parse_retries`
times: the scorer samples (temperature > 0), so another reply often parses. Every attempt is cached under its
number (0 = the first request), and the record's result is its best attempt (see `best_attempt`). A re-run
asks again only a record with no `ok` attempt and fewer than 1 + parse_retries attempts, and only for the
missing ones: raising parse_retries later asks again, lowering it sends nothing.

A source is scored as a stream of chunks (`score_stream`): each chunk's ids are looked up in the cache at once,
its jobs are made one at a time as a bounded queue takes them, and each outcome goes to a sink as it settles. So
a step's memory is bounded by the chunk and max_in_flight, not the source size, and the queue stays full across
chunk boundaries.

`run_scorer` is the one entry point of the assets that score (teacher_judgments, teacher_labels, student_scores):
the pipeline's limits, the server's context length, progress lines, parse retries, and the backend closed at the end.
`count_requests` runs the same `run_scorer` on the same chunks with requests held back and nothing written: the cost
plan's counts (cached, too long, to send) are what the asset would do, by construction.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal, Protocol

from pydantic import BaseModel

from mira_dagster.core.config import PipelineSettings
from mira_dagster.core.parsing import ScoreResult, parse_reply
from mira_dagster.core.records import RecordLike, estimate_tokens

Role = Literal["teacher", "student"]


class ScorerSpec(BaseModel):
    """Everything that changes a score. Endpoint URLs and keys are not part of it."""

    role: Role
    backend: Literal["offline", "openai"]
    model: str
    system_prompt: str
    user_template: str
    anchors_sha256: str
    temperature: float
    top_p: float
    max_tokens: int
    # The regex the server constrains replies to (vLLM structured outputs), if any.
    structured_regex: str | None = None

    @property
    def version(self) -> str:
        blob = json.dumps(self.model_dump(), sort_keys=True, ensure_ascii=False).encode("utf-8")
        return hashlib.sha256(blob).hexdigest()[:16]


class Completion(BaseModel):
    text: str
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None


class ChatBackend(Protocol):
    async def complete(self, system: str, user: str, spec: ScorerSpec) -> Completion: ...

    async def count_prompt_tokens(self, system: str, user: str, spec: ScorerSpec) -> int | None:
        """The exact prompt length as the server counts it, or None if it cannot say."""
        ...


class ReplyWriterLike(Protocol):
    def add(self, record_id: str, comp: Completion, attempt: int = 0) -> None: ...

    def flush(self) -> None: ...


class ReplyCache(Protocol):
    def load_attempts(self, version: str, record_ids: Sequence[str]) -> dict[str, list[Completion]]:
        """Every cached attempt of each record that has any, in attempt order."""
        ...

    def writer(self, version: str, batch_size: int = 256) -> ReplyWriterLike: ...


class RequestFailed(Exception):
    """A request that failed for good. Its message names the error and is safe to store and show: the backend
    that raises it has removed credentials and URLs' secrets. `sent` is False when it was never sent (the
    backend had given up on its endpoints), so RunStats.sent counts only requests that went out."""

    def __init__(self, message: str, *, sent: bool = True) -> None:
        super().__init__(message)
        self.sent = sent


@dataclass(slots=True)
class Job:
    record: RecordLike
    user: str


@dataclass
class Outcome:
    record_id: str
    result: ScoreResult
    cached: bool  # no request went out for it this run
    completion: Completion | None = None


@dataclass
class Attempt:
    """One reply of a record and what it parsed to."""

    result: ScoreResult
    completion: Completion


@dataclass
class RunStats:
    """Each record ends in exactly one of from_cache, too_long, answered (it has a reply) and failed (none)."""

    total: int = 0
    from_cache: int = 0
    sent: int = 0  # requests that went out, re-asks included
    answered: int = 0
    failed: int = 0
    too_long: int = 0
    retries: int = 0  # re-asks sent (requests with attempt > 0)
    retried_records: int = 0  # records re-asked at least once this run
    rescued: int = 0  # of those, records whose result is `ok`
    started: float = field(default_factory=time.monotonic)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def line(self) -> str:
        elapsed = self.elapsed
        done = self.from_cache + self.too_long + self.answered + self.failed
        rate = (self.answered + self.failed) / elapsed if elapsed > 0 else 0.0
        eta = f"{(self.total - done) / rate:.0f}s" if rate > 0 else "?"
        reasks = f", {self.retries} re-asks ({self.rescued} records rescued)" if self.retries else ""
        return (
            f"{done}/{self.total} done ({self.from_cache} cached, {self.too_long} too long), "
            f"{rate:.1f} records/s, ETA {eta}, failures {self.failed}{reasks}"
        )


# A reply in one of these statuses is asked again; `ok` is final and the others are never replies.
REASK_STATUSES = frozenset({"partial", "parse_error"})
_RANK = {"ok": 2, "partial": 1, "parse_error": 0}


def best_attempt(attempts: Sequence[Attempt]) -> Attempt:
    """`ok` beats `partial` beats `parse_error`; among equals the one with more slots scored wins (more of the
    record is measured), then the later one (the scorer's most recent word, and a deterministic choice)."""
    if len(attempts) == 1:  # the common case, kept cheap: nearly every record is answered at the first request
        return attempts[0]

    def key(i: int) -> tuple[int, int, int]:
        res = attempts[i].result
        return _RANK.get(res.status, -1), sum(s is not None for s in res.scores), i

    return attempts[max(range(len(attempts)), key=key)]


def wants_more(attempts: Sequence[Attempt], max_attempts: int) -> bool:
    """True while the record has attempts left and none parsed: an `ok` reply is never asked again."""
    if not attempts:
        return True
    if len(attempts) >= max_attempts:
        return False
    return all(a.result.status in REASK_STATUSES for a in attempts)


# Chat-template tokens a server adds around the two messages; generous for every template we know.
TEMPLATE_ALLOWANCE = 256


def surely_fits(system: str, user: str, max_tokens: int, max_model_len: int) -> bool:
    """True when the prompt fits whatever the tokenizer: no tokenizer makes more tokens than UTF-8 bytes."""
    n_bytes = len(system.encode("utf-8")) + len(user.encode("utf-8"))
    return n_bytes + TEMPLATE_ALLOWANCE + max_tokens <= max_model_len


async def prompt_fits(backend: ChatBackend, system: str, user: str, spec: ScorerSpec, max_model_len: int) -> bool:
    if surely_fits(system, user, spec.max_tokens, max_model_len):
        return True
    exact = await backend.count_prompt_tokens(system, user, spec)
    n = exact if exact is not None else estimate_tokens(system) + estimate_tokens(user)
    return n + spec.max_tokens <= max_model_len


@dataclass
class Chunk:
    """A slice of the records to score: its record ids, looked up in the reply cache in one go, and its jobs, made
    one at a time as the request queue takes them (so a chunk's prompts never all exist at once)."""

    record_ids: Sequence[str]
    jobs: Iterable[Job]


Sink = Callable[[Job, Outcome], None]


def context_length(backend: ChatBackend, configured: int) -> int:
    """The context length prompts must fit: the server's own when it reports one, else the configured one."""
    return getattr(backend, "max_model_len", None) or configured


def run_scorer(
    chunks: Iterable[Chunk],
    spec: ScorerSpec,
    backend: ChatBackend,
    cache: ReplyCache,
    settings: PipelineSettings,
    *,
    sink: Sink,
    total: int,
    reask: bool = True,
    progress: Callable[[RunStats], None] | None = None,
    slot_names: Sequence[str] = (),
) -> RunStats:
    """Score the chunks' jobs with the pipeline's limits, the one way every asset scores: prompts that do not fit the
    server's context (`context_length`) are never sent, at most the backend's capacity (or max_in_flight) requests
    are in flight, replies go to the reply cache in write_batch_size batches, replies that do not parse are asked
    again parse_retries times (`reask=False` for free-form replies, which never parse as the contract), `progress`
    gets the running stats every few seconds and at the end, and the backend is closed however the run ends."""

    async def run() -> RunStats:
        try:
            return await score_stream(
                chunks,
                spec,
                backend,
                cache,
                sink=sink,
                total=total,
                max_model_len=context_length(backend, settings.max_model_len),
                max_in_flight=getattr(backend, "capacity", settings.max_in_flight),
                batch_size=settings.write_batch_size,
                parse_retries=settings.parse_retries if reask else 0,
                progress=progress,
                slot_names=slot_names,
            )
        finally:
            if close := getattr(backend, "aclose", None):
                await close()

    with _heap_frozen():
        return asyncio.run(run())


@contextmanager
def _heap_frozen() -> Iterator[None]:
    """The objects that exist before scoring (Dagster, our definitions, the loaded modules: millions in a step's
    process) left out of the garbage collector's passes while it runs, so a full collection scans what scoring made,
    not the whole process again and again: it was about a fifth of a step's CPU (docs/benchmarks.md, issue 25).
    Nothing is lost: they are handed back to the collector at the end."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


async def score_stream(
    chunks: Iterable[Chunk],
    spec: ScorerSpec,
    backend: ChatBackend,
    cache: ReplyCache,
    *,
    sink: Sink,
    total: int = 0,
    max_model_len: int,
    max_in_flight: int = 64,
    batch_size: int = 256,
    parse_retries: int = 0,
    progress: Callable[[RunStats], None] | None = None,
    progress_every_s: float = 5.0,
    slot_names: Sequence[str] = (),
) -> RunStats:
    """Score chunk after chunk through one bounded queue: `max_in_flight` workers take requests from a queue of at
    most `max_in_flight` prepared jobs, so the next chunk's requests go out while the last ones of the previous
    chunk are still in flight, and memory holds one chunk's cache lookup plus the queue, whatever the source size.

    `sink(job, outcome)` gets every job's outcome once, as it settles (cached ones at once), in no particular
    order; the caller writes it out and keeps nothing it does not need. A record id repeated inside a chunk is
    scored once and each of its jobs gets the outcome; `total` is only for the progress line.
    """
    writer = cache.writer(spec.version, batch_size)
    run = _Run(spec, backend, writer, RunStats(total=total), max_model_len, 1 + max(parse_retries, 0), sink, slot_names)
    queue: asyncio.Queue[_Pending | None] = asyncio.Queue(maxsize=max_in_flight)
    workers = [asyncio.create_task(run.work(queue)) for _ in range(max_in_flight)]

    async def feed() -> None:
        for chunk in chunks:  # reading the next chunk blocks the loop briefly; the queue is full meanwhile
            await run.feed(chunk, cache.load_attempts(spec.version, chunk.record_ids), queue)
        for _ in workers:
            await queue.put(None)

    tasks = [asyncio.create_task(feed()), *workers]
    ticker = asyncio.create_task(_report(progress, run.stats, progress_every_s)) if progress else None
    try:
        await _until_done_or_failed(tasks)
    finally:
        for task in [*tasks, *([ticker] if ticker else [])]:
            task.cancel()
        run.writer.flush()
    if progress:
        progress(run.stats)
    return run.stats


async def _until_done_or_failed(tasks: Sequence[asyncio.Task[None]]) -> None:
    """Wait for every task; the first one to fail stops the wait with its error (a worker dying must not leave the
    feeder waiting for a queue slot forever)."""
    pending = set(tasks)
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]


async def _report(progress: Callable[[RunStats], None], stats: RunStats, every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        progress(stats)


@dataclass
class _Pending:
    """A record to send: its job, its cached attempts, and the chunk's bookkeeping for repeated ids."""

    job: Job
    tried: list[Attempt]
    repeats: _Repeats


@dataclass
class _Repeats:
    """The ids a chunk holds more than once: their outcome once settled, or the jobs waiting for it. Only repeated
    ids are kept, so a chunk's outcomes are not (ingest drops repeats inside a source, so this is usually empty)."""

    ids: set[str]
    settled: dict[str, Outcome] = field(default_factory=dict)
    waiting: dict[str, list[Job]] = field(default_factory=dict)

    @classmethod
    def of(cls, record_ids: Sequence[str]) -> _Repeats:
        seen: set[str] = set()
        repeated: set[str] = set()
        for rid in record_ids:
            (repeated if rid in seen else seen).add(rid)
        return cls(repeated)


@dataclass
class _Run:
    spec: ScorerSpec
    backend: ChatBackend
    writer: ReplyWriterLike
    stats: RunStats
    max_model_len: int
    max_attempts: int
    sink: Sink
    slot_names: Sequence[str] = ()  # the rubric's dimension names: replies may name slots instead of tagging them

    async def feed(
        self, chunk: Chunk, cached: dict[str, list[Completion]], queue: asyncio.Queue[_Pending | None]
    ) -> None:
        """Settle the chunk's cached records at once and queue the others, one job at a time."""
        repeats = _Repeats.of(chunk.record_ids)
        for job in chunk.jobs:
            rid = job.record.record_id
            if rid in repeats.settled:
                self.sink(job, repeats.settled[rid])
                continue
            if rid in repeats.waiting:
                repeats.waiting[rid].append(job)
                continue
            prior = [Attempt(parse_reply(c.text, c.finish_reason, self.slot_names), c) for c in cached.pop(rid, ())]
            if prior and not wants_more(prior, self.max_attempts):
                self.stats.from_cache += 1
                self._settled(job, _best_outcome(rid, prior, cached=True), repeats)
                continue
            if rid in repeats.ids:
                repeats.waiting[rid] = []
            await queue.put(_Pending(job, prior, repeats))

    async def work(self, queue: asyncio.Queue[_Pending | None]) -> None:
        while (item := await queue.get()) is not None:
            self._settled(item.job, await self.score_one(item.job, item.tried), item.repeats)

    def _settled(self, job: Job, outcome: Outcome, repeats: _Repeats) -> None:
        rid = job.record.record_id
        self.sink(job, outcome)
        if rid in repeats.ids:
            repeats.settled[rid] = outcome
            for other in repeats.waiting.pop(rid, ()):
                self.sink(other, outcome)

    async def score_one(self, job: Job, tried: list[Attempt]) -> Outcome:
        """Send the record (and re-ask while its replies do not parse); the worker's slot is kept through the
        re-asks: the server still holds the prompt's prefix in its cache."""
        rid, spec = job.record.record_id, self.spec
        try:
            fits = await prompt_fits(self.backend, spec.system_prompt, job.user, spec, self.max_model_len)
        except Exception as exc:
            return _settle(rid, tried, exc, reasked=False, stats=self.stats)
        if not fits:
            return _not_sent(rid, tried, self.stats)
        reasked, error = False, None
        while error is None and wants_more(tried, self.max_attempts):
            attempt = len(tried)
            reply = await self.send(job, attempt)
            if isinstance(reply, Exception):
                error = reply
            else:
                self.writer.add(rid, reply, attempt)
                tried.append(Attempt(parse_reply(reply.text, reply.finish_reason, self.slot_names), reply))
            reasked = reasked or (attempt > 0 and _went_out(reply))
        return _settle(rid, tried, error, reasked=reasked, stats=self.stats)

    async def send(self, job: Job, attempt: int) -> Completion | Exception:
        self.stats.sent += 1
        self.stats.retries += attempt > 0
        try:
            return await self.backend.complete(self.spec.system_prompt, job.user, self.spec)
        except Exception as exc:  # every failure becomes this record's status; the run goes on
            if not _went_out(exc):
                self.stats.sent -= 1
                self.stats.retries -= attempt > 0
            return exc


def _best_outcome(rid: str, attempts: Sequence[Attempt], *, cached: bool) -> Outcome:
    best = best_attempt(attempts)
    return Outcome(rid, best.result, cached=cached, completion=best.completion)


def _not_sent(rid: str, tried: Sequence[Attempt], stats: RunStats) -> Outcome:
    """A prompt that no longer fits (a smaller context than when its earlier attempts were sent) keeps them."""
    if tried:
        stats.from_cache += 1
        return _best_outcome(rid, tried, cached=True)
    stats.too_long += 1
    return Outcome(rid, ScoreResult.failed("too_long", "prompt + max_tokens exceeds context"), False)


def _settle(
    rid: str, tried: Sequence[Attempt], error: BaseException | None, *, reasked: bool, stats: RunStats
) -> Outcome:
    """The record's best reply, cached or new; a failed re-ask leaves the replies it already had. Without any
    reply, the error text stays with the record (`issues`): the request_errors check names the commonest."""
    if not tried:
        stats.failed += 1
        issue = _describe(error) if error is not None else "no reply"
        return Outcome(rid, ScoreResult.failed("request_error", issue), False)
    stats.answered += 1
    out = _best_outcome(rid, tried, cached=False)
    if reasked:
        stats.retried_records += 1
        stats.rescued += out.result.status == "ok"
    return out


def _went_out(reply: Completion | Exception) -> bool:
    return not (isinstance(reply, RequestFailed) and not reply.sent)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, RequestFailed):  # already "<error type>: <message>", without secrets
        return str(exc)[:500]
    return f"{type(exc).__name__}: {exc}"[:500]


@dataclass
class RequestCount:
    """What a scoring step would do with its records: each is cached (answered before), too_long (its prompt does not
    fit the context: never sent) or to_send (one first request each; a record with earlier replies that is asked again
    counts too; re-asks of replies that do not parse are not counted: they happen only for replies that fail).
    prompt_tokens: estimate_tokens of the prompts to send."""

    records: int = 0
    cached: int = 0
    too_long: int = 0
    to_send: int = 0
    unchecked: int = 0  # the prompt's length could not be checked (the server's tokenizer failed): not sent either
    prompt_tokens: int = 0


class _HeldBack:
    """A backend that sends nothing: it counts each request the scorer would send (and its prompt's estimated tokens)
    and fails it as never sent. Everything else (capacity, the server's context length, its tokenizer) is the real
    backend's, so the too_long check is the one the asset makes."""

    def __init__(self, backend: ChatBackend) -> None:
        self._backend = backend
        self.requests = 0
        self.prompt_tokens = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self._backend, name)

    async def count_prompt_tokens(self, system: str, user: str, spec: ScorerSpec) -> int | None:
        return await self._backend.count_prompt_tokens(system, user, spec)

    async def complete(self, system: str, user: str, spec: ScorerSpec) -> Completion:
        self.requests += 1
        self.prompt_tokens += estimate_tokens(system) + estimate_tokens(user)
        raise RequestFailed("held back: counting requests", sent=False)


class _NoWriter:
    def add(self, record_id: str, comp: Completion, attempt: int = 0) -> None:
        raise AssertionError("a held-back request has no reply to cache")

    def flush(self) -> None:
        return None


class _ReadOnly:
    """The reply cache as the asset looks it up; writes are refused (counting must leave no trace)."""

    def __init__(self, cache: ReplyCache) -> None:
        self._cache = cache

    def load_attempts(self, version: str, record_ids: Sequence[str]) -> dict[str, list[Completion]]:
        return self._cache.load_attempts(version, record_ids)

    def writer(self, version: str, batch_size: int = 256) -> ReplyWriterLike:
        return _NoWriter()


def count_requests(
    chunks: Iterable[Chunk],
    spec: ScorerSpec,
    backend: ChatBackend,
    cache: ReplyCache,
    settings: PipelineSettings,
    *,
    reask: bool = True,
    slot_names: Sequence[str] = (),
) -> RequestCount:
    """Run `run_scorer` on the chunks the asset would score, with every request held back: which records are
    cached, too long or to be sent is decided by the asset's own code, so the plan and the run cannot disagree."""
    held = _HeldBack(backend)
    stats = run_scorer(
        chunks,
        spec,
        held,
        _ReadOnly(cache),
        settings,
        sink=lambda job, out: None,
        total=0,
        reask=reask,
        slot_names=slot_names,
    )
    records = stats.from_cache + stats.too_long + stats.answered + stats.failed
    return RequestCount(
        records=records,
        cached=stats.from_cache,
        too_long=stats.too_long,
        to_send=held.requests,
        unchecked=records - stats.from_cache - stats.too_long - held.requests,
        prompt_tokens=held.prompt_tokens,
    )
