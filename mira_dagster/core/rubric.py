"""A group's anchor rubric: 15 slots, each with a name, cluster size, facet and calibration references."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from mira_dagster.core.config import Family

N_SLOTS = 15

Facet = Literal["think", "combined", "qa", "agent"]

# What a slot looks at. The seed rubric of qa_with_think has 5 slots on the thinking trace, 5 on thinking and
# answer together and 5 on the question/answer pair; a discovered rubric takes each cluster's majority facet.
FAMILY_FACETS: dict[Family, dict[Facet, int]] = {
    "qa_with_think": {"think": 5, "combined": 5, "qa": 5},
    "qa": {"qa": 15},
    "agent": {"agent": 15},
}


class CalibrationReference(BaseModel):
    """A canonical (score, rationale) example near a cluster centroid, shown to the scorer."""

    model_config = ConfigDict(extra="allow")

    dimension: str
    score: float = Field(ge=0, le=10)
    rationale: str
    excerpt: str = ""


class AnchorDim(BaseModel):
    model_config = ConfigDict(extra="forbid")

    slot: int = Field(ge=1, le=N_SLOTS)
    name: str = Field(min_length=1)
    cluster_size: int = Field(ge=0)
    facet: Facet
    calibration_references: list[CalibrationReference] = []


class Rubric(BaseModel):
    group: str
    family: Family
    dims: list[AnchorDim]
    file_sha256: str

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.dims]

    def references(self) -> list[CalibrationReference]:
        """The group's calibration references in slot order (at most 12 are shown, per the cards)."""
        return [r for d in self.dims for r in d.calibration_references][:12]


class RubricError(ValueError):
    pass


def load_rubric(path: Path, group: str, family: Family) -> Rubric:
    if not path.is_file():
        raise RubricError(f"anchor file not found for group {group!r}: {path}")
    data = path.read_bytes()
    dims: list[AnchorDim] = []
    for lineno, line in enumerate(data.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            dims.append(AnchorDim.model_validate(json.loads(line)))
        except (json.JSONDecodeError, ValueError) as exc:
            raise RubricError(f"{path}:{lineno}: {exc}") from exc
    dims.sort(key=lambda d: d.slot)
    if [d.slot for d in dims] != list(range(1, N_SLOTS + 1)):
        raise RubricError(f"{path}: expected slots 1..{N_SLOTS} once each, got {[d.slot for d in dims]}")
    allowed = FAMILY_FACETS[family]
    if bad := [d.slot for d in dims if d.facet not in allowed]:
        raise RubricError(f"{path}: slots {bad} have facets outside {sorted(allowed)} for family {family}")
    return Rubric(group=group, family=family, dims=dims, file_sha256=hashlib.sha256(data).hexdigest())


def discovered_anchor_path(home: Path, group: str) -> Path:
    return Path(home) / "anchors" / f"group_{group}_dim_anchors.jsonl"


def write_anchor_file(path: Path, dims: list[AnchorDim]) -> None:
    """One slot a line, written atomically (a half-written rubric must never be read)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(d.model_dump_json() + "\n" for d in sorted(dims, key=lambda d: d.slot)), encoding="utf-8")
    tmp.replace(path)
