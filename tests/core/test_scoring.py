from __future__ import annotations

import asyncio
from pathlib import Path

import polars as pl
import pytest

from mira_dagster.core.offline import OfflineBackend
from mira_dagster.core.prompts import render_user
from mira_dagster.core.records import estimate_tokens
from mira_dagster.core.scoring import Completion, Job, ScorerSpec
from mira_dagster.io.anchors import load_rubric
from mira_dagster.io.llm_client import Endpoint, OpenAIBackend, redact_url
from mira_dagster.io.registry import load_config
from mira_dagster.io.scorers import make_scorer
from mira_dagster.io.store import ParquetReplyCache
from tests.conftest import SAMPLE
from tests.helpers import read_source, score_jobs
from tests.loopback import ChatServer, Reply, serve


def _setup(role: str = "student"):
    cfg = load_config()
    rubric = load_rubric(cfg.groups["2"].anchors, "2", "qa_with_think")
    spec, backend, _ = make_scorer(role, cfg.scorer_units()["2"], cfg, rubric)
    recs = read_source(
        "lean_qa", "2", "qa_with_think", [SAMPLE / "lean_deepseek_prover_v15_minif2f_valid_fewshot.jsonl"]
    ).records
    jobs = [Job(r, render_user(spec.user_template, rubric, r)) for r in recs]
    return spec, backend, jobs


def run(jobs, spec, backend, cache, **kw):
    kw.setdefault("max_model_len", 65536)
    return asyncio.run(score_jobs(jobs, spec, backend, cache, **kw))


def test_offline_scores_everything_ok_and_caches(tmp_path: Path) -> None:
    spec, backend, jobs = _setup()
    cache = ParquetReplyCache(tmp_path)
    outcomes, stats = run(jobs, spec, backend, cache, batch_size=10)
    assert [o.result.status for o in outcomes] == ["ok"] * len(jobs)
    assert stats.sent == backend.calls == len(jobs) == 67
    assert len(list((tmp_path / spec.version).glob("*.parquet"))) == 7  # batches of 10
    again, stats2 = run(jobs, spec, OfflineBackend("student"), cache)
    assert stats2.sent == 0 and stats2.from_cache == 67
    assert [o.result for o in again] == [o.result for o in outcomes]


def test_new_scorer_version_rescored(tmp_path: Path) -> None:
    spec, backend, jobs = _setup()
    cache = ParquetReplyCache(tmp_path)
    run(jobs[:5], spec, backend, cache)
    changed = spec.model_copy(update={"temperature": 0.2})
    assert changed.version != spec.version
    _, stats = run(jobs[:5], changed, backend, cache)
    assert stats.sent == 5


def test_version_covers_every_part_but_not_role_endpoint() -> None:
    spec, _, _ = _setup()
    for field, value in [
        ("model", "m2"),
        ("system_prompt", "x"),
        ("user_template", "y"),
        ("anchors_sha256", "z"),
        ("top_p", 0.5),
        ("max_tokens", 10),
        ("backend", "openai"),
    ]:
        assert spec.model_copy(update={field: value}).version != spec.version, field


