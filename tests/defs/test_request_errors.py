"""The blocking `request_errors` check: a scorer endpoint that is down fails its partition and says which one."""

from __future__ import annotations

import time
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from mira_dagster.definitions import ALL_ASSETS, PARTITIONED_ASSETS
from mira_dagster.defs.partitions import in_process_instance
from mira_dagster.defs.resources import MiraResource
from mira_dagster.defs.scoring import request_errors
from tests.io.test_endpoint_down import closed_port_url
from tests.loopback import ChatServer, Reply, serve, user_key

RAW, TEACHER, STUDENT = PARTITIONED_ASSETS


def _run(mira: MiraResource, selection: list, source: str = "lean_qa") -> dg.ExecuteInProcessResult:
    return dg.materialize(
        ALL_ASSETS,
        selection=selection,
        partition_key=source,
        instance=in_process_instance(),
        resources={"mira": mira},
        raise_on_error=False,
    )


def _check(res: dg.ExecuteInProcessResult, asset: str) -> dg.AssetCheckEvaluation:
    return next(
        e for e in res.get_asset_check_evaluations() if e.check_name == "request_errors" and e.asset_key.path == [asset]
    )


def test_closed_port_fails_the_student_partition_naming_the_endpoint(
    small_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = closed_port_url()
    # credentials in the URL and the key must not reach the description
    monkeypatch.setenv("MIRA_STUDENT_BASE_URL", url.replace("http://", "http://alice:pw-in-url@") + "?token=tok123")
    monkeypatch.setenv("MIRA_STUDENT_API_KEY", "sk-never-shown")
    mira = MiraResource(config_path=str(small_config), home=str(tmp_path / "home"))
    started = time.monotonic()
    res = _run(mira, [RAW, STUDENT])
    elapsed = time.monotonic() - started
    assert not res.success  # a blocking check failed
    check = _check(res, "student_scores")
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    text = check.description
    assert "\n" not in text
    assert text.startswith(f"student endpoint {url} (model whw06/MIRA-QA-Group3), source lean_qa: ")
    assert "67 of 67 requests failed (100%, limit 20%): APIConnectionError: Connection error." in text
    for secret in ("alice", "pw-in-url", "tok123", "sk-never-shown"):
        assert secret not in text
    assert check.metadata["request_errors"].value == 67
    assert elapsed < 60, elapsed  # default retries (3) and timeout (120 s): seconds, not hours
    df = pl.read_parquet(tmp_path / "home" / "tables" / "student_scores" / "lean_qa.parquet")
    assert df["status"].to_list() == ["request_error"] * 67


def test_closed_teacher_endpoint_fails_teacher_labels(
    small_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = closed_port_url()
    monkeypatch.setenv("MIRA_TEACHER_BASE_URL", url)
    monkeypatch.setenv("MIRA_TEACHER_MODEL", "kimi-test")
    mira = MiraResource(config_path=str(small_config), home=str(tmp_path / "home"))
    res = _run(mira, [RAW, TEACHER])
    check = _check(res, "teacher_labels")
    assert not check.passed and not res.success
    assert check.description.startswith(f"teacher endpoint {url} (model kimi-test), source lean_qa: 34 of 34 requests")


def test_healthy_endpoint_passes(small_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mira = MiraResource(config_path=str(small_config), home=str(tmp_path / "home"))
    with serve(ChatServer()) as url:
        monkeypatch.setenv("MIRA_STUDENT_BASE_URL", url)
        res = _run(mira, [RAW, STUDENT])
    assert res.success
    check = _check(res, "student_scores")
    assert check.passed
    assert check.description == (
        f"student endpoint {url} (model whw06/MIRA-QA-Group3), source lean_qa: 0 of 67 requests failed (0%, limit 20%)"
    )


def test_share_is_over_records_sent_and_limit_applies(
    small_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # every 10th prompt is refused with a 400: about 10% request errors, under the 20% limit, passes
    server = ChatServer()
    server.responder = lambda body, n: (
        Reply(400, {"error": {"message": "bad prompt"}})
        if int(user_key(body), 16) % 10 == 0
        else Reply(payload=server.contract(body))
    )
    mira = MiraResource(config_path=str(small_config), home=str(tmp_path / "home"))
    with serve(server) as url:
        monkeypatch.setenv("MIRA_STUDENT_BASE_URL", url)
        res = _run(mira, [RAW, STUDENT])
        df = pl.read_parquet(tmp_path / "home" / "tables" / "student_scores" / "lean_qa.parquet")
        failed = int((df["status"] == "request_error").sum())
        assert 0 < failed <= 0.2 * 67
        check = _check(res, "student_scores")
        assert check.passed and res.success
        assert f"{failed} of 67 requests failed" in check.description
        # a second run: answered records come from the cache and are left out; only the failed ones are sent again,
        # all fail again, so the share over what was sent is 100%
        res = _run(mira, [RAW, STUDENT])
    check = _check(res, "student_scores")
    assert not check.passed and not res.success
    assert f"{failed} of {failed} requests failed (100%, limit 20%): BadRequestError: Error code: 400" in (
        check.description
    )


def test_request_errors_counts_only_records_to_send() -> None:
    df = pl.DataFrame(
        {
            "status": ["ok", "request_error", "request_error", "too_long", "invalid_input", "ok", "request_error"],
            "from_cache": [True, False, False, False, False, False, False],
            "issues": [[], ["E: down"], ["E: down"], ["too long"], ["bad"], [], ["F: other"]],
        }
    )
    assert request_errors(df) == (3, 4, [("E: down", 2), ("F: other", 1)])
