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


@dataclass
class Job:
    record: Record
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


async def score_jobs(
    jobs: Sequence[Job],
    spec: ScorerSpec,
    backend: ChatBackend,
    cache: ReplyCache,
    *,
    max_model_len: int,
    max_in_flight: int = 64,
    batch_size: int = 256,
    parse_retries: int = 0,
    progress: Callable[[RunStats], None] | None = None,
    progress_every_s: float = 5.0,
) -> tuple[list[Outcome], RunStats]:
    """Score every job; each ends with exactly one Outcome, in the order given.

    Cached answers are reused; the rest go out with at most `max_in_flight` requests at once. Every answer
    is written to the cache as it arrives (see ParquetReplyCache), so an interrupted run resumes where it
    stopped. A record whose prompt + max_tokens exceeds `max_model_len` is never sent (`too_long`). A reply
    that does not parse is asked again up to `parse_retries` times (0, the default, never re-asks: callers
    whose replies are not in the contract format, like free-form judgments, keep it).
    """
    version = spec.version
    max_attempts = 1 + max(parse_retries, 0)
    stats = RunStats(total=len(jobs))
    cached = cache.load_attempts(version, [j.record.record_id for j in jobs])
    results: dict[str, Outcome] = {}
    pending: dict[str, tuple[Job, list[Attempt]]] = {}
    for job in jobs:
        rid = job.record.record_id
        if rid in results or rid in pending:
            continue
        prior = [Attempt(parse_reply(c.text, c.finish_reason), c) for c in cached.get(rid, ())]
        if prior and not wants_more(prior, max_attempts):
            results[rid] = _best_outcome(rid, prior, cached=True)
            stats.from_cache += 1
        else:
            pending[rid] = (job, prior)

    semaphore = asyncio.Semaphore(max_in_flight)
    writer = cache.writer(version, batch_size)

    async def send(job: Job, attempt: int) -> Completion | Exception:
        stats.sent += 1
        stats.retries += attempt > 0
        try:
            return await backend.complete(spec.system_prompt, job.user, spec)
        except Exception as exc:  # every failure becomes this record's status; the run goes on
            if not _went_out(exc):
                stats.sent -= 1
                stats.retries -= attempt > 0
            return exc

    async def one(rid: str, job: Job, tried: list[Attempt]) -> None:
        async with semaphore:
            try:
                fits = await prompt_fits(backend, spec.system_prompt, job.user, spec, max_model_len)
            except Exception as exc:
                results[rid] = _settle(rid, tried, exc, reasked=False, stats=stats)
                return
            if not fits:
                results[rid] = _not_sent(rid, tried, stats)
                return
            reasked, error = False, None
            # the slot is kept through the re-asks: the server still holds the prompt's prefix in its cache
            while error is None and wants_more(tried, max_attempts):
                attempt = len(tried)
                reply = await send(job, attempt)
                if isinstance(reply, Exception):
                    error = reply
                else:
                    writer.add(rid, reply, attempt)
                    tried.append(Attempt(parse_reply(reply.text, reply.finish_reason), reply))
                reasked = reasked or (attempt > 0 and _went_out(reply))
            results[rid] = _settle(rid, tried, error, reasked=reasked, stats=stats)

    async def report() -> None:
        while True:
            await asyncio.sleep(progress_every_s)
            progress(stats)

    ticker = asyncio.create_task(report()) if progress else None
    try:
        await asyncio.gather(*(one(rid, job, prior) for rid, (job, prior) in pending.items()))
    finally:
        if ticker:
            ticker.cancel()
        writer.flush()
    if progress:
        progress(stats)
    return [results[j.record.record_id] for j in jobs], stats


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
