"""A user's project folder (`mira init DIR`, and the checkout itself through `make setup`): a registry whose paths are
relative to itself, the `.env` naming it for `mira` and Dagster's CLI, workspace.yaml and dg.toml (the code location
of `dagster dev` and `dg launch`), and the Dagster instance with the project's dagster.yaml, ready before the first
command."""

from __future__ import annotations

import shutil
from pathlib import Path

from mira_dagster.core.config import ConfigError
from mira_dagster.instance import CODE_LOCATION, ensure_instance
from mira_dagster.package_data import ANCHORS_DIR, PROJECT_TEMPLATE

REGISTRY = "groups.yaml"
WORKSPACE = f"""# the code location of `dagster dev` and the webserver started in this folder (written by `mira init`)
load_from:
  - python_module:
      module_name: {CODE_LOCATION}
      working_directory: .
"""

# `dg launch --assets selected_subset [--partition SOURCE]` (the card's command) finds the code location here: Dagster
# 1.13's `dagster asset materialize` takes it only from -m or an exported DAGSTER_MODULE_NAME, read before `.env`
DG_TOML = f"""# the code location of `dg launch --assets ...` started in this folder (written by `mira init`)
directory_type = "project"

[project]
root_module = "{CODE_LOCATION.split(".")[0]}"
code_location_target_module = "{CODE_LOCATION}"

# `dg` warns unless a .venv here is *activated*; its bin on PATH runs the same interpreter
[cli]
suppress_warnings = ["project_and_activated_venv_mismatch"]
"""


def env_text(registry: Path, home: Path) -> str:
    """The project's `.env`: absolute paths (Dagster refuses a relative DAGSTER_HOME), one variable a line; no
    DAGSTER_MODULE_NAME (measured with dagster 1.13.27: `dagster dev` then never serves its webserver)."""
    return (
        "# The project's settings, loaded by Dagster's CLI (`dagster dev`, `dg launch`, `dagster job ...`) from this\n"
        "# folder, where this file wins over the shell, and by `mira`, where the shell wins. The code location is in\n"
        "# workspace.yaml/[tool.dagster] (`dagster dev`, `dagster job backfill`) and dg.toml/[tool.dg] (`dg launch`),\n"
        "# not here: Dagster 1.13 reads it before this file, and a DAGSTER_MODULE_NAME here stops `dagster dev`.\n"
        f"MIRA_CONFIG={registry}\n"
        f"MIRA_HOME={home}\n"
        f"DAGSTER_HOME={home / 'dagster'}\n"
    )


def write_env(folder: Path, registry: Path, home: Path | None = None) -> Path:
    """`folder`/.env naming `registry` and the instance under `home` (default `folder`/.mira); an existing one is
    kept (it may hold the user's edits). Returns the file."""
    target = folder / ".env"
    if not target.exists():
        target.write_text(env_text(registry.resolve(), (home or folder / ".mira").resolve()), encoding="utf-8")
    return target


def init_project(folder: Path) -> list[Path]:
    """Write a new project into `folder` (created if missing): groups.yaml with one example source and the group's
    anchors file beside it, .env, workspace.yaml, dg.toml, and the instance (DAGSTER_HOME with the project's
    dagster.yaml). Refuses a folder that already has any of these files rather than overwrite them. Returns what it
    wrote."""
    folder = folder.expanduser().resolve()
    planned = [REGISTRY, ".env", "workspace.yaml", "dg.toml", "anchors", "data/example.jsonl"]
    taken = [name for name in planned if (folder / name).exists()]
    if taken:
        raise ConfigError(f"{folder} already has {', '.join(taken)}: `mira init` writes a new project only")
    (folder / "anchors").mkdir(parents=True)
    (folder / "data").mkdir(exist_ok=True)
    shutil.copyfile(PROJECT_TEMPLATE / REGISTRY, folder / REGISTRY)
    shutil.copyfile(PROJECT_TEMPLATE / "data" / "example.jsonl", folder / "data" / "example.jsonl")
    shutil.copyfile(PROJECT_TEMPLATE / "PROVENANCE.md", folder / "data" / "PROVENANCE.md")
    shutil.copyfile(ANCHORS_DIR / "group_2_dim_anchors.jsonl", folder / "anchors" / "group_2_dim_anchors.jsonl")
    (folder / "workspace.yaml").write_text(WORKSPACE, encoding="utf-8")
    (folder / "dg.toml").write_text(DG_TOML, encoding="utf-8")
    env = write_env(folder, folder / REGISTRY)
    home = ensure_instance(folder / ".mira" / "dagster")
    data = folder / "data" / "example.jsonl"
    return [folder / REGISTRY, data, folder / "anchors", env, folder / "workspace.yaml", folder / "dg.toml", home]
