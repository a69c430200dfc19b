"""Rubric (anchors) files: read into core/rubric.Rubric, and a discovered rubric written atomically."""

from __future__ import annotations

from pathlib import Path

from mira_dagster.core.rubric import (
    AnchorDim,
    Rubric,
    RubricError,
    RubricFamily,
    anchor_file_text,
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
