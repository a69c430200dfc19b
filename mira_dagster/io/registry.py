"""The source registry file (`anchors/groups.yaml`) read into core/config.MiraConfig: YAML parsed and validated,
relative paths made absolute against the file, and watched folders listed into sources."""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml

from mira_dagster.core.config import DEFAULT_CONFIG, SAFE_NAME, ConfigError, MiraConfig, SourceConfig
from mira_dagster.io.readers import is_supported, regular_file_problem, split_name


def load_config(path: Path | str | None = None) -> MiraConfig:
    """Load and validate a registry (default: the shipped anchors/groups.yaml; the configured one, MIRA_CONFIG, is
    mira_dagster.settings.load_registry()); relative paths inside it are relative to the file."""
    path = Path(path or DEFAULT_CONFIG).resolve()
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with 'groups' and 'sources'")
    raw = {k: v for k, v in raw.items()}
    raw["groups"] = {str(k): v for k, v in (raw.get("groups") or {}).items()}
    try:
        cfg = MiraConfig.model_validate({**raw, "path": path})
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    base = path.parent
    for group in cfg.groups.values():
        if group.anchors is not None:
            group.anchors = (base / group.anchors).resolve()
    for src in cfg.sources.values():  # absolute, links kept as named: readers.expand_files checks where they lead
        src.files = [Path(os.path.abspath(base / f)) for f in src.files]
    cfg.allowed_roots = [_absolute(base / r) for r in cfg.allowed_roots]
    for group in cfg.groups.values():
        for attr in ("system_template", "user_template"):
            if getattr(group, attr) is not None:
                setattr(group, attr, _absolute(base / getattr(group, attr)))
    for attr in ("system_template", "user_template"):
        if getattr(cfg.pipeline, attr) is not None:
            setattr(cfg.pipeline, attr, _absolute(base / getattr(cfg.pipeline, attr)))
    if cfg.pipeline.reliability_mask_file is not None:
        cfg.pipeline.reliability_mask_file = _absolute(base / cfg.pipeline.reliability_mask_file)
    for group_id, folder in cfg.watch.items():
        if group_id not in cfg.groups:
            raise ConfigError(f"{path}: watch: unknown group {group_id!r}")
        cfg.watch[group_id] = (base / folder).resolve()
        _add_watched_sources(cfg, group_id, cfg.watch[group_id])
    return cfg


def _absolute(path: Path) -> Path:
    """The path made absolute; symlinks resolved where that works (a loop or a glob pattern stays as written)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return Path(os.path.abspath(path))


def watched_source_name(file: Path) -> str:
    """`New-Proofs.jsonl.gz` -> `new_proofs`: the name without its data and compression suffixes."""
    return re.sub(r"[^a-z0-9_]", "_", split_name(file.name)[0].lower())


def _add_watched_sources(cfg: MiraConfig, group_id: str, folder: Path) -> None:
    """Each supported file directly inside the folder becomes a source of the group, unless its name is unusable
    or taken. Only regular files: a symlink is followed only to a file inside the folder, and an entry that cannot
    be looked at (a loop, no permission) is skipped with its reason, never breaking the definitions."""
    if not folder.is_dir():
        cfg.rejected_files.append(f"{folder}: watched folder of group {group_id!r} does not exist")
        return
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        cfg.rejected_files.append(f"{folder}: watched folder of group {group_id!r} cannot be listed: {exc.strerror}")
        return
    for entry in entries:
        file = Path(entry.path)
        if entry.name.startswith(".") or not is_supported(file):
            continue  # hidden files and other formats are not sources, and not worth a word
        problem = _watched_entry_problem(entry, folder)
        name = watched_source_name(file)
        if problem:
            cfg.rejected_files.append(f"{file}: {problem}")
        elif not SAFE_NAME.match(name):
            cfg.rejected_files.append(f"{file}: source name {name!r} must match {SAFE_NAME.pattern}")
        elif name in cfg.sources:
            cfg.rejected_files.append(f"{file}: source {name!r} already exists ({cfg.sources[name].files[0]})")
        else:
            family = cfg.groups[group_id].family
            cfg.sources[name] = SourceConfig(group=group_id, format=family, files=[file.resolve()])


def _watched_entry_problem(entry: os.DirEntry[str], folder: Path) -> str | None:
    """Why a watched folder's entry cannot be a source, or None: the check every file read passes
    (readers.regular_file_problem, links kept inside the folder), and readable."""
    problem = regular_file_problem(Path(entry.path), (), "the watched folder", base=folder)
    if problem is None and not os.access(entry.path, os.R_OK):
        return "not readable"
    return problem
