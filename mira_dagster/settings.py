"""Every setting of mira-dagster and where it comes from: the one way configuration comes in.

Two sources, read here and nowhere else: environment variables (where things are: files, servers, keys) and the
source registry YAML (what to do: groups, sources, pipeline settings; read by io/registry.py). `core/` reads neither
the environment nor any file; `defs/resources.py` builds the Dagster resource from this module (`dg.EnvVar` for every
variable that is set, so Dagster resolves the values when a run starts and run config, the UI, logs and metadata show
only the variable's name); nothing here runs at import time.

| setting             | environment variable / registry key (the first one set wins)       | default                 |
|---------------------|--------------------------------------------------------------------|-------------------------|
| `config_path`       | `MIRA_CONFIG` (`mira ... --config`): the source registry           | checkout's anchors/     |
| `home`              | `MIRA_HOME` (`mira ... --home`): tables, cache, exports            | `.mira/` (working dir)  |
| `store_url`         | `MIRA_STORE_URL` (`s3://bucket/prefix` or a shared folder): tables,| `<home>` (local disk)   |
|                     | replies, exports, rubrics; `<home>` then only holds caches         |                         |
| `tables_url`        | `MIRA_TABLES_URL`: an alias of `MIRA_STORE_URL` (which wins)       | -                       |
| `s3_endpoint_url`   | `MIRA_S3_ENDPOINT_URL` (credentials: s3fs's `AWS_*` chain)         | AWS                     |
| `student.base_url`  | `MIRA_STUDENT_BASE_URL_<UNIT>`, `MIRA_STUDENT_BASE_URL`            | offline stand-in        |
| `student.model`     | `MIRA_STUDENT_MODEL_<UNIT>`, `MIRA_STUDENT_MODEL`                  | registry student_model  |
| `student.api_key` * | `MIRA_STUDENT_API_KEY`                                             | `EMPTY` (vLLM, no key)  |
| `teacher.base_url`  | `MIRA_TEACHER_BASE_URL_<UNIT>`, `MIRA_TEACHER_BASE_URL`            | offline stand-in        |
| `teacher.model`     | `MIRA_TEACHER_MODEL_<UNIT>`, `MIRA_TEACHER_MODEL`                  | `moonshotai/Kimi-K2.6`  |
| `teacher.api_key` * | `MIRA_TEACHER_API_KEY`                                             | `EMPTY`                 |
| `embed.base_url`    | `MIRA_EMBED_BASE_URL` (`/v1/embeddings`, rubric discovery)         | offline hashed TF-IDF   |
| `embed.model`       | `MIRA_EMBED_MODEL`                                                 | the endpoint's only one |
| `embed.api_key` *   | `MIRA_EMBED_API_KEY`                                               | `EMPTY`                 |
| groups, sources     | registry `groups:`, `sources:`, `watch:` (core/config.MiraConfig)  | -                       |
| `allowed_roots`     | registry `allowed_roots:`: folders the sources' symlinks may lead  | the registry's folder   |
| pipeline settings   | registry `pipeline:` (core/config.PipelineSettings documents each) | as there                |
| Dagster instance    | `DAGSTER_HOME` (`mira run`: `<home>/dagster` when unset)           | -                       |
| `dagster_pg_url` *  | `MIRA_DAGSTER_PG_URL`: the instance on PostgreSQL (instance.py)    | SQLite in DAGSTER_HOME  |
| `executor`          | `MIRA_EXECUTOR`: `in_process` (one process a run) or `celery`      | `multiprocess`          |
| `celery_broker` *   | `MIRA_CELERY_BROKER` (`redis://host:6379/0`): broker and results   | - (needed by `celery`)  |

A project folder's `.env` (`mira init`, `make setup`; load_project_env) sets MIRA_CONFIG, MIRA_HOME and
DAGSTER_HOME for `mira` started there, under what the shell exports. Without either, the registry is the checkout's
anchors/groups.yaml (an installed package has none: `mira init DIR` makes a project).

Marked *: a secret, a `SecretStr` here, and never in run config, the UI, logs, metadata or the tables.

`<UNIT>` is a scorer unit's key upper-cased: a group (`MIRA_STUDENT_BASE_URL_D`), `GLOBAL`, or a source
(`MIRA_STUDENT_BASE_URL_LEAN_QA`). An empty variable counts as unset. Precedence, highest first: a value given to
the resource (`MiraResource(home=..., student=EndpointConfig(base_url=...))`, or its run config), the environment
variable, the default; a unit's own variable beats the role-wide one (`MIRA_STUDENT_BASE_URL_D` over
`MIRA_STUDENT_BASE_URL`, even one given to the resource). Test-only variables (`MIRA_VLLM_PYTHON`,
`MIRA_EMBED_MODEL_DIR`, `MIRA_SCREENSHOT_DIR`, `MIRA_UPDATE_GOLDEN`, `MIRA_BENCH_TMP`) live in tests/ and bench/.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from mira_dagster.core.config import DEFAULT_CONFIG, ConfigError, MiraConfig, PipelineSettings, ScorerUnit
from mira_dagster.io.registry import load_config

if TYPE_CHECKING:  # imported where used: `mira --help` need not load openai, DuckDB or scikit-learn
    from mira_dagster.core.embeddings import Embedder
    from mira_dagster.core.scoring import Role
    from mira_dagster.io.endpoint import Endpoint
    from mira_dagster.io.store import Store

DEFAULT_HOME = Path(".mira")

# setting -> environment variable (the table above)
PATH_VARS = {
    "config_path": "MIRA_CONFIG",
    "home": "MIRA_HOME",
    "store_url": "MIRA_STORE_URL",
    "tables_url": "MIRA_TABLES_URL",  # the alias, from when only the tables went there
    "s3_endpoint_url": "MIRA_S3_ENDPOINT_URL",
}
ENDPOINT_PREFIXES = {"student": "MIRA_STUDENT", "teacher": "MIRA_TEACHER", "embed": "MIRA_EMBED"}
ENDPOINT_FIELDS = {"base_url": "BASE_URL", "model": "MODEL", "api_key": "API_KEY"}
# per scorer unit (units are the registry's, so these are found by prefix): the roles only, not the embeddings
UNIT_FIELDS = {"unit_base_urls": "BASE_URL", "unit_models": "MODEL"}
UNIT_ROLES = ("student", "teacher")
# the deployment: where the Dagster instance keeps runs and events, what executes refresh_sources' steps. Read by
# instance.py, defs/automation.py and worker.py (`Deployment.from_env`), not by the resource: no run needs them
DEPLOY_VARS = {
    "dagster_pg_url": "MIRA_DAGSTER_PG_URL",
    "executor": "MIRA_EXECUTOR",
    "celery_broker": "MIRA_CELERY_BROKER",
}
EXECUTORS = ("multiprocess", "in_process", "celery")


def env_names(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The variables of the table that are set (non-empty), by setting: {"home": "MIRA_HOME", "student":
    {"base_url": "MIRA_STUDENT_BASE_URL", "unit_base_urls": {"D": "MIRA_STUDENT_BASE_URL_D"}}, ...}. Names only:
    defs/resources.py turns them into dg.EnvVar, `Settings.from_env` into values."""
    env = os.environ if environ is None else environ
    names: dict[str, Any] = {key: var for key, var in PATH_VARS.items() if env.get(var)}
    for role, prefix in ENDPOINT_PREFIXES.items():
        found: dict[str, Any] = {
            key: f"{prefix}_{var}" for key, var in ENDPOINT_FIELDS.items() if env.get(f"{prefix}_{var}")
        }
        if role in UNIT_ROLES:
            for key, var in UNIT_FIELDS.items():
                start = f"{prefix}_{var}_"
                units = {name[len(start) :]: name for name in env if name.startswith(start) and env[name]}
                if units:
                    found[key] = dict(sorted(units.items()))
        if found:
            names[role] = found
    return names


