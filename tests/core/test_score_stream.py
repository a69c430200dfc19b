"""score_stream: chunks through one bounded queue of requests, outcomes to a sink as they settle."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest

from mira_dagster.core.offline import OfflineBackend
from mira_dagster.core.scoring import Chunk, Completion, Job, Outcome, RunStats, ScorerSpec, score_stream
from mira_dagster.io.store import ParquetReplyCache
from tests.core.test_scoring import Crash, _setup


def chunked(jobs: Sequence[Job], size: int) -> list[Chunk]:
    parts = [jobs[i : i + size] for i in range(0, len(jobs), size)]
    return [Chunk([j.record.record_id for j in part], iter(part)) for part in parts]


def stream(jobs: Sequence[Job], size: int, spec, backend, cache, **kw) -> tuple[list[tuple[Job, Outcome]], RunStats]:
    got: list[tuple[Job, Outcome]] = []
    kw.setdefault("max_model_len", 65536)
    stats = asyncio.run(
        score_stream(chunked(jobs, size), spec, backend, cache, sink=lambda j, o: got.append((j, o)), **kw)
    )
    return got, stats


class Slow:
    """The offline stand-in behind a short wait, counting the requests in flight at once."""

    def __init__(self) -> None:
        self.inner, self.now, self.most = OfflineBackend("student"), 0, 0

    async def count_prompt_tokens(self, system: str, user: str, spec: ScorerSpec) -> int | None:
        return None

    async def complete(self, system: str, user: str, spec: ScorerSpec) -> Completion:
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            await asyncio.sleep(0.01)
            return await self.inner.complete(system, user, spec)
        finally:
            self.now -= 1


def test_every_job_settles_once_and_matches_the_unchunked_scores(tmp_path: Path) -> None:
    spec, backend, jobs = _setup()
    got, stats = stream(jobs, 7, spec, backend, ParquetReplyCache(tmp_path / "a"), max_in_flight=4)
    assert sorted(j.record.record_id for j, _ in got) == sorted(j.record.record_id for j in jobs)
    assert stats.sent == stats.answered == len(jobs) == 67
    fresh = _setup()[1]  # the configured stand-in (its noisy slots), as the first run had
    whole, _ = stream(jobs, 1000, spec, fresh, ParquetReplyCache(tmp_path / "b"))
    by_id = {j.record.record_id: o.result for j, o in whole}
    assert all(by_id[j.record.record_id] == o.result for j, o in got)


def test_the_queue_stays_full_across_chunk_boundaries(tmp_path: Path) -> None:
    spec, _, jobs = _setup()
    backend = Slow()
    _, stats = stream(jobs, 7, spec, backend, ParquetReplyCache(tmp_path), max_in_flight=16)
    # chunks of 7, yet 16 requests in flight at once: the next chunks' requests went out before the first drained
    assert backend.most == 16 and stats.sent == 67


def test_repeated_ids_in_a_chunk_are_sent_once_and_each_job_gets_the_outcome(tmp_path: Path) -> None:
    spec, backend, jobs = _setup()
    got, stats = stream(jobs[:3] + jobs[:3] + jobs[3:5], 100, spec, backend, ParquetReplyCache(tmp_path))
    assert stats.sent == backend.calls == 5
    assert len(got) == 8 and Counter(j.record.record_id for j, _ in got)[jobs[0].record.record_id] == 2


def test_a_crash_mid_stream_loses_no_reply_and_the_rerun_sends_only_the_rest(tmp_path: Path) -> None:
    spec, _, jobs = _setup()
    cache = ParquetReplyCache(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        stream(jobs, 7, spec, Crash(25), cache, max_in_flight=3, batch_size=10)
    assert cache.count(spec.version) == 25  # every answer given before the crash, in whichever chunk
    backend = OfflineBackend("student")
    got, stats = stream(jobs, 7, spec, backend, cache)
    assert stats.from_cache == 25 and stats.sent == backend.calls == len(jobs) - 25
    assert len(got) == len(jobs) and all(o.result.status == "ok" for _, o in got)


def test_a_failing_sink_stops_the_run_with_its_error(tmp_path: Path) -> None:
    spec, backend, jobs = _setup()

    def sink(job: Job, outcome: Outcome) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        asyncio.run(
            score_stream(chunked(jobs, 7), spec, backend, ParquetReplyCache(tmp_path), sink=sink, max_model_len=65536)
        )
