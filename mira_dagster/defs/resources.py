"""The resource: the registry, MIRA_HOME and the store, and how to reach the scorers and the embeddings.

Every setting and its source is listed in mira_dagster/settings.py; this is its Dagster face. `mira_resource()` (the
code location's) takes each variable that is set as `dg.EnvVar`, so Dagster resolves it when a run starts and the
run config and the UI show the variable's name, never its value; a field left unset falls back to the environment at
run time (settings.Settings.from_env), so `MiraResource(home=...)` in tests and notebooks sees the same endpoints.
"""

from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from mira_dagster.core.config import MiraConfig
from mira_dagster.core.embeddings import Embedder
from mira_dagster.core.rubric import Rubric, RubricError, discovered_anchor_name
from mira_dagster.core.scoring import ChatBackend, Role, ScorerSpec
from mira_dagster.io.anchors import load_configured_rubric, load_rubric
from mira_dagster.io.endpoint import Endpoint
from mira_dagster.io.registry import load_config
from mira_dagster.io.scorers import make_judge, make_scorer
from mira_dagster.io.store import Store
from mira_dagster.settings import ENDPOINT_PREFIXES, PATH_VARS, Settings, env_names

# path -> (what the registry and its watched folders looked like when loaded, the config)
_loaded: dict[Path, tuple[tuple[float, ...], MiraConfig]] = {}


def _stamp(path: Path, cfg: MiraConfig) -> tuple[float, ...]:
    """Changes when the registry file or the listing of one of its watched folders changes (stat calls only)."""
    paths = [path, *cfg.watch.values()]
    return tuple(p.stat().st_mtime if p.exists() else 0.0 for p in paths)


def _config(path: Path) -> MiraConfig:
    """The registry at `path`, loaded again only when it or a watched folder's listing changed."""
    hit = _loaded.get(path)
    if hit is None or hit[0] != _stamp(path, hit[1]):
        cfg = load_config(path)
        _loaded[path] = (_stamp(path, cfg), cfg)
    return _loaded[path][1]


class EndpointConfig(dg.Config):
    """An OpenAI-compatible endpoint: the student's, the teacher's or the embeddings' (settings.EndpointSettings).
    Unset fields come from the environment (MIRA_<ROLE>_BASE_URL, _MODEL, _API_KEY) when the run starts."""

    base_url: str | None = Field(None, description="base URL(s), comma-separated; unset: the offline stand-in")
    model: str | None = Field(None, description="model name; unset: the unit's student_model / the default teacher")
    api_key: str | None = Field(None, description="the key: give it as dg.EnvVar, never as a value")
    unit_base_urls: dict[str, str] = Field(default_factory=dict, description="<UNIT> -> base URL(s)")
    unit_models: dict[str, str] = Field(default_factory=dict, description="<UNIT> -> model name")


