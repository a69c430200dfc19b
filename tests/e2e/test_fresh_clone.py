"""Dagster's own commands as a user types them in a plain shell with `.venv/bin` on PATH (no `activate`, no
MIRA_* or DAGSTER_* exported): from a checkout after `make setup` (which writes its .env and instance,
mira_dagster/project.py) and from a `mira init` project. Nothing runs at interpreter start: the venv has no .pth of
ours, and Dagster finds the instance and the registry through the project's .env, loaded by its own CLI, and the code
location through the folder's own files (workspace.yaml, [tool.dagster] / [tool.dg] in pyproject.toml, dg.toml)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from dagster import DagsterInstance

from mira_dagster.core.config import PROJECT_ROOT
from tests.loopback import wait_for_http

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent
# the card's commands exactly as README.md and `mira init` write them: `dg launch` reads the code location from
# [tool.dg] (the checkout's pyproject.toml) or dg.toml (a `mira init` project). Dagster 1.13's `dagster asset
# materialize` takes it only from -m or an exported DAGSTER_MODULE_NAME (test_dagster_asset_materialize_needs_m)
CARD = "dg launch --assets selected_subset"
CARD_PARTITION = "dg launch --assets raw_records --partition {}"
BACKFILL = "dagster job backfill -j refresh_sources --partitions {} --noprompt"
DAEMON_LINE = "no Dagster daemon is running on"


def plain_env(folder: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MIRA_", "DAGSTER_", "VIRTUAL_"))}
    env.pop("PYTHONPATH", None)
    env.update(PATH=f"{BIN}:/usr/bin:/bin", PWD=str(folder))
    return env


def card_env() -> dict[str, str]:
    """The card's shell and nothing else: the venv's bin on PATH, HOME."""
    return {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": os.environ["HOME"], "LANG": "C.UTF-8"}


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
    (repo / ".venv").symlink_to(BIN.parent)  # a checkout's venv, on PATH but not activated
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
    repo, _ = checkout
    out = run(CARD_PARTITION.format("lean_qa"), repo, card_env())
    assert out.returncode == 0, out.stderr[-3000:]
    assert "RUN_SUCCESS" in out.stdout + out.stderr
    assert (repo / ".mira" / "tables" / "raw_records" / "lean_qa.parquet").exists()
    with open_instance(repo / ".mira" / "dagster") as inst:
        assert inst.get_dynamic_partitions("sources") == ["agent_openhands", "lean_qa"]
        assert inst.get_dynamic_partitions("scorer_units") == ["2", "D"]
        assert len(inst.get_runs()) == 1  # in the project's instance, not a temporary one


def test_dagster_asset_materialize_needs_m(checkout: tuple[Path, dict[str, str]]) -> None:
    """Why the card says `dg launch`: Dagster 1.13's `dagster asset materialize` ignores [tool.dagster] and .env for
    its code location (measured with 1.13.27). If a later Dagster reads them, this fails and the docs can change."""
    repo, _ = checkout
    bare = run("dagster asset materialize --select raw_records --partition lean_qa", repo, card_env())
    assert bare.returncode != 0 and "Invalid set of CLI arguments" in bare.stderr, bare.stderr[-3000:]
    named = run(
        "dagster asset materialize -m mira_dagster.definitions --select raw_records --partition lean_qa",
        repo,
        card_env(),
    )
    assert named.returncode == 0, named.stderr[-3000:]


def test_the_design_card_command_from_the_checkout(checkout: tuple[Path, dict[str, str]]) -> None:
    repo, env = checkout
    mira = run("mira run", repo, env)
    assert mira.returncode == 0, mira.stdout[-2000:] + mira.stderr[-2000:]
    assert "| lean_qa " in mira.stdout and "| agent_openhands " in mira.stdout  # the .env's registry
    card = run(CARD, repo, card_env())
    assert card.returncode == 0, card.stderr[-3000:]
    assert "RUN_SUCCESS" in card.stdout + card.stderr
    assert "project_and_activated_venv_mismatch" not in card.stdout + card.stderr  # PATH, not `activate`


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A fresh `mira init` project; its instance has the project's dagster.yaml before any other command."""
    init = run("mira init proj", tmp_path, card_env())
    assert init.returncode == 0, init.stderr[-3000:]
    assert CARD in init.stdout  # `mira init` tells the card's command
    proj = tmp_path / "proj"
    assert_project_settings(proj / ".mira" / "dagster")
    return proj


def test_the_design_card_command_from_a_mira_init_project(project: Path) -> None:
    proj, env = project, plain_env(project)
    (proj / ".venv").symlink_to(BIN.parent)  # a venv made in the project folder, its bin on PATH, not activated
    # the very first command in the project: a source partition, in the project's instance and store
    part = run(CARD_PARTITION.format("example"), proj, card_env())
    assert part.returncode == 0, part.stderr[-3000:]
    assert (proj / ".mira" / "tables" / "raw_records" / "example.parquet").exists()
    mira = run("mira run", proj, env)
    assert mira.returncode == 0, mira.stdout[-2000:] + mira.stderr[-2000:]
    assert "| example " in mira.stdout
    card = run(CARD, proj, card_env())
    assert card.returncode == 0, card.stderr[-3000:]
    assert "RUN_SUCCESS" in card.stdout + card.stderr
    assert "project_and_activated_venv_mismatch" not in card.stdout + card.stderr
    # at most one line (none if `mira run` left a daemon running), not one per process that loads the definitions
    assert (card.stdout + card.stderr).count(DAEMON_LINE) <= 1


def test_a_cli_backfill_says_no_daemon_runs(project: Path) -> None:
    """Dagster's CLI queues a backfill for the daemon without a word; the code location's load says it."""
    out = run(BACKFILL.format("example"), project, card_env())
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    assert "Launched backfill job" in text
    (line,) = [ln for ln in text.splitlines() if DAEMON_LINE in ln]
    assert str(project / ".mira" / "dagster") in line and "dagster-daemon run" in line


def test_dagster_dev_serves_the_project(project: Path) -> None:
    """`dagster dev` in a `mira init` project: the webserver answers and the code location loads (workspace.yaml),
    on the project's instance; its daemon's heartbeat then silences the no-daemon line of a CLI backfill."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = project / "dev.log"
    with open(log, "w") as sink:
        dev = subprocess.Popen(
            ["dagster", "dev", "-p", str(port)],
            cwd=project,
            env=card_env(),
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/server_info", dev, 180, "dagster dev")
        query = (
            "{ workspaceOrError { ... on Workspace { locationEntries { name locationOrLoadError { __typename } } } } }"
        )
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/graphql",
            data=json.dumps({"query": query}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            entries = json.load(resp)["data"]["workspaceOrError"]["locationEntries"]
        assert entries == [
            {"name": "mira_dagster.definitions", "locationOrLoadError": {"__typename": "RepositoryLocation"}}
        ]
        deadline = time.monotonic() + 120
        while True:  # the daemon's first heartbeat
            with open_instance(project / ".mira" / "dagster") as inst:
                if inst.get_daemon_heartbeats():
                    break
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(2)
        out = run(BACKFILL.format("example"), project, card_env())
        assert out.returncode == 0, out.stderr[-3000:]
        assert DAEMON_LINE not in out.stdout + out.stderr
    finally:
        os.killpg(dev.pid, signal.SIGTERM)
        try:
            dev.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(dev.pid, signal.SIGKILL)