class EndpointSettings(BaseModel):
    """One OpenAI-compatible endpoint family: a role's (student, teacher) or the embeddings'."""

    model_config = ConfigDict(frozen=True)

    base_url: str | None = None  # comma-separated for several servers of the same model
    model: str | None = None
    api_key: SecretStr | None = None
    unit_base_urls: dict[str, str] = Field(default_factory=dict)  # <UNIT> (upper-cased key) -> base_url
    unit_models: dict[str, str] = Field(default_factory=dict)

    def endpoint(self, unit_key: str, default_model: str) -> Endpoint | None:
        """The endpoint(s) of a scorer unit: its own URL, else the role's; None for the offline stand-in."""
        from mira_dagster.io.endpoint import Endpoint

        suffix = unit_key.upper()
        raw = self.unit_base_urls.get(suffix) or self.base_url
        if not raw:
            return None
        urls = tuple(u.strip().rstrip("/") for u in raw.split(",") if u.strip())
        model = self.unit_models.get(suffix) or self.model or default_model
        key = self.api_key.get_secret_value() if self.api_key else ""
        return Endpoint(base_urls=urls, api_key=key or "EMPTY", model=model)


class Settings(BaseModel):
    """Every setting (the table in the module docstring). `registry()` loads the YAML the settings point at."""

    model_config = ConfigDict(frozen=True)

    config_path: Path = DEFAULT_CONFIG
    home: Path = DEFAULT_HOME
    store_url: str | None = None
    tables_url: str | None = None
    s3_endpoint_url: str | None = None
    student: EndpointSettings = Field(default_factory=EndpointSettings)
    teacher: EndpointSettings = Field(default_factory=EndpointSettings)
    embed: EndpointSettings = Field(default_factory=EndpointSettings)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, given: Mapping[str, Any] | None = None) -> Settings:
        """The settings: the `given` values (the resource's: {"home": ..., "student": {"base_url": ...}}) over the
        environment's (the process's by default: the one place it is read) over the defaults. Empty values count
        as unset; paths are resolved against the working directory."""
        env = os.environ if environ is None else environ
        values = _merge(_drop_empty(_values(env_names(env), env)), _drop_empty(given or {}))
        for key in ("config_path", "home"):
            values[key] = Path(values.get(key) or cls.model_fields[key].default).resolve()
        return cls.model_validate(values)

    # -- what the settings give ------------------------------------------------------------------------------
    def registry(self) -> MiraConfig:
        return load_config(self.config_path)

    def store(self, pipeline: PipelineSettings | None = None) -> Store:
        """The store under `home`, or under `store_url` (else its alias `tables_url`) when set, with the registry's
        DuckDB limits and reply publication window (pipeline.reply_publish_seconds)."""
        from mira_dagster.io.store import Store

        p = pipeline or PipelineSettings()
        return Store(
            self.home,
            store_url=self.store_url or self.tables_url,
            memory_limit=p.duckdb_memory_limit,
            temp_directory=p.duckdb_temp_directory,
            s3_endpoint_url=self.s3_endpoint_url,
            reply_publish_seconds=p.reply_publish_seconds,
        )

    def endpoint(self, role: Role, unit: ScorerUnit) -> Endpoint | None:
        """A role's endpoint for a scorer unit; None: the offline stand-in."""
        from mira_dagster.io.scorers import default_model

        return getattr(self, role).endpoint(unit.key, default_model(role, unit))

    def embedder(self) -> Embedder:
        """The embeddings endpoint's, or the offline hashed TF-IDF."""
        from mira_dagster.io.embedding_client import make_embedder

        e = self.embed
        return make_embedder(e.base_url, e.model, e.api_key.get_secret_value() if e.api_key else None)


