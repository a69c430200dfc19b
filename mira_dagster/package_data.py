"""Files shipped inside the package (SQL, prompt templates, default anchors, instance settings, the `mira init`
project), found through importlib.resources so that a wheel, an sdist and an editable install read the same files."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

# Installed packages are plain folders (the project is not zip-safe): each resource is a real file with a path,
# which DuckDB, Jinja2 error messages and Dagster's `config_dir` need.
PACKAGE = Path(str(files("mira_dagster")))
SQL_DIR = PACKAGE / "sql"
RESOURCES = PACKAGE / "resources"
TEMPLATES_DIR = RESOURCES / "templates"
ANCHORS_DIR = RESOURCES / "anchors"
DAGSTER_YAML = RESOURCES / "dagster.yaml"
POSTGRES_YAML = RESOURCES / "dagster-postgres.yaml"
PROJECT_TEMPLATE = RESOURCES / "project"
