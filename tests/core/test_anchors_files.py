"""Anchors files as others write them: extra fields, references as strings or objects, no facet. They load, their
references (at most 12) reach the system prompt, and files that are really unusable fail with one line saying where
and what."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mira_dagster.core.prompts import facet_guide
from mira_dagster.core.rubric import AnchorDim, CalibrationReference, RubricError, released_student_warnings
from mira_dagster.io.anchors import load_rubric, write_anchor_file
from mira_dagster.io.registry import load_config
from mira_dagster.package_data import ANCHORS_DIR
from tests.helpers import system_prompt

FIXTURES = Path(__file__).parents[1] / "fixtures" / "anchors"
UPSTREAM = FIXTURES / "upstream" / "group_2_dim_anchors.jsonl"
STRINGS = FIXTURES / "strings_agent.jsonl"
SHIPPED = ANCHORS_DIR / "group_2_dim_anchors.jsonl"


def ref_lines(prompt: str) -> list[str]:
    """The reference lines of a system prompt; [] when it has no references section (no references)."""
    lines = prompt.splitlines()
    heading = "Calibration references (scored examples that fix the scale):"
    if heading not in lines:
        return []
    start = lines.index(heading) + 1
    return lines[start : lines.index("", start) if "" in lines[start:] else len(lines)]


def test_a_file_with_extra_fields_and_no_facet_loads_and_keeps_everything() -> None:
    rubric = load_rubric(UPSTREAM, "2", "qa_with_think")
    assert [d.slot for d in rubric.dims] == list(range(1, 16))
    first = rubric.dims[0]
    assert first.model_extra == {"cluster_id": 101, "top_names": ["Factual Correctness", "factual correctness"]} | {
        "centroid_norm": 0.93
    }
    # no facet in the file: qa_with_think derives "combined" for every slot, and says it was derived
    assert {d.facet for d in rubric.dims} == {"combined"}
    assert not any(d.facet_given for d in rubric.dims)
    assert rubric.dims[1].cluster_size is None  # missing in the file: left unknown
    refs = first.calibration_references
    assert refs[0].model_extra == {
        "text": "Factual Correctness: 9/10 — every step of the proof checks out (a plain string reference)"
    }
    assert refs[1].score == 4 and refs[1].model_extra == {
        "text": "The final value is stated but never derived.",
        "judge": "kimi-k2.6",
    }
    assert refs[2].dimension == "Factual Correctness" and refs[2].model_extra == {
        "example": "... so x = 7 ... \\boxed{9}",
        "record_id": "r-17",
        "source": "qwq",
    }
    assert rubric.n_references() == 17


def test_at_most_12_references_reach_the_system_prompt() -> None:
    rubric = load_rubric(UPSTREAM, "2", "qa_with_think")
    prompt = system_prompt(rubric, "QA")
    lines = ref_lines(prompt)
    assert len(lines) == 12
    assert "none yet" not in prompt
    # one per slot first: the 12 largest slots each show their first reference, in slot order
    assert [ln.split(":")[0] for ln in lines] == [f"- {n}" for n in rubric.names[:12]]
    assert lines[0] == "- Factual Correctness: 9/10 — every step of the proof checks out (a plain string reference)"
    assert lines[1] == '- Difficulty Appropriateness: 7/10 — rationale for slot 2 with a line break (on: "excerpt 2")'
    assert lines[2] == "- Educational Value: reference string for slot 3"
    assert lines[3] == "- Difficulty Level: 4/10 — object with text only, slot 4"
    assert "never derived" not in prompt and "never shown" not in prompt
    # the user template lists only facets that have slots
    guide = [f"- {', '.join(line.slots)}: {line.text}" for line in facet_guide(rubric)]
    assert guide == [f"- {', '.join(f'A{i}' for i in range(1, 16))}: judge the thinking trace and the answer together"]


def test_string_references_and_slot_tags() -> None:
    rubric = load_rubric(STRINGS, "D", "agent")
    assert {d.facet for d in rubric.dims} == {"agent"}
    lines = ref_lines(system_prompt(rubric, "Agent"))
    assert lines[0] == "- Plan Quality / Reasoning Transparency (Goal Achievement): 9/10 — string reference 1"
    assert len(lines) == 5


def test_references_are_spread_over_slots_round_by_round(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    rows = [
        {"slot": i, "name": f"Dim {i}", "calibration_references": [f"first {i}", {"text": f"second {i}", "score": 5}]}
        for i in range(1, 16)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = ref_lines(system_prompt(load_rubric(path, "g", "qa"), "x"))
    assert lines == [f"- Dim {i}: first {i}" for i in range(1, 13)]
    # few slots with many references: the second round fills up to 12, still in slot order
    rows = [
        {"slot": i, "name": f"Dim {i}", "calibration_references": [f"r{i}.{k}" for k in range(5)] if i <= 3 else []}
        for i in range(1, 16)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = ref_lines(system_prompt(load_rubric(path, "g", "qa"), "x"))
    assert lines == [f"- Dim {i}: r{i}.{k}" for i in (1, 2, 3) for k in range(4)]


def test_discovered_references_render_as_before(tmp_path: Path) -> None:
    refs = [
        CalibrationReference(
            dimension="Dim 1", score=7.5, rationale="clear steps", source_dimension="Clarity", record_id="r1"
        )
    ]
    dims = [
        AnchorDim(
            slot=i,
            name=f"Dim {i}",
            cluster_size=20 - i,
            facet="think" if i <= 5 else "qa",
            calibration_references=refs if i == 1 else [],
        )
        for i in range(1, 16)
    ]
    path = tmp_path / "group_g_dim_anchors.jsonl"
    write_anchor_file(path, dims)
    assert json.loads(path.read_text().splitlines()[0]) == {
        "slot": 1,
        "name": "Dim 1",
        "cluster_size": 19,
        "facet": "think",
        "calibration_references": [
            {
                "dimension": "Dim 1",
                "score": 7.5,
                "rationale": "clear steps",
                "excerpt": "",
                "source_dimension": "Clarity",
                "record_id": "r1",
            }
        ],
    }
    rubric = load_rubric(path, "g", "qa_with_think")
    assert all(d.facet_given for d in rubric.dims)
    assert ref_lines(system_prompt(rubric, "x")) == ["- Dim 1: 7.5/10 — clear steps"]


def test_shipped_files_load_unchanged() -> None:
    cfg = load_config()
    for gid, group in cfg.groups.items():
        rubric = load_rubric(group.anchors, gid, group.family)
        assert all(d.facet_given and not d.model_extra for d in rubric.dims)
        # no references: the section is left out (the cards give no text for that case; anchor_rubric generates
        # references from the teacher's judgments, tests/defs/test_anchor_warnings.py)
        prompt = system_prompt(rubric, group.description)
        assert ref_lines(prompt) == [] and "Calibration references" not in prompt


def _lines() -> list[dict]:
    return [json.loads(ln) for ln in SHIPPED.read_text().splitlines()]


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


BAD = {
    "invalid_json": (lambda rows: rows[:2] + ['{"slot": 3, "name": "x",'] + rows[3:], ":3: invalid JSON"),
    "not_an_object": (lambda rows: rows[:4] + [[5, "x"]] + rows[5:], ":5: expected a JSON object"),
    "no_slot": (lambda rows: rows[:1] + [{"name": "x"}] + rows[2:], ":2: no `slot`"),
    "slot_out_of_range": (lambda rows: rows[:14] + [dict(rows[14], slot=16)], ":15: slot 16 is not a slot number"),
    "slot_not_a_number": (lambda rows: [dict(rows[0], slot="first")] + rows[1:], ":1: slot 'first' is not a slot"),
    "no_name": (
        lambda rows: rows[:6] + [{k: v for k, v in rows[6].items() if k != "name"}] + rows[7:],
        ":7: slot 7 has no name",
    ),
    "empty_name": (lambda rows: rows[:6] + [dict(rows[6], name="  ")] + rows[7:], ":7: slot 7 has no name"),
    "name_with_line_break": (lambda rows: [dict(rows[0], name="a\nb")] + rows[1:], ":1: slot 1: the name"),
    "duplicate_slot": (
        lambda rows: rows[:9] + [dict(rows[9], slot=4)] + rows[10:],
        ":10: slot 4 appears again (first on line 4)",
    ),
    "missing_slots": (lambda rows: rows[:13], ": 13 slots, slot(s) 14, 15 missing"),
    "bad_references": (
        lambda rows: rows[:2] + [dict(rows[2], calibration_references="see paper")] + rows[3:],
        ":3: slot 3: calibration_references must be a list of strings or of objects",
    ),
    "facet_not_in_family": (
        lambda rows: [dict(rows[0], facet="agent")] + rows[1:],
        ":1: slot 1: facet 'agent' is not one of family qa_with_think's",
    ),
    "bad_cluster_size": (lambda rows: [dict(rows[0], cluster_size="many")] + rows[1:], ":1: slot 1: cluster_size:"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_unusable_files_fail_with_one_line_saying_where(case: str, tmp_path: Path) -> None:
    mutate, expected = BAD[case]
    path = _write(tmp_path / "anchors.jsonl", mutate(_lines()))
    with pytest.raises(RubricError) as err:
        load_rubric(path, "2", "qa_with_think")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(str(path)) and expected in message, message


def test_facet_spellings_of_the_judgments_are_accepted(tmp_path: Path) -> None:
    rows = [{"slot": i, "name": f"D{i}", "facet": ["Thinking", "both", "answer"][i % 3]} for i in range(1, 16)]
    rubric = load_rubric(_write(tmp_path / "a.jsonl", rows), "2", "qa_with_think")
    assert [d.facet for d in rubric.dims[:3]] == ["combined", "qa", "think"]


def test_released_student_warnings(tmp_path: Path) -> None:
    cfg = load_config()
    unit = cfg.scorer_units()["2"]
    shipped = load_rubric(cfg.groups["2"].anchors, "2", "qa_with_think")
    (warning,) = released_student_warnings(cfg, unit, shipped)
    assert "whw06/MIRA-QA-Group3" in warning and "without any calibration reference" in warning
    with_refs = load_rubric(UPSTREAM, "2", "qa_with_think")
    assert released_student_warnings(cfg, unit, with_refs) == []
    discovered = cfg.model_copy(update={"pipeline": cfg.pipeline.model_copy(update={"rubric_source": "discovered"})})
    (warning,) = released_student_warnings(discovered, unit, with_refs)
    assert "discovered rubric (rubric_source: discovered)" in warning and "never trained on" in warning
    assert released_student_warnings(cfg, unit.model_copy(update={"anchors": None}), shipped) == []
    # a global or per-source scorer is not a released student
    for scope in ("global", "source"):
        other = cfg.model_copy(update={"pipeline": cfg.pipeline.model_copy(update={"scorer_scope": scope})})
        assert released_student_warnings(other, other.unit_of("qwq"), shipped) == []


def test_configured_references_are_the_items_nearest_the_centres_of_the_12_largest_slot_clusters() -> None:
    """Each item joins the nearest slot of its facet; the 12 slots with the most items get the item nearest their
    centre as a reference, with its provenance; an item sharing nothing with any slot joins none."""
    import numpy as np

    from mira_dagster.core.discovery import JudgmentItem, configured_references

    dims = [AnchorDim(slot=s, name=f"Dim {s}", facet="think" if s <= 7 else "qa") for s in range(1, 16)]
    x_slots = np.eye(15, 16)
    items, rows = [], []

    def add(slot: int, vec: np.ndarray, facet: str, score: float) -> None:
        items.append(
            JudgmentItem(
                record_id=f"r{len(items)}",
                source="s",
                dimension=f"d{slot}",
                facet=facet,
                score=score,
                rationale=f"why {len(items)}",
            )
        )
        rows.append(vec / np.linalg.norm(vec))

    for slot in range(1, 14):  # slots 1-13 get 14-slot items (slot 13: one item); 14, 15: none
        for j in range(14 - slot + 1):
            vec = np.eye(16)[slot - 1] + (0.1 * j) * np.eye(16)[15]  # j = 0 lies on the slot's axis
            add(slot, vec, "think" if slot <= 7 else "qa", float(j))
    # nearest to slot 14 (qa) by text, but a think item: joins the nearest think slot instead (slot 1 shares a bit)
    add(14, np.eye(16)[13] + 0.2 * np.eye(16)[0], "think", 9.0)
    add(0, np.eye(16)[15], "qa", 3.0)  # shares nothing with any slot name: joins none
    out = configured_references(dims, items, x_slots, np.array(rows), judge_version="v1")
    with_refs = [d.slot for d in out if d.calibration_references]
    assert with_refs == list(range(1, 13))  # the 12 largest; slot 13 (one item) and the empty ones get none
    first = out[0].calibration_references[0]
    assert first.dimension == "Dim 1" and first.model_extra["cluster_items"] == 15  # 14 + the think item
    # the item nearest the mean of slot 1's members (its 14 items and the think item), computed here by hand
    members = [i for i, it in enumerate(items) if (it.dimension == "d1") or (it.dimension == "d14")]
    centre = np.array(rows)[members].mean(axis=0)
    nearest = members[int(np.argmax(np.array(rows)[members] @ centre))]
    assert first.model_extra["record_id"] == items[nearest].record_id and first.score == items[nearest].score
    assert first.model_extra["judge_version"] == "v1" and first.model_extra["centre_cosine"] > 0.9
    assert [d.name for d in out] == [d.name for d in dims] and not any(d.calibration_references for d in dims)
