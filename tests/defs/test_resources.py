"""The Dagster face of the settings: MiraResource takes the MIRA_* variables as dg.EnvVar, resolves them when a run
starts, keeps keys out of run config, the UI's resource view, the event log and the tables, and nothing loads the
registry when the code location is imported."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from mira_dagster.core.config import PROJECT_ROOT
from mira_dagster.definitions import ALL_ASSETS, PARTITIONED_ASSETS
from mira_dagster.defs.partitions import in_process_instance
from mira_dagster.defs.resources import EndpointConfig, MiraResource, mira_resource
from mira_dagster.io.registry import load_config
from tests.loopback import ChatServer, serve

RAW, _, STUDENT = PARTITIONED_ASSETS
SECRET = "sk-test-secret-5f2c9a"


def test_set_variables_are_wired_as_env_vars(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MIRA_HOME", str(tmp_path))
    monkeypatch.setenv("MIRA_STUDENT_API_KEY", SECRET)
    monkeypatch.setenv("MIRA_STUDENT_BASE_URL_D", "http://agent/v1")
    monkeypatch.delenv("MIRA_CONFIG", raising=False)
    mira = mira_resource()
    assert isinstance(mira.home, dg.EnvVar) and mira.home.env_var_name == "MIRA_HOME"
    assert isinstance(mira.student.api_key, dg.EnvVar) and mira.student.api_key.env_var_name == "MIRA_STUDENT_API_KEY"
    assert mira.student.unit_base_urls["D"].env_var_name == "MIRA_STUDENT_BASE_URL_D"  # type: ignore[attr-defined]
    assert mira.config_path is None and mira.student.base_url is None and mira.teacher.api_key is None
    # outside a run (mira run's plan, notebooks) the values are read when used
    settings = mira.settings()
    assert settings.home == tmp_path
    assert settings.student.api_key is not None and settings.student.api_key.get_secret_value() == SECRET
    assert settings.student.unit_base_urls == {"D": "http://agent/v1"}


def test_values_given_to_the_resource_beat_the_environment(
    small_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MIRA_STUDENT_BASE_URL", "http://env/v1")
    monkeypatch.setenv("MIRA_STUDENT_MODEL", "env-model")
    monkeypatch.setenv("MIRA_HOME", str(tmp_path / "env-home"))
    mira = MiraResource(
        config_path=str(small_config), home=str(tmp_path / "home"), student=EndpointConfig(base_url="http://given/v1")
    )
    endpoint = mira.endpoint("student", "2")
    assert endpoint is not None and endpoint.base_urls == ("http://given/v1",) and endpoint.model == "env-model"
    assert mira.store().home == tmp_path / "home"
    assert mira.config().path == small_config.resolve()
    assert mira.endpoint("teacher", "2") is None  # nothing set: the offline stand-in


def test_a_key_from_the_environment_reaches_the_server_and_nothing_else(
    small_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    server = ChatServer()
    with serve(server) as url:
        monkeypatch.setenv("MIRA_STUDENT_BASE_URL", url)
        monkeypatch.setenv("MIRA_STUDENT_API_KEY", SECRET)
        mira = mira_resource(config_path=str(small_config), home=str(home))
        instance = in_process_instance(load_config(small_config))
        result = dg.materialize(
            ALL_ASSETS,
            selection=[RAW, STUDENT],
            partition_key="lean_qa",
            instance=instance,
            resources={"mira": mira},
        )
    assert result.success
    assert server.chat_requests > 0 and set(server.auth_headers) == {f"Bearer {SECRET}"}  # resolved at run time

    run = instance.get_run_by_id(result.run_id)
    assert run is not None and SECRET not in dg.serialize_value(run)  # run config, tags
    events = instance.all_logs(result.run_id)
    assert any(e.dagster_event and e.dagster_event.is_step_materialization for e in events)
    assert SECRET not in dg.serialize_value(events)  # log lines, materialisation and check metadata

    # the resource as the UI shows it (its config schema's default, which the code location's snapshot carries):
    # the variable's name, not its value
    shown = str(mira.get_resource_definition().config_schema.as_field().default_value)
    assert "MIRA_STUDENT_API_KEY" in shown and SECRET not in shown

    # the tables and every other file written under MIRA_HOME
    scores = pl.read_parquet(home / "tables" / "student_scores" / "lean_qa.parquet")
    assert (scores["status"] == "ok").all()
    assert SECRET not in str(scores.rows())
    for f in home.rglob("*"):
        if f.is_file():
            assert SECRET.encode() not in f.read_bytes(), f


def test_importing_the_code_location_loads_no_configuration(tmp_path: Path) -> None:
    """A registry that does not exist (or any other setting) is no import error: it is read when a run uses it. Every
    module of the package is imported with load_config replaced by one that fails."""
    script = textwrap.dedent(
        """
        import importlib, pkgutil
        import mira_dagster
        import mira_dagster.io.registry as config

        load_config = config.load_config
        def refuse(*args, **kwargs):
            raise AssertionError("load_config called at import time")

        config.load_config = refuse
        for mod in pkgutil.walk_packages(mira_dagster.__path__, "mira_dagster."):
            importlib.import_module(mod.name)
        config.load_config = load_config
        import dagster as dg
        import mira_dagster.definitions as d

        # loading the code location (lazily, or at import) does not fail on the missing registry either
        defs = d.defs if isinstance(d.defs, dg.Definitions) else d.defs()
        defs.get_repository_def()
        print("resource config_path:", defs.resources["mira"].config_path.env_var_name)
        """
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "MIRA_CONFIG": str(tmp_path / "does-not-exist.yaml"),
        "MIRA_HOME": str(tmp_path / "home"),
        "DAGSTER_HOME": str(tmp_path / "dagster"),
    }
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resource config_path: MIRA_CONFIG" in done.stdout
    assert not (tmp_path / "home").exists()  # nothing written either
