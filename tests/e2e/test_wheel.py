"""The package as people install it: the built wheel (from the sdist) in a fresh venv outside the checkout with the
locked dependencies, then `mira init`, `mira run` and the card's commands (`dg launch --assets selected_subset`, and
`--partition` for a source) in the new project, exactly as written, in a plain environment (PATH with the venv's bin,
HOME; no PYTHONPATH, no MIRA_* or DAGSTER_* exported, cwd the project)."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import duckdb
import pytest

from mira_dagster.core.config import PROJECT_ROOT

pytestmark = pytest.mark.e2e
UV = PROJECT_ROOT / ".venv-uv" / "bin" / "uv"
# what must ship inside the package (mira_dagster/package_data.py)
PACKAGE_DATA = (
    "mira_dagster/sql/select_variant.sql",
    "mira_dagster/sql/macro_budget_cut.sql",
    "mira_dagster/resources/templates/system.j2",
    "mira_dagster/resources/templates/user.j2",
    "mira_dagster/resources/anchors/group_2_dim_anchors.jsonl",
    "mira_dagster/resources/anchors/group_D_dim_anchors.jsonl",
    "mira_dagster/resources/dagster.yaml",
    "mira_dagster/resources/dagster-postgres.yaml",
    "mira_dagster/resources/project/groups.yaml",
    "mira_dagster/resources/project/data/example.jsonl",
)


def sh(cmd: list[str | Path] | str, cwd: Path, env: dict[str, str], timeout: int = 900) -> str:
    """Run a command; its output, or a failed test showing the tail of it."""
    run = subprocess.run(
        cmd if isinstance(cmd, list) else ["bash", "-c", cmd],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert run.returncode == 0, f"{cmd} exited {run.returncode}:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return run.stdout + run.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv outside the checkout holding the wheel built from the sdist and exactly the locked runtime packages."""
    if not UV.exists():
        pytest.fail(f"{UV} is missing: run `make setup-test`")
    tmp = tmp_path_factory.mktemp("wheel")
    dist = tmp / "dist"
    uv_env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_", "UV_PROJECT_"))}
    uv_env["UV_PYTHON_DOWNLOADS"] = "never"
    # no --wheel: uv builds the sdist, then the wheel from it, so the sdist must hold the package data too
    sh([UV, "build", "--quiet", "--out-dir", dist], PROJECT_ROOT, uv_env)
    (wheel,) = dist.glob("mira_dagster-*.whl")
    (sdist,) = dist.glob("mira_dagster-*.tar.gz")
    with tarfile.open(sdist) as tar:
        in_sdist = {"/".join(name.split("/")[1:]) for name in tar.getnames()}
    import zipfile

    with zipfile.ZipFile(wheel) as zf:
        in_wheel = set(zf.namelist())
    assert [p for p in PACKAGE_DATA if p not in in_wheel] == []
    assert [p for p in PACKAGE_DATA if p not in in_sdist] == []
    assert not any(name.endswith(".pth") for name in in_wheel)

    req = tmp / "requirements.txt"
    sh([UV, "export", "--quiet", "--frozen", "--no-hashes", "--no-emit-project", "-o", req], PROJECT_ROOT, uv_env)
    venv = tmp / "venv"
    sh([UV, "venv", "--quiet", "--python", sys.executable, venv], tmp, uv_env)
    sh([UV, "pip", "install", "--quiet", "-r", req, wheel], tmp, {**uv_env, "VIRTUAL_ENV": str(venv)})
    return venv


def plain_env(venv: Path, home: Path) -> dict[str, str]:
    """A user's shell: the venv's bin on PATH, nothing of the checkout, no MIRA_*, DAGSTER_* or PYTHONPATH."""
    return {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}


def test_wheel_init_run_and_dagster_materialize(installed: Path, tmp_path: Path) -> None:
    env = plain_env(installed, tmp_path)
    where = sh([installed / "bin" / "python", "-c", "import mira_dagster; print(mira_dagster.__file__)"], tmp_path, env)
    assert str(installed) in where and str(PROJECT_ROOT) not in where

    # outside a project, with no MIRA_CONFIG: one line saying what to do, not a path inside site-packages
    lost = subprocess.run(["mira", "run"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert lost.returncode == 2 and "mira init" in lost.stderr and lost.stderr.count("\n") == 1, lost.stderr

    init_out = sh(["mira", "init", "proj"], tmp_path, env)
    proj = tmp_path / "proj"
    assert "groups.yaml" in init_out and (proj / "dg.toml").is_file()
    dotenv = (proj / ".env").read_text()
    assert f"MIRA_CONFIG={proj / 'groups.yaml'}" in dotenv
    assert f"DAGSTER_HOME={proj / '.mira' / 'dagster'}" in dotenv
    # the instance has the project's dagster.yaml before any other command
    shipped = (installed / "lib").glob("python*/site-packages/mira_dagster/resources/dagster.yaml")
    assert (proj / ".mira" / "dagster" / "dagster.yaml").read_bytes() == next(shipped).read_bytes()
    # a second init into the same folder refuses rather than overwrite the user's registry
    again = subprocess.run(["mira", "init", "proj"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert again.returncode != 0 and "already has" in again.stderr

    run = sh(["mira", "run"], proj, env)
    assert "| example " in run and "| TOTAL " in run
    db = proj / ".mira" / "mira.duckdb"
    with duckdb.connect(str(db), read_only=True) as con:
        raw = con.execute("SELECT count(*) FROM raw_records WHERE source = 'example'").fetchone()[0]
        kept_by_mira = con.execute("SELECT count(*) FROM selected_subset").fetchone()[0]
    assert raw == 30  # the 30 records `mira init` copied, read through the registry's relative path
    assert 0 < kept_by_mira < 30

    inspect = sh(["mira", "inspect", "--source", "example"], proj, env)
    assert "example.jsonl" in inspect

    # Dagster's own CLI loads the project's .env: the instance is the project's without DAGSTER_HOME exported
    info = sh(["dagster", "instance", "info"], proj, env)
    assert f"$DAGSTER_HOME: {proj / '.mira' / 'dagster'}" in info

    # the card's commands as `mira init` printed them: the code location from the project's dg.toml, no -m
    card = "dg launch --assets selected_subset"
    assert card in init_out
    out = sh(card, proj, env)
    assert "RUN_SUCCESS" in out
    part = sh("dg launch --assets raw_records --partition example", proj, env)
    assert "RUN_SUCCESS" in part
    with duckdb.connect(str(db), read_only=True) as con:
        kept = con.execute("SELECT count(*) FROM selected_subset").fetchone()[0]
    assert kept == kept_by_mira  # the same selection, from the same registry and upstream
    assert not (PROJECT_ROOT / ".mira" / "tables" / "raw_records" / "example.parquet").exists()
