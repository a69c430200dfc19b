"""The load-time line that says no Dagster daemon runs on the project's instance (mira_dagster/defs/daemon.py): on a
real instance without a daemon, once per process; quiet with a fresh heartbeat or while a run is in progress."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from mira_dagster.defs import daemon
from mira_dagster.instance import ensure_instance

NOW = 1_000_000.0


class FakeInstance:
    """The two DagsterInstance methods the check reads: the daemons' heartbeats and the count of runs in progress."""

    def __init__(self, beats: list[float], in_progress: int = 0) -> None:
        self.beats = {f"D{i}": SimpleNamespace(timestamp=t) for i, t in enumerate(beats)}
        self.in_progress = in_progress

    def get_daemon_heartbeats(self) -> dict[str, SimpleNamespace]:
        return self.beats

    def get_runs_count(self, filters: object) -> int:
        return self.in_progress


@pytest.mark.parametrize(
    ("beats", "running"),
    [
        ([], False),
        ([NOW - 10], True),
        ([NOW - daemon.HEARTBEAT_STALE_SECONDS - 1], False),  # a daemon that stopped a while ago
        ([NOW - 5000, NOW - 20], True),  # the newest heartbeat counts
    ],
)
def test_daemon_running_reads_the_newest_heartbeat(beats: list[float], running: bool) -> None:
    assert daemon.daemon_running(FakeInstance(beats), now=NOW) is running


def test_a_run_in_progress_keeps_its_own_processes_quiet() -> None:
    assert daemon.daemon_warning(FakeInstance([], in_progress=1), "/h") is None
    line = daemon.daemon_warning(FakeInstance([]), "/h")
    assert line is not None and "/h" in line and "dagster-daemon run" in line


def test_load_warns_once_per_process_on_an_instance_without_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    home = ensure_instance(tmp_path / "dagster")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setattr(daemon, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="dagster"):
        daemon.warn_without_daemon_on_load()
        daemon.warn_without_daemon_on_load()  # Dagster loads the definitions several times in one process
    lines = [r.getMessage() for r in caplog.records if "Dagster daemon" in r.getMessage()]
    assert lines == [daemon.daemon_warning_text(str(home))]


def test_no_instance_no_line(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.setattr(daemon, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="dagster"):
        daemon.warn_without_daemon_on_load()
    assert not [r for r in caplog.records if "Dagster daemon" in r.getMessage()]


def test_an_unreadable_instance_is_a_warning_not_a_failed_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "dagster.yaml").write_text("storage: [not, a, mapping]\n")
    monkeypatch.setenv("DAGSTER_HOME", str(broken))
    monkeypatch.setattr(daemon, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="dagster"):
        daemon.warn_without_daemon_on_load()
    (line,) = [r.getMessage() for r in caplog.records if "heartbeat" in r.getMessage()]
    assert str(broken) in line and "could not be read" in line