def test_too_long_records_are_not_sent(tmp_path: Path) -> None:
    spec, backend, jobs = _setup()
    sizes = sorted(estimate_tokens(spec.system_prompt) + estimate_tokens(j.user) for j in jobs)
    limit = sizes[len(sizes) // 2] + spec.max_tokens  # about half the records fit
    outcomes, stats = run(jobs, spec, backend, ParquetReplyCache(tmp_path), max_model_len=limit)
    statuses = [o.result.status for o in outcomes]
    assert "too_long" in statuses and "ok" in statuses
    assert backend.calls == statuses.count("ok") == stats.sent


def test_duplicate_record_ids_sent_once(tmp_path: Path) -> None:
    spec, backend, jobs = _setup()
    outcomes, stats = run(jobs[:3] + jobs[:3], spec, backend, ParquetReplyCache(tmp_path))
    assert len(outcomes) == 6 and stats.sent == 3 == backend.calls


class Flaky:
    """Fails every third request; the rest are answered."""

    def __init__(self) -> None:
        self.inner = OfflineBackend("student")
        self.n = 0

    async def complete(self, system: str, user: str, spec: ScorerSpec) -> Completion:
        self.n += 1
        if self.n % 3 == 0:
            raise ConnectionError("boom")
        return await self.inner.complete(system, user, spec)


def test_request_errors_are_a_status_and_retried_next_run(tmp_path: Path) -> None:
    spec, _, jobs = _setup()
    cache = ParquetReplyCache(tmp_path)
    outcomes, stats = run(jobs[:9], spec, Flaky(), cache, max_in_flight=1)
    errors = [o for o in outcomes if o.result.status == "request_error"]
    assert len(errors) == 3 == stats.failed
    assert errors[0].result.issues == ["ConnectionError: boom"]
    again, stats2 = run(jobs[:9], spec, OfflineBackend("student"), cache)
    assert stats2.sent == 3 and all(o.result.status == "ok" for o in again)


class Crash:
    """Answers k requests, then the process 'dies' (an exception nobody catches per record)."""

    def __init__(self, k: int) -> None:
        self.inner, self.k, self.n = OfflineBackend("student"), k, 0

    async def complete(self, system: str, user: str, spec: ScorerSpec) -> Completion:
        self.n += 1
        if self.n > self.k:
            raise KeyboardInterrupt
        return await self.inner.complete(system, user, spec)


def test_crash_keeps_answered_batches(tmp_path: Path) -> None:
    spec, _, jobs = _setup()
    cache = ParquetReplyCache(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run(jobs, spec, Crash(25), cache, max_in_flight=1, batch_size=10)
    assert cache.count(spec.version) == 25  # every answer given before the crash is kept
    backend = OfflineBackend("student")
    _, stats = run(jobs, spec, backend, cache)
    assert stats.from_cache == 25
    assert stats.sent == backend.calls == len(jobs) - 25


def test_openai_backend_against_loopback_server(tmp_path: Path) -> None:
    spec, _, jobs = _setup()
    spec = spec.model_copy(update={"backend": "openai", "model": "whw06/MIRA-QA-Group3"})
    server = ChatServer()
    cache = ParquetReplyCache(tmp_path)
    with serve(server) as url:
        backend = OpenAIBackend(Endpoint((url,), "sk-secret-123", spec.model), max_retries=0)
        outcomes, stats = run(jobs[:12], spec, backend, cache)
        assert server.chat_requests == 12 == stats.sent
        assert all(o.result.status == "ok" for o in outcomes)
        body = server.requests[0]
        assert body["model"] == "whw06/MIRA-QA-Group3"
        assert (body["temperature"], body["top_p"], body["max_tokens"]) == (0.7, 0.95, 2048)
        assert body["messages"][0] == {"role": "system", "content": spec.system_prompt}
        assert server.auth_headers[0] == "Bearer sk-secret-123"
        assert outcomes[0].completion.prompt_tokens == 100
        backend2 = OpenAIBackend(Endpoint((url,), "sk-secret-123", spec.model), max_retries=0)
        _, stats2 = run(jobs[:12], spec, backend2, cache)
        assert server.chat_requests == 12 and stats2.sent == 0
    stored = pl.read_parquet(next((tmp_path / spec.version).glob("*.parquet")))
    assert not any("sk-secret" in str(v) for v in stored.row(0))


def test_server_errors_become_request_error(tmp_path: Path) -> None:
    spec, _, jobs = _setup()
    server = ChatServer(responder=lambda body, n: Reply(400, {"error": {"message": "bad", "type": "BadRequestError"}}))
    with serve(server) as url:
        backend = OpenAIBackend(Endpoint((url,), "k", "m"), max_retries=2)
        outcomes, _ = run(jobs[:2], spec, backend, ParquetReplyCache(tmp_path))
    assert [o.result.status for o in outcomes] == ["request_error"] * 2
    assert "BadRequestError" in outcomes[0].result.issues[0]
    assert server.chat_requests == 2  # 400 is never retried


def test_redact_url() -> None:
    assert redact_url("http://user:pw@host:8000/v1?key=abc") == "http://host:8000/v1"


def test_offline_student_differs_most_on_noisy_slots() -> None:
    spec, _, jobs = _setup()
    teacher, student = OfflineBackend("teacher", [4, 9, 14]), OfflineBackend("student", [4, 9, 14])
    from mira_dagster.core.parsing import parse_reply

    diffs = {s: 0.0 for s in range(15)}
    for job in jobs:
        t, s = parse_reply(teacher.reply(job.user)), parse_reply(student.reply(job.user))
        assert t.status == s.status == "ok"
        for i in range(15):
            diffs[i] += abs(t.scores[i] - s.scores[i]) / len(jobs)
    noisy = [diffs[3], diffs[8], diffs[13]]
    calm = [d for i, d in diffs.items() if i not in (3, 8, 13)]
    assert min(noisy) > 1.5 > 0.8 > max(calm)
    assert teacher.reply(jobs[0].user) == OfflineBackend("teacher", [4, 9, 14]).reply(jobs[0].user)
