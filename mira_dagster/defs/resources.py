"""The one resource: where the registry and MIRA_HOME are, and how to reach the scorers."""

from pathlib import Path

import dagster as dg

from mira_dagster.core.config import MiraConfig, config_path, load_config, mira_home
from mira_dagster.core.rubric import Rubric, RubricError, discovered_anchor_path, load_rubric
from mira_dagster.core.scorers import make_scorer
from mira_dagster.core.scoring import ChatBackend, Role, ScorerSpec
from mira_dagster.core.store import Store

# path -> (what the registry and its watched folders looked like when loaded, the config)
_loaded: dict[Path, tuple[tuple[float, ...], MiraConfig]] = {}


def _stamp(path: Path, cfg: MiraConfig) -> tuple[float, ...]:
    """Changes when the registry file or the listing of one of its watched folders changes (stat calls only)."""
    paths = [path, *cfg.watch.values()]
    return tuple(p.stat().st_mtime if p.exists() else 0.0 for p in paths)


def _config(path: Path) -> MiraConfig:
    hit = _loaded.get(path)
    if hit is None or hit[0] != _stamp(path, hit[1]):
        cfg = load_config(path)
        _loaded[path] = (_stamp(path, cfg), cfg)
    return _loaded[path][1]


class MiraResource(dg.ConfigurableResource):
    """Registry path and MIRA_HOME. Endpoints and keys are read from the environment at run time,
    so they never enter run config, logs or metadata."""

    config_path: str | None = None
    home: str | None = None

    def config(self) -> MiraConfig:
        path = Path(self.config_path).resolve() if self.config_path else config_path()
        # reloaded when the registry or a watched folder's listing changes
        return _config(path)

    def store(self) -> Store:
        s = self.config().pipeline  # DuckDB's memory limit and spill folder
        home = Path(self.home).resolve() if self.home else mira_home()
        return Store(home, memory_limit=s.duckdb_memory_limit, temp_directory=s.duckdb_temp_directory)

    def rubric(self, unit_key: str) -> Rubric:
        """A scorer unit's rubric: a group's configured anchors (the released student's rubric) or, without them
        (and for the global and per-source scopes, which have no released rubric), the discovered one."""
        cfg = self.config()
        unit = cfg.scorer_units()[unit_key]
        if unit.anchors is not None and cfg.pipeline.rubric_source == "configured":
            return load_rubric(unit.anchors, unit_key, unit.family)
        path = discovered_anchor_path(self.store().home, unit_key, unit.scope)
        if not path.exists():
            raise RubricError(
                f"scorer unit {unit_key!r} ({unit.scope} scope) has no rubric yet: materialise "
                f"anchor_rubric[{unit_key}] ({path})"
            )
        return load_rubric(path, unit_key, unit.family)

    def scorer(self, role: Role, unit_key: str, rubric: Rubric | None = None) -> tuple[ScorerSpec, ChatBackend, str]:
        """A scorer unit's scorer for a role; pass the rubric when the caller has already loaded it."""
        cfg = self.config()
        return make_scorer(role, cfg.scorer_units()[unit_key], cfg, rubric or self.rubric(unit_key))
