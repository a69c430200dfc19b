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
        return Store(Path(self.home).resolve() if self.home else mira_home())

    def rubric(self, group_id: str) -> Rubric:
        """The configured anchors (the released student's rubric) or, without them, the discovered one."""
        cfg = self.config()
        group = cfg.groups[group_id]
        if group.anchors is not None and cfg.pipeline.rubric_source == "configured":
            return load_rubric(group.anchors, group_id, group.family)
        path = discovered_anchor_path(self.store().home, group_id)
        if not path.exists():
            raise RubricError(f"group {group_id!r} has no rubric yet: materialise anchor_rubric[{group_id}] ({path})")
        return load_rubric(path, group_id, group.family)

    def scorer(self, role: Role, group_id: str, rubric: Rubric | None = None) -> tuple[ScorerSpec, ChatBackend, str]:
        """The group's scorer for a role; pass the rubric when the caller has already loaded it."""
        return make_scorer(role, group_id, self.config(), rubric or self.rubric(group_id))