class Deployment(BaseModel):
    """The deployment's settings (DEPLOY_VARS): the instance's PostgreSQL and the executor of refresh_sources."""

    model_config = ConfigDict(frozen=True)

    dagster_pg_url: SecretStr | None = None  # postgresql://user:password@host:5432/db
    executor: str = "multiprocess"
    celery_broker: SecretStr | None = None  # redis://[:password@]host:6379/0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Deployment:
        env = os.environ if environ is None else environ
        values = {key: env[var] for key, var in DEPLOY_VARS.items() if env.get(var)}
        deploy = cls.model_validate(values)
        if deploy.executor not in EXECUTORS:
            raise ConfigError(f"MIRA_EXECUTOR={deploy.executor}: one of {', '.join(EXECUTORS)}")
        if deploy.executor == "celery" and deploy.celery_broker is None:
            raise ConfigError("MIRA_EXECUTOR=celery needs MIRA_CELERY_BROKER (e.g. redis://127.0.0.1:6379/0)")
        return deploy

    def pg_url(self) -> str | None:
        """The instance's SQLAlchemy URL with the psycopg2 driver named: dagster-postgres installs psycopg2, and
        SQLAlchemy 2.1 takes a bare postgresql:// (or postgres://) for psycopg 3."""
        if self.dagster_pg_url is None:
            return None
        url = self.dagster_pg_url.get_secret_value()
        scheme, sep, rest = url.partition("://")
        return f"postgresql+psycopg2://{rest}" if sep and scheme in ("postgresql", "postgres") else url


