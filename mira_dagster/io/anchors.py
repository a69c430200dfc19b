"""Rubric (anchors) files: read into core/rubric.Rubric, and a discovered rubric written atomically."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mira_dagster.core.config import ScorerUnit
from mira_dagster.core.rubric import (
    AnchorDim,
    Rubric,
    RubricError,
    RubricFamily,
    anchor_file_text,
    generated_anchor_name,
    generated_for,
    parse_rubric,
)


def load_rubric(path: Path, group: str, family: RubricFamily) -> Rubric:
    """Read an anchors file (see core/rubric.parse_rubric); a missing file is a RubricError naming it."""
    if not path.is_file():
        raise RubricError(f"anchor file not found for group {group!r}: {path}")
    return parse_rubric(path.read_bytes(), str(path), group, family)


def write_anchor_file(path: Path, dims: list[AnchorDim]) -> None:
    """One slot a line, written atomically (a half-written rubric must never be read)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(anchor_file_text(dims), encoding="utf-8")
    tmp.replace(path)


def load_configured_rubric(unit: ScorerUnit, fetch: Callable[[str], Path | None]) -> Rubric:
    """A group's configured anchors file as its scorers use it: as it is when it has calibration references; else
    the generated copy with references from the teacher's judgments (anchor_rubric writes it; `fetch` finds it in
    the store, None when absent), when it was made from this very file; else the file as it is (no references)."""
    assert unit.anchors is not None
    rubric = load_rubric(unit.anchors, unit.key, unit.family)
    if rubric.n_references():
        return rubric
    path = fetch(generated_anchor_name(unit.key, unit.scope))
    if path is None:
        return rubric
    generated = load_rubric(path, unit.key, unit.family)
    return generated if generated_for(generated, rubric) else rubric
