"""A group's anchor rubric: 15 slots, each with a name, cluster size, facet and calibration references.

Anchors files are read as others write them (the upstream project's files, hand-edited ones, ours): one JSON object
a line, each with at least `slot` (1-15, or "A1"-"A15") and `name`. Everything else is optional and every key we do
not know is kept on the model (`model_extra`), never refused. A file is refused only when it is really unusable:
invalid JSON, a line that is not an object, a slot without a name (or with a line break in it), a slot outside 1-15 or
twice, not exactly the 15 slots, calibration references that are neither strings nor objects, or a facet the family
does not have. Every error is one line: file:line, which slot, what is wrong.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from mira_dagster.core.config import Family

if TYPE_CHECKING:
    from mira_dagster.core.config import MiraConfig, ScorerUnit

# A rubric's family: a prompt family, or "mixed" for one rubric over several (scorer_scope: global).
RubricFamily = Family | Literal["mixed"]

N_SLOTS = 15
# The cards: "the system prompt embeds the top-12 anchor calibration references".
N_SHOWN_REFERENCES = 12

Facet = Literal["think", "combined", "qa", "agent"]

# What a slot looks at. The seed rubric of qa_with_think has 5 slots on the thinking trace, 5 on thinking and
# answer together and 5 on the question/answer pair; a discovered rubric takes each cluster's majority facet.
FAMILY_FACETS: dict[RubricFamily, dict[Facet, int]] = {
    "qa_with_think": {"think": 5, "combined": 5, "qa": 5},
    "qa": {"qa": 15},
    "agent": {"agent": 15},
    # one rubric over every family: any facet, as many slots as discovery gives each
    "mixed": {"think": 0, "combined": 0, "qa": 0, "agent": 0},
}

# A slot without a facet: the family's only facet, or for qa_with_think "combined" (the slot judges the thinking
# trace and the answer together), the one facet that assumes nothing about which part of the record it looks at.
DEFAULT_FACET: dict[RubricFamily, Facet] = {"qa_with_think": "combined", "qa": "qa", "agent": "agent", "mixed": "qa"}

# Facet spellings other files use: the section headings of the free-form judgments (core/discovery.py).
_FACET_ALIASES: dict[str, Facet] = {
    "thinking": "think",
    "think": "think",
    "both": "combined",
    "combined": "combined",
    "answer": "qa",
    "qa": "qa",
    "question and answer": "qa",
    "agent": "agent",
}

# Key names a reference object may use for each part (the first non-empty one wins; every key is kept).
_DIMENSION_KEYS = ("dimension", "dim", "name")
_SCORE_KEYS = ("score",)
_RATIONALE_KEYS = ("rationale", "justification", "reason", "explanation", "text")
_EXAMPLE_KEYS = ("excerpt", "example", "record", "snippet", "sample")


def _one_line(value: Any) -> str:
    return " ".join(str(value).split()) if value is not None else ""


class CalibrationReference(BaseModel):
    """A canonical (score, rationale) example near a cluster centroid, shown to the scorer.

    Written by discovery as {dimension, score, rationale, excerpt, ...}; read from other files as a plain string
    (kept as `text`) or as an object with any keys (`text`, `example`, `justification`, ... are kept as extras and
    rendered, see `line`).
    """

    model_config = ConfigDict(extra="allow")

    dimension: str = ""
    score: float | str | None = None
    rationale: str = ""
    excerpt: str = ""

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"text": value} if isinstance(value, str) else value

    @field_validator("dimension", "rationale", "excerpt", mode="before")
    @classmethod
    def _text(cls, value: Any) -> str:
        return "" if value is None else value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

    @field_validator("score", mode="before")
    @classmethod
    def _score(cls, value: Any) -> Any:
        if isinstance(value, bool) or value is None:
            return None if value is None else str(value)
        if isinstance(value, int | float):
            return float(value)
        try:
            return float(str(value).strip())
        except ValueError:
            return str(value)

    def _first(self, keys: tuple[str, ...]) -> str:
        data = {**self.__dict__, **(self.model_extra or {})}
        return next((text for k in keys if (text := _one_line(data.get(k)))), "")

    def line(self, slot_name: str) -> str:
        """`- <dimension>: <score>/10 — <rationale> (on: "<example>")`, each part only when the reference has it.

        The dimension defaults to the slot's name (not repeated when a string reference starts with it); a numeric
        score is shown as `7/10`, any other as written; the rationale is the first of rationale / justification /
        reason / explanation / text, the example the first of excerpt / example / record / snippet / sample. Line
        breaks inside become spaces (the prompt is read line by line). A discovered reference renders as before.
        """
        dimension = self._first(_DIMENSION_KEYS)
        score = self.score
        score_text = f"{score:g}/10" if isinstance(score, float) else _one_line(score)
        body = " — ".join(p for p in (score_text, self._first(_RATIONALE_KEYS)) if p)
        example = self._first(_EXAMPLE_KEYS)
        tail = f' (on: "{example}")' if example else ""
        if not dimension and body.startswith(slot_name):
            return f"- {body}{tail}"  # a string reference that names its dimension itself
        dimension = dimension or slot_name
        if body:
            return f"- {dimension}: {body}{tail}"
        return f'- {dimension}: "{example}"' if example else f"- {dimension}"


class AnchorDim(BaseModel):
    """One slot. Unknown keys are kept (`model_extra`); `facet` may be missing in a file, `load_rubric` then derives
    it (DEFAULT_FACET) so every slot of a loaded Rubric has one."""

    model_config = ConfigDict(extra="allow")

    slot: int = Field(ge=1, le=N_SLOTS)
    name: str = Field(min_length=1)
    cluster_size: int | None = None
    facet: Facet | None = None
    calibration_references: list[CalibrationReference] = []
    _facet_given: bool = PrivateAttr(default=True)

    @property
    def facet_given(self) -> bool:
        """False when the file had no facet for this slot and the loader derived it."""
        return self._facet_given


class Rubric(BaseModel):
    group: str
    family: RubricFamily
    dims: list[AnchorDim]
    file_sha256: str

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.dims]

    def shown_references(self) -> list[tuple[AnchorDim, CalibrationReference]]:
        """The references the system prompt embeds: at most 12 (the cards' top-12), in slot order.

        Picked round by round: the first reference of every slot in slot order, then the second of every slot, and
        so on, so a slot with many references cannot crowd out the others (with one reference on each of the 12
        largest slots, as discovery writes, these are exactly those 12).
        """
        picked: list[tuple[int, int]] = []
        depth = max((len(d.calibration_references) for d in self.dims), default=0)
        for i in range(depth):
            for n, d in enumerate(self.dims):
                if i < len(d.calibration_references) and len(picked) < N_SHOWN_REFERENCES:
                    picked.append((n, i))
        return [(self.dims[n], self.dims[n].calibration_references[i]) for n, i in sorted(picked)]

    def references(self) -> list[CalibrationReference]:
        """The group's calibration references shown to the scorer (at most 12, per the cards)."""
        return [r for _, r in self.shown_references()]

    def n_references(self) -> int:
        return sum(len(d.calibration_references) for d in self.dims)


class RubricError(ValueError):
    pass


def slot_number(value: Any) -> int | None:
    """A slot as files write it: 4, 4.0, "4" or "A4" (not checked against 1-15)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip().upper().removeprefix("A")
        return int(text) if text.isdigit() else None
    return None


def _parse_slot(raw: Any, where: str, family: RubricFamily) -> AnchorDim:
    """One line's object as a slot, or a one-line RubricError saying what is wrong."""
    if not isinstance(raw, dict):
        raise RubricError(f"{where}: expected a JSON object (one slot a line), got {type(raw).__name__}")
    if "slot" not in raw:
        raise RubricError(f"{where}: no `slot` (each line needs a slot number 1-{N_SLOTS} and a name)")
    slot = slot_number(raw["slot"])
    if slot is None or not 1 <= slot <= N_SLOTS:
        raise RubricError(f"{where}: slot {raw['slot']!r} is not a slot number 1-{N_SLOTS}")
    what = f"{where}: slot {slot}"
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise RubricError(f"{what} has no name (`name` must be a non-empty string)")
    if "\n" in name or "\r" in name:
        raise RubricError(f"{what}: the name {name!r} has a line break (the scorer's reply is one line per slot)")
    data = dict(raw, slot=slot)
    refs = data.get("calibration_references")
    if refs is None:
        data["calibration_references"] = []
    elif not isinstance(refs, list) or not all(isinstance(r, str | dict) for r in refs):
        raise RubricError(f"{what}: calibration_references must be a list of strings or of objects")
    facet = data.get("facet")
    given = facet is not None and facet != ""
    if given:
        alias = _FACET_ALIASES.get(str(facet).strip().lower())
        if alias is None or alias not in FAMILY_FACETS[family]:
            raise RubricError(
                f"{what}: facet {facet!r} is not one of family {family}'s ({', '.join(FAMILY_FACETS[family])})"
            )
        data["facet"] = alias
    else:
        data["facet"] = DEFAULT_FACET[family]
    try:
        dim = AnchorDim.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise RubricError(f"{what}: {field}: {err['msg']}") from exc
    dim._facet_given = given
    return dim


def parse_rubric(data: bytes, where: str, group: str, family: RubricFamily) -> Rubric:
    """An anchors file's bytes (one JSON object a line, blank lines allowed), read leniently; see the module
    docstring. `where` names the file in errors (`<where>:<line>: ...`).

    A slot without `facet` gets DEFAULT_FACET[family]: the family's only facet (qa, agent), and for qa_with_think
    "combined". Facets may also be spelt like the judgments' section headings (thinking, answer, both).
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise RubricError(f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    dims: list[AnchorDim] = []
    seen: dict[int, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        at = f"{where}:{lineno}"
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RubricError(f"{at}: invalid JSON: {exc.msg} (column {exc.colno})") from exc
        dim = _parse_slot(raw, at, family)
        if dim.slot in seen:
            raise RubricError(f"{at}: slot {dim.slot} appears again (first on line {seen[dim.slot]})")
        seen[dim.slot] = lineno
        dims.append(dim)
    if missing := [s for s in range(1, N_SLOTS + 1) if s not in seen]:
        raise RubricError(
            f"{where}: {len(dims)} slots, slot(s) {', '.join(map(str, missing))} missing "
            f"(an anchors file has the {N_SLOTS} slots 1-{N_SLOTS}, one a line)"
        )
    dims.sort(key=lambda d: d.slot)
    return Rubric(group=group, family=family, dims=dims, file_sha256=hashlib.sha256(data).hexdigest())


def anchor_file_text(dims: list[AnchorDim]) -> str:
    """An anchors file's text: one slot a line, in slot order."""
    return "".join(d.model_dump_json() + "\n" for d in sorted(dims, key=lambda d: d.slot))


def released_student_warnings(cfg: MiraConfig, unit: ScorerUnit, rubric: Rubric) -> list[str]:
    """Why a released student's scores may be off, for the scoring steps' log and metadata (empty: nothing).

    A released student is a group's `student_model` trained on the group's configured anchors file (so only a
    group unit has one). It is warned about when its prompt has no calibration reference (the cards' system prompt
    embeds the top-12), and when `rubric_source: discovered` gives it slot names it was never trained on.
    """
    if unit.group is None or not unit.student_model or unit.anchors is None:
        return []
    if cfg.pipeline.rubric_source == "discovered":
        return [
            f"group {unit.group}: the released student {unit.student_model} is given the discovered rubric "
            "(rubric_source: discovered), whose dimension names it was never trained on; its scores may not mean "
            "what the names say"
        ]
    if not rubric.references():
        return [
            f"group {unit.group}: the released student {unit.student_model} is prompted without any calibration "
            f"reference (the cards' system prompt embeds the top-{N_SHOWN_REFERENCES}; {unit.anchors.name} has "
            f"none, and anchor_rubric[{unit.group}] has not generated them from the teacher's judgments yet), so its "
            "scores may be off-scale"
        ]
    return []


def discovered_anchor_name(key: str, scope: str = "group") -> str:
    """A unit's discovered rubric, relative to the store (MIRA_HOME, or the store URL): anchors/
    group_<id>_dim_anchors.jsonl (the cards' name) for a group, global_dim_anchors.jsonl, or
    source_<name>_dim_anchors.jsonl."""
    name = "global" if scope == "global" else f"{scope}_{key}"
    return f"anchors/{name}_dim_anchors.jsonl"


def generated_anchor_name(key: str, scope: str = "group") -> str:
    """A configured rubric with references generated from the teacher's judgments (core/discovery.
    configured_references), relative to the store: anchors/group_<id>_dim_anchors.generated.jsonl, beside the
    discovered rubric and never in place of the shipped file."""
    return discovered_anchor_name(key, scope).removesuffix(".jsonl") + ".generated.jsonl"


def generated_for(generated: Rubric, configured: Rubric) -> bool:
    """Whether a generated file was made from this configured file: the same slot names, and every reference
    records the configured file's sha256 (a configured file edited since makes the generated one stale)."""
    refs = generated.references()
    return (
        generated.names == configured.names
        and bool(refs)
        and all((r.model_extra or {}).get("configured_sha256") == configured.file_sha256 for r in refs)
    )