class MiraResource(dg.ConfigurableResource):
    """Registry path, MIRA_HOME, the tables' place and the endpoints (the table of mira_dagster/settings.py). Unset
    fields come from the environment when used; keys never enter run config, logs or metadata."""

    config_path: str | None = Field(None, description="the source registry YAML (MIRA_CONFIG)")
    home: str | None = Field(None, description="tables, reply cache, exports, rubrics (MIRA_HOME)")
    store_url: str | None = Field(
        None,
        description="s3://bucket/prefix or a shared folder: tables, reply cache, exports, rubrics (MIRA_STORE_URL)",
    )
    tables_url: str | None = Field(None, description="an alias of store_url (MIRA_TABLES_URL)")
    s3_endpoint_url: str | None = Field(None, description="an S3-compatible server (MIRA_S3_ENDPOINT_URL)")
    student: EndpointConfig = Field(default_factory=EndpointConfig, description="MIRA_STUDENT_*")
    teacher: EndpointConfig = Field(default_factory=EndpointConfig, description="MIRA_TEACHER_*")
    embed: EndpointConfig = Field(default_factory=EndpointConfig, description="MIRA_EMBED_*")

    def settings(self) -> Settings:
        """This resource's values over the environment's over the defaults."""
        given: dict[str, Any] = {key: _resolved(getattr(self, key)) for key in PATH_VARS}
        for role in ENDPOINT_PREFIXES:
            given[role] = {k: _resolved(v) for k, v in getattr(self, role).model_dump().items()}
        return Settings.from_env(given=given)

    def config(self) -> MiraConfig:
        # reloaded when the registry or a watched folder's listing changes
        return _config(self.settings().config_path)

    def store(self) -> Store:
        return self.settings().store(self.config().pipeline)  # DuckDB's memory limit and spill folder

    def endpoint(self, role: Role, unit_key: str) -> Endpoint | None:
        """A role's endpoint for a scorer unit (MIRA_<ROLE>_BASE_URL_<UNIT>, else the role's); None: offline."""
        return self.settings().endpoint(role, self.config().scorer_units()[unit_key])

    def embedder(self) -> Embedder:
        """The embeddings endpoint (MIRA_EMBED_*), or the offline hashed TF-IDF."""
        return self.settings().embedder()

    def rubric(self, unit_key: str) -> Rubric:
        """A scorer unit's rubric: a group's configured anchors (the released student's rubric) or, without them
        (and for the global and per-source scopes, which have no released rubric), the discovered one."""
        cfg = self.config()
        unit = cfg.scorer_units()[unit_key]
        store = self.store()
        if unit.anchors is not None and cfg.pipeline.rubric_source == "configured":
            return load_configured_rubric(unit, store.fetch_file)
        name = discovered_anchor_name(unit_key, unit.scope)
        path = store.fetch_file(name)  # with a store URL: a fresh local copy
        if path is None:
            raise RubricError(
                f"scorer unit {unit_key!r} ({unit.scope} scope) has no rubric yet: materialise "
                f"anchor_rubric[{unit_key}] ({store.location(name)})"
            )
        return load_rubric(path, unit_key, unit.family)

    def scorer(self, role: Role, unit_key: str, rubric: Rubric | None = None) -> tuple[ScorerSpec, ChatBackend, str]:
        """A scorer unit's scorer for a role; pass the rubric when the caller has already loaded it."""
        cfg = self.config()
        unit = cfg.scorer_units()[unit_key]
        endpoint = self.settings().endpoint(role, unit)
        return make_scorer(role, unit, cfg, rubric or self.rubric(unit_key), endpoint)

    def judge(self, unit_key: str) -> tuple[ScorerSpec, ChatBackend, str]:
        """A scorer unit's teacher in free-form judging mode (rubric discovery)."""
        cfg = self.config()
        unit = cfg.scorer_units()[unit_key]
        return make_judge(unit, cfg, self.settings().endpoint("teacher", unit))


def _resolved(value: Any) -> Any:
    """A field's value; a dg.EnvVar not resolved by Dagster (the resource used outside a run) read now."""
    if isinstance(value, dg.EnvVar):
        return value.get_value()
    if isinstance(value, dict):
        return {k: _resolved(v) for k, v in value.items()}
    return value


def mira_resource(**values: Any) -> MiraResource:
    """The code location's resource: every variable of the settings table that is set becomes a dg.EnvVar (its
    name only is read here; Dagster reads the value when a run starts), then `values` on top."""
    names = env_names()
    wired: dict[str, Any] = {key: dg.EnvVar(names[key]) for key in PATH_VARS if key in names}
    for role in ENDPOINT_PREFIXES:
        if role in names:
            wired[role] = EndpointConfig(**_env_vars(names[role]))
    return MiraResource(**{**wired, **values})


def _env_vars(names: dict[str, Any]) -> dict[str, Any]:
    return {k: _env_vars(v) if isinstance(v, dict) else dg.EnvVar(v) for k, v in names.items()}
