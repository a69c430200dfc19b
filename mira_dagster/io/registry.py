"""The source registry file (`anchors/groups.yaml`) read into core/config.MiraConfig: YAML parsed and validated,
relative paths made absolute against the file, and watched folders listed into sources."""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from mira_dagster.core.config import DEFAULT_CONFIG, SAFE_NAME, ConfigError, MiraConfig, SourceConfig
from mira_dagster.io.readers import is_supported, regular_file_problem, split_name

# A registry is small text: refuse what is not, before parsing it (a 2,500-source registry is a few tens of MB).
MAX_REGISTRY_BYTES = 256 * 1024 * 1024
# YAML aliases may share a value, never multiply it: the value as expanded may hold at most this many nodes per node
# written (a "billion laughs" file of 1 KB expands to 10^9), beyond a floor for small files full of merge keys.
MAX_EXPANSION, EXPANSION_FLOOR = 10, 100_000
MAX_DEPTH = 64
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser: the same safe constructors, ~7x faster


def read_yaml(path: Path, what: str = "registry") -> Any:
    """A YAML file parsed safely and within limits: size, nesting, alias expansion. Refusals name the file."""
    size = path.stat().st_size
    if size > MAX_REGISTRY_BYTES:
        raise ConfigError(f"{path}: {size:,} bytes, over the {MAX_REGISTRY_BYTES:,}-byte limit for a {what}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    try:
        value = yaml.load(text, Loader=_Loader)  # noqa: S506 (a safe loader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {_first_line(str(exc))}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply") from None
    written: list[int] = [0]
    expanded = _expanded_size(path, value, {}, written, 0)
    if expanded > max(EXPANSION_FLOOR, MAX_EXPANSION * written[0]):
        raise ConfigError(
            f"{path}: its aliases expand {written[0]:,} values into more than {expanded:,} "
            f"(limit {MAX_EXPANSION}x): refused"
        )
    return value


def _first_line(text: str) -> str:
    return " ".join(text.split())[:300]


def _expanded_size(path: Path, value: Any, memo: dict[int, int], written: list[int], depth: int) -> int:
    """How many values `value` holds once every alias is expanded, counting each shared container once in
    `written` (the file as written); linear in what was written, whatever the expansion."""
    if not isinstance(value, dict | list):
        written[0] += 1
        return 1
    if depth > MAX_DEPTH:
        raise ConfigError(f"{path}: nested more than {MAX_DEPTH} levels deep (or an alias that contains itself)")
    key = id(value)
    if key in memo:
        return memo[key]
    written[0] += 1
    children = [*value.keys(), *value.values()] if isinstance(value, dict) else value
    memo[key] = 1 + sum(_expanded_size(path, child, memo, written, depth + 1) for child in children)
    return memo[key]


def validation_message(exc: ValidationError) -> str:
    """A validation error as the path of each bad value and what is wrong with it, never the value itself (which
    may be huge once aliases are expanded, or a secret)."""
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    lines = [f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {_first_line(e['msg'])}" for e in errors[:5]]
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(lines) + more


def load_config(path: Path | str | None = None) -> MiraConfig:
    """Load and validate a registry (default: the shipped anchors/groups.yaml; the configured one, MIRA_CONFIG, is
    mira_dagster.settings.load_registry()); relative paths inside it are relative to the file."""
    path = Path(path or DEFAULT_CONFIG).resolve()
    if not path.is_file():
        if path == DEFAULT_CONFIG.resolve():  # an installed package: the checkout's sample registry is not there
            raise ConfigError(
                "no source registry: MIRA_CONFIG is unset and the working folder has no .env naming one; "
                "`mira init DIR` writes a project (then run the commands in DIR), or set MIRA_CONFIG"
            )
        raise ConfigError(f"config file not found: {path}")
    raw = read_yaml(path) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with 'groups' and 'sources'")
    raw = {k: v for k, v in raw.items()}
    if not isinstance(raw.get("groups") or {}, dict):
        raise ConfigError(f"{path}: groups: expected a mapping of group ids")
    raw["groups"] = {str(k): v for k, v in (raw.get("groups") or {}).items()}
    try:
        cfg = MiraConfig.model_validate({**raw, "path": path})
    except ValidationError as exc:
        raise ConfigError(f"{path}: {validation_message(exc)}") from None
    except ValueError as exc:
        raise ConfigError(f"{path}: {_first_line(str(exc))}") from None
    base = path.parent
    for group in cfg.groups.values():
        if group.anchors is not None:
            group.anchors = _absolute(group.anchors, base)
    for src in cfg.sources.values():  # absolute, links kept as named: readers.expand_files checks where they lead
        src.files = [_absolute(f, base) for f in src.files]
    cfg.allowed_roots = [_absolute(r, base) for r in cfg.allowed_roots]
    for group in cfg.groups.values():
        for attr in ("system_template", "user_template"):
            if getattr(group, attr) is not None:
                setattr(group, attr, _absolute(getattr(group, attr), base))
    for attr in ("system_template", "user_template"):
        if getattr(cfg.pipeline, attr) is not None:
            setattr(cfg.pipeline, attr, _absolute(getattr(cfg.pipeline, attr), base))
    if cfg.pipeline.reliability_mask_file is not None:
        cfg.pipeline.reliability_mask_file = _absolute(cfg.pipeline.reliability_mask_file, base)
    for group_id, folder in cfg.watch.items():
        if group_id not in cfg.groups:
            raise ConfigError(f"{path}: watch: unknown group {group_id!r}")
        cfg.watch[group_id] = (base / folder).resolve()
        _add_watched_sources(cfg, group_id, cfg.watch[group_id])
    return cfg


def _absolute(path: Path, base: Path | None = None) -> Path:
    """The path made absolute (against `base`) and normalised, as written: a symlink is not resolved here (resolving
    every file of a large registry costs a system call per path component); the readers decide where a link may
    lead. String operations and one Path: a registry may list hundreds of thousands of files."""
    return Path(os.path.normpath(os.path.join(base or os.getcwd(), path)))


def watched_source_name(file: Path) -> str:
    """`New-Proofs.jsonl.gz` -> `new_proofs`: the name without its data and compression suffixes. A name that cannot
    be a source name so (`数据.jsonl`, `2024.jsonl`, one over 64 characters) gets a derived one: its Latin letters
    transliterated (`Ünïcode-2.jsonl` -> `unicode_2`) or `f_`, and 8 hex digits of the file name's hash."""
    stem = split_name(file.name)[0]
    name = re.sub(r"[^a-z0-9_]", "_", stem.lower())
    if SAFE_NAME.match(name):
        return name
    folded = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode().lower()
    base = re.sub(r"_+", "_", re.sub(r"[^a-z0-9_]", "_", folded)).strip("_")
    if not base[:1].isalpha():
        base = f"f_{base}".rstrip("_")
    digest = hashlib.sha256(file.name.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{base[:54]}_{digest}"


def _add_watched_sources(cfg: MiraConfig, group_id: str, folder: Path) -> None:
    """Each supported file directly inside the folder becomes a source of the group. Only regular files: a symlink
    is followed only to a file inside the folder, and an entry that cannot be looked at (a loop, no permission) is
    listed in `rejected_files` with its reason, never breaking the definitions; so are two files whose names map to
    one source name (both named: rename one) and a file whose name a registry source already has. `mira run` prints
    `rejected_files` and exits non-zero."""
    if not folder.is_dir():
        cfg.rejected_files.append(f"{folder}: watched folder of group {group_id!r} does not exist")
        return
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        cfg.rejected_files.append(f"{folder}: watched folder of group {group_id!r} cannot be listed: {exc.strerror}")
        return
    by_name: dict[str, list[Path]] = {}
    for entry in entries:
        file = Path(entry.path)
        if entry.name.startswith(".") or not is_supported(file):
            continue  # hidden files and other formats are not sources, and not worth a word
        if problem := _watched_entry_problem(entry, folder):
            cfg.rejected_files.append(f"{file}: {problem}")
        else:
            by_name.setdefault(watched_source_name(file), []).append(file)
    for name, files in by_name.items():
        if len(files) > 1:
            names = ", ".join(repr(f.name) for f in files)
            cfg.rejected_files += [f"{f}: {names} all map to source name {name!r}: rename all but one" for f in files]
        elif name in cfg.sources:
            cfg.rejected_files.append(f"{files[0]}: source {name!r} already exists ({cfg.sources[name].files[0]})")
        else:
            family = cfg.groups[group_id].family
            cfg.sources[name] = SourceConfig(group=group_id, format=family, files=[_absolute(files[0])])


def _watched_entry_problem(entry: os.DirEntry[str], folder: Path) -> str | None:
    """Why a watched folder's entry cannot be a source, or None: the check every file read passes
    (readers.regular_file_problem, links kept inside the folder), and readable."""
    problem = regular_file_problem(Path(entry.path), (), "the watched folder", base=folder)
    if problem is None and not os.access(entry.path, os.R_OK):
        return "not readable"
    return problem
