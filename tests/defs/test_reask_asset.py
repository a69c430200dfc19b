"""student_scores re-asks replies that do not parse (pipeline.parse_retries) and reports it in its metadata."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from mira_dagster.definitions import ALL_ASSETS, PARTITIONED_ASSETS
from mira_dagster.defs.partitions import in_process_instance
from mira_dagster.defs.resources import MiraResource
from tests.loopback import ChatServer, Reply, completion, serve, user_key

RAW, TEACHER, STUDENT = PARTITIONED_ASSETS


def _garbling_server() -> ChatServer:
    """The first reply to every 4th prompt is not in the contract format; every later one is."""
    server = ChatServer()
    server.responder = lambda body, attempt: Reply(
        payload=completion(body, "Sorry, I cannot score this.")
        if attempt == 1 and _garbled(body)
        else server.contract(body)
    )
    return server


def _garbled(body: dict) -> bool:
    return int(user_key(body), 16) % 4 == 0


def _student_run(mira: MiraResource) -> tuple[dg.ExecuteInProcessResult, dict]:
    res = dg.materialize(
        ALL_ASSETS,
        selection=[RAW, STUDENT],
        partition_key="lean_qa",
        instance=in_process_instance(),
        resources={"mira": mira},
        raise_on_error=False,
    )
    meta = res.asset_materializations_for_node("student_scores")[0].metadata
    return res, {k: v.value for k, v in meta.items()}


def test_garbled_replies_are_asked_again_and_counted(
    small_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = _garbling_server()
    mira = MiraResource(config_path=str(small_config), home=str(tmp_path / "home"))
    with serve(server) as url:
        monkeypatch.setenv("MIRA_STUDENT_BASE_URL", url)
        res, meta = _student_run(mira)
        garbled = len({user_key(b) for b in server.requests if _garbled(b)})
        assert 0 < garbled < 67
        assert res.success
        assert server.chat_requests == 67 + garbled == meta["requests_sent"]
        assert meta["parse_retries_sent"] == meta["parse_retried_records"] == meta["parse_retries_rescued"] == garbled
        df = pl.read_parquet(tmp_path / "home" / "tables" / "student_scores" / "lean_qa.parquet")
        assert df["status"].to_list() == ["ok"] * 67
        # a re-run: every record has an ok attempt in the cache
        res, meta = _student_run(mira)
    assert res.success and server.chat_requests == 67 + garbled
    assert (meta["requests_sent"], meta["parse_retries_sent"], meta["from_cache"]) == (0, 0, 67)


def test_parse_retries_zero_in_the_registry_asks_once(
    small_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = small_config.read_text(encoding="utf-8")
    assert "min_heldout: 4}" in text
    small_config.write_text(text.replace("min_heldout: 4}", "min_heldout: 4, parse_retries: 0}"), encoding="utf-8")
    server = _garbling_server()
    mira = MiraResource(config_path=str(small_config), home=str(tmp_path / "home"))
    with serve(server) as url:
        monkeypatch.setenv("MIRA_STUDENT_BASE_URL", url)
        _, meta = _student_run(mira)
    garbled = len({user_key(b) for b in server.requests if _garbled(b)})
    assert server.chat_requests == 67 == meta["requests_sent"]
    assert meta["parse_retries_sent"] == meta["parse_retries_rescued"] == 0
    assert meta["status_counts"]["parse_error"] == garbled > 0