_SECRET_NAME = re.compile(r"(?i)(KEY|SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|_PG_URL$|_BROKER$)")


def secret_values(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """Every secret this process could leak: the starred settings above and any variable whose name says it holds a
    key, token or password (AWS_SECRET_ACCESS_KEY, HF_TOKEN, ...), for redacting text written about the input."""
    env = os.environ if environ is None else environ
    return tuple(sorted({v for k, v in env.items() if v and _SECRET_NAME.search(k) and len(v) >= 4}))


def _values(names: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    return {k: _values(v, env) if isinstance(v, Mapping) else env[v] for k, v in names.items()}


def _merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        out[key] = (
            _merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) else value
        )
    return out


def _drop_empty(values: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            value = _drop_empty(value)
        if value not in (None, "", {}):
            out[key] = value
    return out


# -- a project's .env (written by `mira init` / `make setup`) ---------------------------------------------------
PROJECT_ENV = ".env"


def load_project_env(folder: Path, home_given: bool = False) -> Path | None:
    """The `.env` of the project in `folder` into this process's environment, so `mira` uses the project's registry
    and instance as Dagster's CLI does (which loads the same file). A variable the shell exports wins; the file's
    DAGSTER_HOME is skipped when MIRA_HOME is exported or `--home` given (that home keeps its own instance).
    Returns the file, or None when the folder has none."""
    path = folder / PROJECT_ENV
    if not path.is_file():
        return None
    from dotenv import dotenv_values

    for key, value in dotenv_values(path).items():
        if not value or os.environ.get(key):
            continue
        if key == "DAGSTER_HOME" and (home_given or os.environ.get("MIRA_HOME")):
            continue
        os.environ[key] = value
    return path


# -- for the command line (outside Dagster runs): the environment's settings ------------------------------------
def mira_home() -> Path:
    """Where tables, caches and exports live: MIRA_HOME, default `.mira/` in the working directory."""
    return Settings.from_env().home


def load_registry(path: Path | str | None = None) -> MiraConfig:
    """The registry at `path`, else the configured one (MIRA_CONFIG, else the shipped anchors/groups.yaml)."""
    return load_config(Path(path).resolve()) if path else Settings.from_env().registry()


def open_store(home: Path | None = None) -> Store:
    """The store under `home` (default MIRA_HOME), or where MIRA_STORE_URL (alias MIRA_TABLES_URL) says."""
    s = Settings.from_env()
    return s.model_copy(update={"home": Path(home)} if home else {}).store()
