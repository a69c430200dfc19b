"""Dagster's own commands as a user types them in a plain shell with `.venv/bin` on PATH (no `activate`, no
MIRA_* or DAGSTER_* exported): from a checkout after `make setup` (which writes its .env and instance,
mira_dagster/project.py) and from a `mira init` project. Nothing runs at interpreter start: the venv has no .pth of
ours, and Dagster finds the instance and the registry through the project's .env, loaded by its own CLI."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from dagster import DagsterInstance

from mira_dagster.core.config import PROJECT_ROOT

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent
# Dagster 1.13 reads `dagster asset|job`'s code location while parsing the arguments, before it loads .env, and a
# DAGSTER_MODULE_NAME in .env (or exported) stops `dagster dev`'s webserver: the command line names it
MATERIALIZE = "dagster asset materialize -m mira_dagster.definitions "


def plain_env(folder: Path) -> dict[str, str]:
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("MIRA_", "DAGSTER_", "VIRTUAL_"))}
    env.pop("PYTHONPATH", None)
    env.update(PATH=f"{BIN}:/usr/bin:/bin", PWD=str(folder))
    return env


@pytest.fixture
def checkout(tmp_path: Path, small_config: Path) -> tuple[Path, dict[str, str]]:
    """The checkout's top-level files in tmp_path/repo with the small registry of two sources as its
    anchors/groups.yaml, after `make setup`'s last step (`python -m mira_dagster.instance`), in a plain environment."""
    assert not list(Path(sysconfig.get_path("purelib")).glob("mira_dagster*.pth")), "an old hook: run `make setup`"
    repo = tmp_path / "repo"
    anchors = repo / "anchors"
    anchors.mkdir(parents=True)
    for name in ("pyproject.toml", "workspace.yaml"):
        shutil.copy(PROJECT_ROOT / name, repo / name)
    shutil.copy(small_config, anchors / "groups.yaml")
    shutil.copytree(tmp_path / "data", anchors / "data")
    for anchor in tmp_path.glob("group_*_dim_anchors.jsonl"):
        shutil.copy(anchor, anchors / anchor.name)
    env = plain_env(repo)
    setup = run(f"{BIN / 'python'} -m mira_dagster.instance", repo, env)
    assert setup.returncode == 0, setup.stderr[-3000:]
    return repo, env


def run(cmd: str, folder: Path, env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", cmd], cwd=folder, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def open_instance(home: Path) -> DagsterInstance:
    return DagsterInstance.from_config(str(home))


def assert_project_settings(home: Path) -> None:
    """The project's dagster.yaml is the instance's: run queue, per-group limit, pools."""
    with open_instance(home) as inst:
        config = inst.get_concurrency_config()
        assert config.run_queue_config.max_concurrent_runs == 4
        assert config.run_queue_config.tag_concurrency_limits == [
            {"key": "mira/scorer_group", "value": {"applyLimitPerUniqueValue": True}, "limit": 2}
        ]
        assert config.pool_config.default_pool_limit == 2


def test_setup_makes_the_checkout_a_project(checkout: tuple[Path, dict[str, str]]) -> None:
    repo, env = checkout
    dotenv = (repo / ".env").read_text()
    assert f"MIRA_CONFIG={repo / 'anchors' / 'groups.yaml'}" in dotenv
    assert f"DAGSTER_HOME={repo / '.mira' / 'dagster'}" in dotenv
    assert_project_settings(repo / ".mira" / "dagster")
    # Dagster's CLI takes the instance from .env, nothing exported
    out = run("dagster instance info", repo, env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"$DAGSTER_HOME: {repo / '.mira' / 'dagster'}" in out.stdout
    # a second `make setup` keeps the .env (a user's edits) as it is
    (repo / ".env").write_text(dotenv + "# edited\n")
    assert run(f"{BIN / 'python'} -m mira_dagster.instance", repo, env).returncode == 0
    assert (repo / ".env").read_text().endswith("# edited\n")


def test_concurrent_first_setups_do_not_race(tmp_path: Path) -> None:
    """Four first set-ups of one fresh instance at once: the schema is created once, under the file lock."""
    folder = tmp_path / "p"
    folder.mkdir()
    env = {**plain_env(folder), "DAGSTER_HOME": str(tmp_path / "fresh")}
    cmd = f"{BIN / 'python'} -c 'from mira_dagster.instance import ensure_instance; ensure_instance()'"
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda _: run(cmd, folder, env), range(4)))
    for out in outs:
        assert out.returncode == 0, out.stderr[-3000:]
    assert_project_settings(tmp_path / "fresh")


def test_first_command_materialises_a_source_partition(checkout: tuple[Path, dict[str, str]]) -> None:
    """Nothing ran before (no `mira run`, no sensor tick): the registry's sources are partitions at load."""
    repo, env = checkout
    out = run(MATERIALIZE + "--select raw_records --partition lean_qa", repo, env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "RUN_SUCCESS" in out.stdout + out.stderr
    assert (repo / ".mira" / "tables" / "raw_records" / "lean_qa.parquet").exists()
    with open_instance(repo / ".mira" / "dagster") as inst:
        assert inst.get_dynamic_partitions("sources") == ["agent_openhands", "lean_qa"]
        assert inst.get_dynamic_partitions("scorer_units") == ["2", "D"]


def test_the_design_card_command_from_the_checkout(checkout: tuple[Path, dict[str, str]]) -> None:
    repo, env = checkout
    mira = run("mira run", repo, env)
    assert mira.returncode == 0, mira.stdout[-2000:] + mira.stderr[-2000:]
    assert "| lean_qa " in mira.stdout and "| agent_openhands " in mira.stdout  # the .env's registry
    card = run(MATERIALIZE + "--select selected_subset", repo, env)
    assert card.returncode == 0, card.stderr[-3000:]
    assert "RUN_SUCCESS" in card.stdout + card.stderr


def test_the_design_card_command_from_a_mira_init_project(tmp_path: Path) -> None:
    env = plain_env(tmp_path)
    init = run("mira init proj", tmp_path, env)
    assert init.returncode == 0, init.stderr[-3000:]
    proj = tmp_path / "proj"
    assert_project_settings(proj / ".mira" / "dagster")
    mira = run("mira run", proj, env)
    assert mira.returncode == 0, mira.stdout[-2000:] + mira.stderr[-2000:]
    assert "| example " in mira.stdout
    # a source partition, then the card's command, in the project's instance and store
    part = run(MATERIALIZE + "--select raw_records --partition example", proj, env)
    assert part.returncode == 0, part.stderr[-3000:]
    card = run(MATERIALIZE + "--select selected_subset", proj, env)
    assert card.returncode == 0, card.stderr[-3000:]
    assert "RUN_SUCCESS" in card.stdout + card.stderr
    assert (proj / ".mira" / "tables" / "raw_records" / "example.parquet").exists()
