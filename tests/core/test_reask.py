"""Re-asking replies that do not parse (pipeline.parse_retries): every attempt cached, the best one kept."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from mira_dagster.core.parsing import ScoreResult, parse_reply
from mira_dagster.core.records import Record
from mira_dagster.core.rubric import N_SLOTS
from mira_dagster.core.scoring import (
    Attempt,
    Completion,
    Job,
    RequestFailed,
    ScorerSpec,
    best_attempt,
)
from mira_dagster.io.store import ParquetReplyCache
from tests.helpers import score_jobs

SPEC = ScorerSpec(
    role="student",
    backend="openai",
    model="m",
    system_prompt="score it",
    user_template="{record}",
    anchors_sha256="a",
    temperature=0.7,
    top_p=0.95,
    max_tokens=256,
)
GARBAGE = "I am not sure how to score this record."


def contract(n_slots: int = N_SLOTS, trailer: bool = True) -> str:
    """A reply in the contract format with the first `n_slots` slots scored."""
    lines = [f"[A{i}] Slot {i}: 7/10 — fine" for i in range(1, n_slots + 1)]
    if trailer:
        lines += ["overall: 70", "training_recommendation: keep", "domain_tag: math", "brief: a fine record"]
    return "\n".join(lines)


OK, PARTIAL = contract(), contract(5, trailer=False)


def job(i: int) -> Job:
    rec = Record(
        record_id=f"r{i}",
        source="s",
        group_id="2",
        format="qa_with_think",
        layout="question_answer",
        question=f"q{i}",
        answer=f"a{i}",
        n_tokens=10,
        origin_file="f",
        origin_line=i + 1,
    )
    return Job(rec, f"user prompt {i}")


class Scripted:
    """Replies to each prompt from its script in turn, repeating the last; a script item that is an exception is
    raised instead. Counts every call per prompt."""

    def __init__(self, scripts: dict[str, Sequence[str | Exception]], default: str = OK) -> None:
        self.scripts, self.default = scripts, default
        self.calls: dict[str, int] = {}

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    async def complete(self, system: str, user: str, spec: ScorerSpec) -> Completion:
        n = self.calls[user] = self.calls.get(user, 0) + 1
        script = self.scripts.get(user, [self.default])
        item = script[min(n, len(script)) - 1]
        if isinstance(item, Exception):
            raise item
        return Completion(text=item, finish_reason="stop", prompt_tokens=10, completion_tokens=n)

    async def count_prompt_tokens(self, system: str, user: str, spec: ScorerSpec) -> int | None:
        return None


def run(jobs: Sequence[Job], backend: Scripted, cache: ParquetReplyCache, parse_retries: int, **kw):
    return asyncio.run(
        score_jobs(jobs, SPEC, backend, cache, max_model_len=65536, parse_retries=parse_retries, batch_size=2, **kw)
    )


def statuses(outcomes) -> list[str]:
    return [o.result.status for o in outcomes]


def attempts_on_disk(cache: ParquetReplyCache) -> dict[str, list[int]]:
    """record_id -> its attempt numbers, as stored (Parquet files and logs alike)."""
    df = cache._frame(SPEC.version).collect().sort("record_id", "attempt")
    return {rid: grp["attempt"].to_list() for (rid,), grp in df.group_by("record_id", maintain_order=True)}


def test_contract_helpers_parse_as_intended() -> None:
    assert parse_reply(OK, "stop").status == "ok"
    assert parse_reply(PARTIAL, "stop").status == "partial"
    assert parse_reply(GARBAGE, "stop").status == "parse_error"


def test_garbage_then_valid_is_rescued_and_every_attempt_cached(tmp_path: Path) -> None:
    jobs = [job(i) for i in range(4)]
    backend = Scripted({"user prompt 0": [GARBAGE, OK], "user prompt 1": [PARTIAL, OK], "user prompt 3": [GARBAGE]})
    cache = ParquetReplyCache(tmp_path)
    outcomes, stats = run(jobs, backend, cache, parse_retries=1)
    assert statuses(outcomes) == ["ok", "ok", "ok", "parse_error"]
    assert backend.total == stats.sent == 7
    assert (stats.retries, stats.retried_records, stats.rescued) == (3, 3, 2)
    assert (stats.answered, stats.from_cache, stats.failed) == (4, 0, 0)
    assert not any(o.cached for o in outcomes)
    # the outcome carries the reply it was parsed from: the second one for the rescued records
    assert outcomes[0].completion.text == OK and outcomes[0].completion.completion_tokens == 2
    assert attempts_on_disk(cache) == {"r0": [0, 1], "r1": [0, 1], "r2": [0], "r3": [0, 1]}
    texts = {rid: [c.text for c in comps] for rid, comps in cache.load_attempts(SPEC.version, ["r0", "r1"]).items()}
    assert texts == {"r0": [GARBAGE, OK], "r1": [PARTIAL, OK]}
    # readers of the reply behind an `ok` score (the distillation export) get the last attempt
    assert cache.load(SPEC.version, ["r0", "r2"])["r0"].text == OK


def test_no_reask_when_parse_retries_is_zero(tmp_path: Path) -> None:
    jobs = [job(i) for i in range(3)]
    backend = Scripted({"user prompt 0": [GARBAGE, OK], "user prompt 1": [PARTIAL, OK]})
    outcomes, stats = run(jobs, backend, ParquetReplyCache(tmp_path), parse_retries=0)
    assert statuses(outcomes) == ["parse_error", "partial", "ok"]
    assert backend.total == stats.sent == 3 and stats.retries == stats.retried_records == 0


def test_rerun_sends_nothing_once_attempts_are_used(tmp_path: Path) -> None:
    jobs = [job(i) for i in range(3)]
    scripts: dict[str, Sequence[str | Exception]] = {"user prompt 0": [GARBAGE, OK], "user prompt 1": [GARBAGE]}
    cache = ParquetReplyCache(tmp_path)
    first, _ = run(jobs, Scripted(scripts), cache, parse_retries=2)
    assert statuses(first) == ["ok", "parse_error", "ok"]
    backend = Scripted(scripts)
    again, stats = run(jobs, backend, cache, parse_retries=2)
    assert backend.total == stats.sent == stats.retries == 0
    assert stats.from_cache == 3 and all(o.cached for o in again)
    assert [o.result for o in again] == [o.result for o in first]


def test_still_failing_record_keeps_parse_error_and_raising_retries_asks_only_the_missing(tmp_path: Path) -> None:
    jobs = [job(i) for i in range(3)]
    scripts: dict[str, Sequence[str | Exception]] = {"user prompt 0": [GARBAGE], "user prompt 1": [PARTIAL]}
    cache = ParquetReplyCache(tmp_path)
    backend = Scripted(scripts)
    outcomes, stats = run(jobs, backend, cache, parse_retries=1)
    assert statuses(outcomes) == ["parse_error", "partial", "ok"]
    assert backend.calls == {"user prompt 0": 2, "user prompt 1": 2, "user prompt 2": 1}
    assert (stats.retries, stats.retried_records, stats.rescued) == (2, 2, 0)

    lowered = Scripted(scripts)
    _, stats = run(jobs, lowered, cache, parse_retries=0)  # fewer retries than already used: nothing to send
    assert lowered.total == stats.sent == 0 and stats.from_cache == 3

    raised = Scripted({"user prompt 0": [OK], "user prompt 1": [PARTIAL]})
    outcomes, stats = run(jobs, raised, cache, parse_retries=2)
    assert raised.calls == {"user prompt 0": 1, "user prompt 1": 1}  # one new attempt each, none for the ok record
    assert statuses(outcomes) == ["ok", "partial", "ok"]
    assert (stats.sent, stats.retries, stats.rescued, stats.from_cache) == (2, 2, 1, 1)
    assert not outcomes[0].cached and outcomes[2].cached
    assert attempts_on_disk(cache) == {"r0": [0, 1, 2], "r1": [0, 1, 2], "r2": [0]}


def test_best_attempt_rule() -> None:
    def attempt(text: str) -> Attempt:
        return Attempt(parse_reply(text, "stop"), Completion(text=text))

    three, eight = attempt(contract(3, trailer=False)), attempt(contract(8, trailer=False))
    garbage, ok = attempt(GARBAGE), attempt(OK)
    assert best_attempt([ok, eight]) is ok
    assert best_attempt([eight, garbage]) is eight  # a partial reply beats a later one that did not parse
    assert best_attempt([eight, three]) is eight  # more slots scored wins
    assert best_attempt([three, eight]) is eight
    again = attempt(contract(3, trailer=False))
    assert best_attempt([three, again]) is again  # among equals, the later
    failed = Attempt(ScoreResult.failed("request_error", "x"), Completion(text=""))
    assert best_attempt([failed, garbage]) is garbage


def test_partial_kept_when_reask_does_worse(tmp_path: Path) -> None:
    backend = Scripted({"user prompt 0": [contract(8, trailer=False), GARBAGE]})
    outcomes, stats = run([job(0)], backend, ParquetReplyCache(tmp_path), parse_retries=1)
    assert outcomes[0].result.status == "partial"
    assert sum(s is not None for s in outcomes[0].result.scores) == 8
    assert outcomes[0].completion.completion_tokens == 1  # the first reply
    assert stats.retries == 1 and stats.rescued == 0


def test_failed_reask_keeps_the_reply_and_is_asked_again_next_run(tmp_path: Path) -> None:
    cache = ParquetReplyCache(tmp_path)
    backend = Scripted({"user prompt 0": [GARBAGE, ConnectionError("boom")]})
    outcomes, stats = run([job(0)], backend, cache, parse_retries=1)
    assert outcomes[0].result.status == "parse_error"  # a reply, even unparsable, is not a request_error
    assert (stats.sent, stats.retries, stats.answered, stats.failed) == (2, 1, 1, 0)
    assert attempts_on_disk(cache) == {"r0": [0]}  # failures are never cached
    outcomes, stats = run([job(0)], Scripted({"user prompt 0": [OK]}), cache, parse_retries=1)
    assert outcomes[0].result.status == "ok" and (stats.sent, stats.retries, stats.rescued) == (1, 1, 1)
    assert attempts_on_disk(cache) == {"r0": [0, 1]}


def test_reask_not_sent_by_a_downed_endpoint_is_not_counted(tmp_path: Path) -> None:
    backend = Scripted({"user prompt 0": [GARBAGE, RequestFailed("APIConnectionError: down", sent=False)]})
    outcomes, stats = run([job(0)], backend, ParquetReplyCache(tmp_path), parse_retries=1)
    assert outcomes[0].result.status == "parse_error"
    assert (stats.sent, stats.retries, stats.retried_records) == (1, 0, 0)


class Crash(Scripted):
    """Answers its script, then the process 'dies' on the k+1-th request."""

    def __init__(self, scripts: dict[str, Sequence[str | Exception]], k: int) -> None:
        super().__init__(scripts)
        self.k = k

    async def complete(self, system: str, user: str, spec: ScorerSpec) -> Completion:
        if self.total >= self.k:
            raise KeyboardInterrupt
        return await super().complete(system, user, spec)


def test_crash_between_attempts_keeps_the_first(tmp_path: Path) -> None:
    cache = ParquetReplyCache(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run([job(0)], Crash({"user prompt 0": [GARBAGE, OK]}, k=1), cache, parse_retries=1, max_in_flight=1)
    assert attempts_on_disk(cache) == {"r0": [0]}
    backend = Scripted({"user prompt 0": [OK]})
    outcomes, stats = run([job(0)], backend, cache, parse_retries=1)
    assert outcomes[0].result.status == "ok" and backend.total == stats.retries == 1
    assert attempts_on_disk(cache) == {"r0": [0, 1]}


OLD_SCHEMA = {k: v for k, v in ParquetReplyCache.SCHEMA.items() if k != "attempt"}


def _old_row(rid: str, text: str) -> dict:
    return {"record_id": rid, "text": text, "finish_reason": "stop", "prompt_tokens": 1, "completion_tokens": 1}


@pytest.mark.parametrize("old_name", ["0-old.parquet", "z-old.parquet"])  # before and after the new files
def test_old_cache_without_attempt_column_loads_as_attempt_0(tmp_path: Path, old_name: str) -> None:
    assert "attempt" not in OLD_SCHEMA and len(OLD_SCHEMA) == len(ParquetReplyCache.SCHEMA) - 1
    folder = tmp_path / SPEC.version
    folder.mkdir()
    now = datetime.now(UTC)
    old = [{**_old_row("r0", GARBAGE), "cached_tokens": None, "created_at": now}]
    old.append({**_old_row("r1", OK), "cached_tokens": None, "created_at": now})
    pl.DataFrame(old, schema=OLD_SCHEMA).write_parquet(folder / old_name)
    # a log left by a killed writer of the old format
    wal = {**_old_row("r2", GARBAGE), "cached_tokens": None, "created_at": now.isoformat()}
    (folder / "dead.wal.jsonl").write_text(json.dumps(wal) + "\n")
    cache = ParquetReplyCache(tmp_path)
    loaded = cache.load_attempts(SPEC.version, ["r0", "r1", "r2"])
    assert {rid: [c.text for c in comps] for rid, comps in loaded.items()} == {
        "r0": [GARBAGE],
        "r1": [OK],
        "r2": [GARBAGE],
    }

    backend = Scripted({"user prompt 0": [OK], "user prompt 2": [GARBAGE]})
    outcomes, stats = run([job(0), job(1), job(2)], backend, cache, parse_retries=1)
    assert statuses(outcomes) == ["ok", "ok", "parse_error"]
    assert backend.calls == {"user prompt 0": 1, "user prompt 2": 1} and stats.retries == 2
    # new files (with `attempt`) and the old one read together, in either order of their names
    assert attempts_on_disk(cache) == {"r0": [0, 1], "r1": [0], "r2": [0, 1]}
    assert cache.load(SPEC.version, ["r0"])["r0"].text == OK
    assert cache.count(SPEC.version) == 3


# --- issue 22: an ambiguous reply is never stored as a number; it is asked again like any other that does not parse

AMBIGUOUS = {
    "conflicting repeat": OK.replace("[A3] Slot 3: 7/10 — fine", "[A3] Slot 3: 7/10 — fine\n[A3] Slot 3: 9/10 — no"),
    "range": OK.replace("[A3] Slot 3: 7/10", "[A3] Slot 3: 9-10/10"),
    "arithmetic": OK.replace("[A3] Slot 3: 7/10 — fine", "[A3] Slot 3: 2 + 5 = 7"),
    "unclosed think": "<think>\n" + OK + "\nlet me re-check A3 before I write the final answer",
}


@pytest.mark.parametrize("kind", list(AMBIGUOUS))
def test_an_ambiguous_reply_is_asked_again(kind: str, tmp_path: Path) -> None:
    backend = Scripted({"user prompt 0": [AMBIGUOUS[kind], OK]})
    first = parse_reply(AMBIGUOUS[kind], "stop")
    assert first.status in ("partial", "parse_error") and first.scores[2] is None
    outcomes, stats = run([job(0)], backend, ParquetReplyCache(tmp_path), parse_retries=1)
    assert statuses(outcomes) == ["ok"] and outcomes[0].result.scores[2] == 7.0
    assert backend.total == 2 and stats.rescued == 1


def test_slot_names_reach_the_parser(tmp_path: Path) -> None:
    """The rubric's names given to score_stream let a reply without tags be read (and not re-asked)."""
    from mira_dagster.core.scoring import Chunk, score_stream

    names = [f"Slot {i}" for i in range(1, N_SLOTS + 1)]
    untagged = "\n".join(line.split("] ", 1)[-1] for line in OK.splitlines())
    assert untagged.startswith("Slot 1: 7/10 — fine\nSlot 2: 7/10")
    backend = Scripted({}, default=untagged)
    got: dict[str, ScoreResult] = {}
    jobs = [job(0)]

    def stream(slot_names: Sequence[str]) -> None:
        asyncio.run(
            score_stream(
                [Chunk(["r0"], jobs)],
                SPEC,
                backend,
                ParquetReplyCache(tmp_path / str(len(slot_names))),
                sink=lambda j, out: got.__setitem__(str(len(slot_names)), out.result),
                max_model_len=65536,
                parse_retries=1,
                slot_names=slot_names,
            )
        )

    stream(names)
    assert got["15"].status == "ok" and backend.total == 1
    stream(())
    assert got["0"].status == "parse_error" and backend.total == 3  # without the names: nothing read, asked again
