"""Scoring records with a scorer (teacher or student), never paying twice for the same request.

A scorer is a `ScorerSpec` (everything that changes a score; its hash is `scorer_version`) plus a
`ChatBackend` that turns (system, user) into a completion: the offline stand-in or an
OpenAI-compatible endpoint. Replies are cached by (record_id, scorer_version) in a `ReplyCache` as they
arrive, in batches, so a crash loses at most one batch and a re-run sends nothing already answered.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from pydantic import BaseModel

from mira_dagster.core.parsing import ScoreResult, parse_reply
from mira_dagster.core.records import Record, estimate_tokens

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
    def add(self, record_id: str, comp: Completion) -> None: ...

    def flush(self) -> None: ...


class ReplyCache(Protocol):
    def load(self, version: str, record_ids: Sequence[str]) -> dict[str, Completion]: ...

    def writer(self, version: str, batch_size: int = 256) -> ReplyWriterLike: ...


class RequestFailed(Exception):
    """A request that failed for good. Its message names the error and is safe to store and show: the backend
    that raises it has removed credentials and URLs' secrets. `sent` is False when it was never sent (the
    backend had given up on its endpoints), so RunStats.sent counts only requests that went out."""

    def __init__(self, message: str, *, sent: bool = True) -> None:
        super().__init__(message)
        self.sent = sent


@dataclass
class Job:
    record: Record
    user: str


@dataclass
class Outcome:
    record_id: str
    result: ScoreResult
    cached: bool
    completion: Completion | None = None


@dataclass
class RunStats:
    total: int = 0
    from_cache: int = 0
    sent: int = 0
    answered: int = 0
    failed: int = 0
    too_long: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def line(self) -> str:
        elapsed = self.elapsed
        done = self.from_cache + self.too_long + self.answered + self.failed
        rate = (self.answered + self.failed) / elapsed if elapsed > 0 else 0.0
        eta = f"{(self.total - done) / rate:.0f}s" if rate > 0 else "?"
        return (
            f"{done}/{self.total} done ({self.from_cache} cached, {self.too_long} too long), "
            f"{rate:.1f} req/s, ETA {eta}, failures {self.failed}"
        )


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


async def score_jobs(
    jobs: Sequence[Job],
    spec: ScorerSpec,
    backend: ChatBackend,
    cache: ReplyCache,
    *,
    max_model_len: int,
    max_in_flight: int = 64,
    batch_size: int = 256,
    progress: Callable[[RunStats], None] | None = None,
    progress_every_s: float = 5.0,
) -> tuple[list[Outcome], RunStats]:
    """Score every job; each ends with exactly one Outcome, in the order given.

    Cached answers are reused; the rest go out with at most `max_in_flight` requests at once. Every answer
    is written to the cache as it arrives (see ParquetReplyCache), so an interrupted run resumes where it
    stopped. A record whose prompt + max_tokens exceeds `max_model_len` is never sent (`too_long`).
    """
    version = spec.version
    stats = RunStats(total=len(jobs))
    cached = cache.load(version, [j.record.record_id for j in jobs])
    results: dict[str, Outcome] = {}
    pending: dict[str, Job] = {}
    for job in jobs:
        rid = job.record.record_id
        if rid in results or rid in pending:
            continue
        if rid in cached:
            c = cached[rid]
            results[rid] = Outcome(rid, parse_reply(c.text, c.finish_reason), cached=True, completion=c)
            stats.from_cache += 1
        else:
            pending[rid] = job

    semaphore = asyncio.Semaphore(max_in_flight)
    writer = cache.writer(version, batch_size)

    async def one(rid: str, job: Job) -> None:
        async with semaphore:
            try:
                if not await prompt_fits(backend, spec.system_prompt, job.user, spec, max_model_len):
                    results[rid] = Outcome(
                        rid, ScoreResult.failed("too_long", "prompt + max_tokens exceeds context"), False
                    )
                    stats.too_long += 1
                    return
                stats.sent += 1
                comp = await backend.complete(spec.system_prompt, job.user, spec)
            except Exception as exc:  # every failure becomes this record's status; the run goes on
                # the error text stays with the record (`issues`): the request_errors check names the commonest
                results[rid] = Outcome(rid, ScoreResult.failed("request_error", _describe(exc)), False)
                stats.failed += 1
                if isinstance(exc, RequestFailed) and not exc.sent:
                    stats.sent -= 1
            else:
                writer.add(rid, comp)
                results[rid] = Outcome(rid, parse_reply(comp.text, comp.finish_reason), False, comp)
                stats.answered += 1

    async def report() -> None:
        while True:
            await asyncio.sleep(progress_every_s)
            progress(stats)

    ticker = asyncio.create_task(report()) if progress else None
    try:
        await asyncio.gather(*(one(rid, job) for rid, job in pending.items()))
    finally:
        if ticker:
            ticker.cancel()
        writer.flush()
    if progress:
        progress(stats)
    return [results[j.record.record_id] for j in jobs], stats


def _describe(exc: BaseException) -> str:
    if isinstance(exc, RequestFailed):  # already "<error type>: <message>", without secrets
        return str(exc)[:500]
    return f"{type(exc).__name__}: {exc}"[:500]
