"""Dagster's own commands in a fresh checkout, as a user types them in a plain shell with `.venv/bin` on PATH (no
`activate`): the instance (mira_dagster/instance.py, through the mira_dagster.pth that `make setup` installs)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from dagster import DagsterInstance
from dagster._core.instance.ref import InstanceRef

from mira_dagster.core.config import PROJECT_ROOT

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent


@pytest.fixture
def checkout(tmp_path: Path, small_config: Path) -> tuple[Path, dict[str, str]]:
    """The checkout's top-level files in tmp_path/repo, a plain environment (no MIRA_*, no DAGSTER_*), the small
    registry of two sources."""
    if not (Path(sysconfig.get_path("purelib")) / "mira_dagster.pth").exists():
        pytest.fail("mira_dagster.pth is not in the venv: run `make setup`")
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in (".env", "pyproject.toml", "workspace.yaml", "dagster.yaml"):
        shutil.copy(PROJECT_ROOT / name, repo / name)
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("MIRA_", "DAGSTER_", "VIRTUAL_"))}
    env.update(PATH=f"{BIN}:{env['PATH']}", PWD=str(repo), MIRA_CONFIG=str(small_config))
    return repo, env


def run(cmd: str, repo: Path, env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", cmd], cwd=repo, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def open_instance(home: Path) -> DagsterInstance:
    return DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))


def assert_project_settings(home: Path) -> None:
    """The project's dagster.yaml is the instance's: run queue, per-group limit, pools."""
    with open_instance(home) as inst:
        config = inst.get_concurrency_config()
        assert config.run_queue_config.max_concurrent_runs == 4
        assert config.run_queue_config.tag_concurrency_limits == [
            {"key": "mira/scorer_group", "value": {"applyLimitPerUniqueValue": True}, "limit": 2}
        ]
        assert config.pool_config.default_pool_limit == 2


def test_exported_dagster_home_wins(checkout: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    repo, env = checkout
    home = tmp_path / "elsewhere" / "dh"  # not there yet: made ready by the first command
    out = run(f"DAGSTER_HOME={home} dagster instance info", repo, env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"$DAGSTER_HOME: {home}" in out.stdout
    assert not (repo / ".mira" / "dagster").exists()
    assert_project_settings(home)


def test_first_command_materialises_a_source_partition(checkout: tuple[Path, dict[str, str]]) -> None:
    """Nothing ran before (no `mira run`, no sensor tick): the registry's sources are partitions at load."""
    repo, env = checkout
    out = run("dagster asset materialize --select raw_records --partition lean_qa", repo, env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "RUN_SUCCESS" in out.stdout + out.stderr
    home = repo / ".mira" / "dagster"  # the default DAGSTER_HOME, the one `mira run` uses
    assert (repo / ".mira" / "tables" / "raw_records" / "lean_qa.parquet").exists()
    assert_project_settings(home)
    with open_instance(home) as inst:
        assert inst.get_dynamic_partitions("sources") == ["agent_openhands", "lean_qa"]
        assert inst.get_dynamic_partitions("scorer_units") == ["2", "D"]


def test_concurrent_first_commands_do_not_race(checkout: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    repo, env = checkout
    env = {**env, "DAGSTER_HOME": str(tmp_path / "fresh")}
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda _: run("dagster instance info", repo, env), range(4)))
    for out in outs:
        assert out.returncode == 0, out.stderr[-3000:]
    assert_project_settings(tmp_path / "fresh")


def test_the_design_card_command_and_one_line_refusals(checkout: tuple[Path, dict[str, str]]) -> None:
    repo, env = checkout
    mira = run("mira run", repo, env)
    assert mira.returncode == 0, mira.stdout[-2000:] + mira.stderr[-2000:]
    card = run("dagster asset materialize --select selected_subset", repo, env)
    assert card.returncode == 0, card.stderr[-3000:]
    assert "RUN_SUCCESS" in card.stdout + card.stderr

    # what Dagster 1.13 ends in a traceback here: one line naming what to run instead
    for cmd, says in [
        ("dagster asset materialize --select raw_records --partition-range agent_openhands...lean_qa", "job backfill"),
        ("dagster asset materialize --select raw_records", "--partition <key> (one of: agent_openhands, lean_qa)"),
        ("dagster asset materialize --select selected_subset --partition lean_qa", "leave --partition out"),
    ]:
        out = run(cmd, repo, env)
        assert out.returncode == 2, cmd
        assert out.stderr.startswith("mira: ") and out.stderr.count("\n") == 1 and says in out.stderr, out.stderr
