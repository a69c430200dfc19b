"""Scoring against a fault-injecting loopback server: every record ends with exactly one status, transient
faults are retried until they succeed, and the parse-failure check reports the right rate."""

from __future__ import annotations

import hashlib
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from mira_dagster.definitions import ALL_ASSETS, PARTITIONED_ASSETS
from mira_dagster.defs.partitions import in_process_instance
from mira_dagster.defs.resources import MiraResource
from tests.loopback import ChatServer, Reply, completion, serve, user_key

pytestmark = pytest.mark.slow

RAW, TEACHER, STUDENT = PARTITIONED_ASSETS
ALL = ALL_ASSETS
KINDS = ["ok", "500", "503", "429", "drop", "slow", "prose", "cut", "ok", "ok"]


def kind_of(key: str) -> str:
    return KINDS[int(hashlib.sha256(key.encode()).hexdigest(), 16) % len(KINDS)]


def faulty(server: ChatServer):
    def respond(body: dict, attempt: int) -> Reply:
        kind = kind_of(user_key(body))
        good = server.contract(body)
        if kind == "prose":
            return Reply(payload=completion(body, "This record looks solid overall; I would keep it."))
        if kind == "cut":
            text = good["choices"][0]["message"]["content"]
            return Reply(payload=completion(body, text[: len(text) // 2], "length"))
        if attempt > 1 or kind == "ok":
            return Reply(payload=good)
        if kind == "500":
            return Reply(500, {"error": {"message": "internal error", "type": "InternalServerError"}})
        if kind == "503":
            return Reply(503, {"error": {"message": "The engine is currently busy", "type": "ServiceUnavailable"}})
        if kind == "429":
            return Reply(429, {"error": {"message": "rate limited", "type": "RateLimitError"}})
        if kind == "drop":
            return Reply(drop=True)
        return Reply(payload=good, delay_s=3.5)  # slow: past the 2 s timeout, waited for (never re-sent)

    return respond


def config_with(small_config: Path, **pipeline: object) -> Path:
    text = small_config.read_text().replace(
        "pipeline: {", "pipeline: {" + "".join(f"{k}: {v}, " for k, v in pipeline.items())
    )
    small_config.write_text(text)
    return small_config


def test_every_record_one_status_and_transient_faults_retried(
    small_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = config_with(small_config, request_timeout_s=2, max_retries=3, max_in_flight=8)
    mira = MiraResource(config_path=str(cfg), home=str(tmp_path / "home"))
    server = ChatServer()
    server.responder = faulty(server)
    instance = in_process_instance()
    with serve(server) as url:
        monkeypatch.setenv("MIRA_STUDENT_BASE_URL", url)
        res = dg.materialize(
            ALL,
            selection=[RAW, STUDENT],
            partition_key="lean_qa",
            instance=instance,
            resources={"mira": mira},
            raise_on_error=False,
        )
    df = pl.read_parquet(tmp_path / "home" / "tables" / "student_scores" / "lean_qa.parquet")
    raw = pl.read_parquet(tmp_path / "home" / "tables" / "raw_records" / "lean_qa.parquet")
    assert df.height == raw.height == 67 and df["record_id"].n_unique() == 67  # none lost, none twice

    users = {user_key(b): kind_of(user_key(b)) for b in server.requests}
    assert len(users) == 67  # every record was requested
    kinds = list(users.values())
    expected = {"parse_error": kinds.count("prose"), "partial": kinds.count("cut")}
    expected["ok"] = 67 - expected["parse_error"] - expected["partial"]
    got = dict(df.group_by("status").len().iter_rows())
    assert got == {k: v for k, v in expected.items() if v}
    assert set(kinds) == set(KINDS)  # every fault kind was exercised
    for key, kind in users.items():
        # each transient fault cost exactly one retry; a slow reply none (the client waits as long as the server
        # needs: never paid twice); a reply that did not parse (prose, cut) was asked again once (parse_retries 1),
        # and this server answers it the same way again
        assert server.attempts[key] == (1 if kind in ("ok", "slow") else 2), kind

    # the blocking check reports the right rate, fails, and says so
    rate = expected["parse_error"] / 67
    evals = {e.check_name: e for e in res.get_asset_check_evaluations()}
    assert evals["parse_failure_rate"].metadata["parse_failure_rate"].value == pytest.approx(rate)
    assert evals["parse_failure_rate"].passed is (rate <= 0.05)
    assert evals["statuses_reconcile"].passed
    mat = instance.get_latest_materialization_event(dg.AssetKey("student_scores")).asset_materialization
    assert mat.metadata["retries"].value == sum(k in ("500", "503", "429", "drop") for k in kinds)
    assert mat.metadata["waited_past_timeout"].value == kinds.count("slow")
    assert mat.metadata["resent_after_stall"].value == 0
    reasked = expected["parse_error"] + expected["partial"]
    assert mat.metadata["requests_sent"].value == 67 + reasked
    assert mat.metadata["parse_retries_sent"].value == reasked and mat.metadata["parse_retries_rescued"].value == 0


def test_one_endpoint_down_does_not_stop_the_partition(
    small_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = config_with(small_config, request_timeout_s=2, max_retries=1, max_in_flight=4)
    mira = MiraResource(config_path=str(cfg), home=str(tmp_path / "home"))
    server = ChatServer()
    with serve(server) as url:
        dead = "http://127.0.0.1:9/v1"  # nothing listens on the discard port
        monkeypatch.setenv("MIRA_STUDENT_BASE_URL", f"{dead},{url}")
        instance = in_process_instance()
        res = dg.materialize(
            ALL, selection=[RAW, STUDENT], partition_key="lean_qa", instance=instance, resources={"mira": mira}
        )
    assert res.success
    df = pl.read_parquet(tmp_path / "home" / "tables" / "student_scores" / "lean_qa.parquet")
    assert df["status"].to_list() == ["ok"] * 67
    assert server.chat_requests == 67
    meta = instance.get_latest_materialization_event(dg.AssetKey("student_scores")).asset_materialization.metadata
    assert meta["failovers"].value >= 1
