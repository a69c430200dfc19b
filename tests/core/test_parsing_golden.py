"""Golden table: replies written the way real models format them, each with everything the parser must read.

Each reply is a file in tests/fixtures/replies/. Group 2 (QA with thinking, a repeated slot name) and group D
(agent, names with slashes and parentheses) rubrics are used as in the model cards, and the parser is given the
group's dimension names as the scorer gives them. Rows marked `defect:` are the measured failures of an earlier
parser; rows 41-75 are the shapes of issue 22 (76-77: a
slot given another score in prose after the answer): the unambiguous ones read exactly, the ambiguous ones refused
(slot missing, the reason in `issues`). At least a third of the rows must refuse something (status not ok).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mira_dagster.package_data import ANCHORS_DIR
from tests.core.parsing_identity import parse_reply  # held to the full parser on every reply

REPLIES = Path(__file__).resolve().parents[1] / "fixtures" / "replies"
ANCHORS = ANCHORS_DIR  # the shipped anchors files (package data)
NAMES = {g: [json.loads(line)["name"] for line in (ANCHORS / f"group_{g}_dim_anchors.jsonl").open()] for g in "2D"}

QA = [9.0, 7.0, 8.0, 6.0, 7.0, 8.0, 9.0, 8.0, 9.0, 7.0, 8.0, 8.0, 6.0, 5.0, 6.0]
AG = [7.0, 6.0, 8.0, 7.0, 5.0, 8.0, 6.0, 9.0, 6.0, 8.0, 9.0, 7.0, 8.0, 7.0, 9.0]
QA_TRAILER = (
    78.0,
    "keep",
    "math/algebra",
    "A correct, well-explained algebra solution whose trace matches its answer.",
)
AG_TRAILER = (
    72.0,
    "keep",
    "swe/python-bugfix",
    "A focused bug fix with a minimal diff, verified only by the target test.",
)
NO_TRAILER = (None, None, None, None)
QA_R1 = "The final value 7/12 is correct and every algebraic step checks out."
MISSING_TRAILER = "missing overall, training_recommendation, domain_tag, brief"
QA_2 = "A competition-style problem that suits an advanced high-school learner."
QA_8 = "Covers both cases and states the final answer explicitly."
QA_11 = "Nothing is left out of the final write-up."
AG_R1 = "States a plan up front (reproduce, locate, patch, test) and follows it."
UNCLOSED = "unclosed <think> block: the reply is only a draft; nothing in it is read"


def with_(scores: list[float], **at: float | None) -> list[float | None]:
    """`scores` with some slots replaced: with_(QA, a9=None)."""
    out: list[float | None] = list(scores)
    for k, v in at.items():
        out[int(k[1:]) - 1] = v
    return out


def first(scores: list[float], n: int) -> list[float | None]:
    return [*scores[:n], *[None] * (15 - n)]


def missing_from(n: int) -> str:
    return "missing slots " + ",".join(f"A{i}" for i in range(n, 16))


@dataclass
class Row:
    file: str
    status: str
    scores: list[float | None]
    trailer: tuple[float | None, str | None, str | None, str | None]
    issues: list[str] = field(default_factory=list)
    finish_reason: str | None = "stop"
    rationales: dict[int, str | None] = field(default_factory=dict)
    group: str = "2"  # whose dimension names the parser is given
    has_rationales: bool = True  # the reply gives a rationale for every slot it scores


ROWS = [
    Row("01_contract_exact", "ok", QA, QA_TRAILER, rationales={1: QA_R1}),
    # defect: markdown bullets and bold
    Row("02_gpt4o_bullets_bold", "ok", QA, QA_TRAILER, rationales={1: QA_R1}),
    # preamble and closing remark, no final newline (defect: was "cut off")
    Row("03_claude_preamble_closing", "ok", QA, QA_TRAILER),
    # defect: `**[A1]** **Name**: **7**/10`
    Row("04_emphasis_split", "ok", QA, QA_TRAILER, rationales={1: QA_R1}),
    # defect: `1. [A1] ...`
    Row("05_numbered_list", "ok", QA, QA_TRAILER),
    Row("06_code_fence", "ok", QA, QA_TRAILER),
    # defect: a <think> draft with its own scores and trailer came out with status ok
    Row("07_r1_think_draft", "ok", QA, QA_TRAILER, rationales={1: QA_R1}),
    # reasoning whose opening tag stayed in the prompt: only </think> is in the reply
    Row("08_r1_no_open_tag", "ok", QA, QA_TRAILER),
    # defect: an unclosed <think> holding a draft, then a final set still inside it: all of it is a draft
    # (was read as the answer, status ok)
    Row(
        "09_qwen_unclosed_think",
        "parse_error",
        [None] * 15,
        NO_TRAILER,
        [UNCLOSED, missing_from(1), MISSING_TRAILER],
    ),
    # defect: other reasoning wrappers
    Row("10_reasoning_wrapper", "ok", AG, AG_TRAILER, group="D"),
    Row("11_kimi_markers_fullwidth", "ok", AG, AG_TRAILER, group="D"),
    # cut inside an unclosed think block: the draft is not the answer
    Row(
        "12_cut_inside_think",
        "parse_error",
        [None] * 15,
        NO_TRAILER,
        [
            "reply cut off inside an unclosed <think> block; its draft is ignored",
            missing_from(1),
            MISSING_TRAILER,
            "reply cut off",
        ],
        finish_reason="length",
    ),
    Row(
        "13_think_then_cut_answer",
        "partial",
        first(QA, 8),
        NO_TRAILER,
        ["A9: score cut off", missing_from(10), MISSING_TRAILER, "reply cut off"],
        finish_reason="length",
    ),
    # defect: no colon after the name and "3:1" in the rationale gave scores of 1
    Row(
        "14_no_colon_ratio_in_rationale",
        "ok",
        QA,
        QA_TRAILER,
        rationales={
            3: "Shows how to set up a ratio of 3:1 and carry it through the substitution. Ratio kept at 3:1 in step 2."
        },
    ),
    # defect: `Name - 7/10 - ...` with colons and digits in the rationale
    Row(
        "15_hyphen_form_colon_rationale",
        "ok",
        AG,
        AG_TRAILER,
        rationales={
            12: "Reads the pytest output carefully, including the 3:1 ratio of failures to errors. "
            "Timing 10:42, 2:1 odds."
        },
        group="D",
    ),
    # defect: overall 7.8/10 was stored as 7.8 on the 0-100 scale
    Row("16_overall_out_of_10", "ok", QA, QA_TRAILER, ["overall 7.8/10 converted to 78 on 0-100"]),
    Row(
        "17_llama_score_label_out_of_10",
        "ok",
        AG,
        AG_TRAILER,
        ["overall 7.2/10 converted to 72 on 0-100"],
        rationales={1: "States a plan up front (reproduce, locate, patch, test) and follows it."},
        group="D",
    ),
    # defect: bracketed scores were not read
    Row("18_parenthesised_scores", "ok", QA, QA_TRAILER, rationales={1: QA_R1}),
    Row("19_square_bracket_scores", "ok", AG, AG_TRAILER, group="D"),
    Row("20_markdown_table", "ok", QA, QA_TRAILER, rationales={1: QA_R1}),
    # defect: "[A4]" in the brief lost the brief and marked A4 repeated
    Row(
        "21_tags_in_text",
        "ok",
        QA,
        (78.0, "keep", "math/algebra", "Correct and clear; see [A4] for why it is only medium difficulty."),
        rationales={8: "Complete, unlike what [A4] suggests about difficulty."},
    ),
    # defect: a rationale starting "none of ..." (or n/a, null) lost the score
    Row(
        "22_none_in_rationale",
        "ok",
        AG,
        AG_TRAILER,
        rationales={
            5: "none of the neighbouring tests are run.",
            7: "n/a: no error occurred, so nothing to recover from; neutral.",
            12: "null results from grep are read correctly.",
        },
        group="D",
    ),
    # N/A in the score position is "no score"
    Row(
        "23_na_score_position",
        "partial",
        with_(QA, a9=None, a14=None),
        QA_TRAILER,
        ["A9: no score (N/A)", "A14: no score (none)"],
        rationales={9: "no checkable final value is given.", 14: None},
    ),
    # defect: finish_reason stop without a trailer was reported as "cut off"
    Row("24_stop_without_trailer", "partial", QA, NO_TRAILER, [MISSING_TRAILER]),
    # no finish_reason and a last line cut inside its score: obviously truncated
    Row(
        "25_no_finish_reason_cut",
        "partial",
        first(AG, 6),
        NO_TRAILER,
        ["A7: score cut off", missing_from(8), MISSING_TRAILER, "reply cut off"],
        finish_reason=None,
        group="D",
    ),
    Row("26_reordered_trailer", "ok", QA, QA_TRAILER),
    Row("27_separators_half_points_blank_lines", "ok", with_(QA, a2=7.5, a14=5.5), QA_TRAILER),
    Row(
        "28_heading_blocks",
        "ok",
        AG,
        AG_TRAILER,
        rationales={15: "Never reaches for network or destructive commands."},
        group="D",
    ),
    Row(
        "29_out_of_range_scores",
        "partial",
        with_(QA, a2=None, a6=None),
        QA_TRAILER,
        ["A2: score 11 outside 0-10", "A6: score out of 100, not 10"],
    ),
    # a slot given twice with different scores (was: the first kept, status ok)
    Row(
        "30_repeated_slot",
        "partial",
        with_(AG, a5=None),
        AG_TRAILER,
        ["A5: given 2 times with different scores (5, 9); none stored"],
        group="D",
    ),
    Row("31_prose_only", "parse_error", [None] * 15, NO_TRAILER, [missing_from(1), MISSING_TRAILER]),
    Row(
        "32_recommendation_echoed",
        "partial",
        QA,
        (78.0, None, "math/algebra", QA_TRAILER[3]),
        ["unknown recommendation '<keep | downsample | drop>'"],
    ),
    Row("33_draft_then_final_untagged", "ok", QA, QA_TRAILER, ["2 sets of slot lines; the last one was read"]),
    Row("34_empty", "parse_error", [None] * 15, NO_TRAILER, ["the reply is empty", missing_from(1), MISSING_TRAILER]),
    Row("35_values_on_next_line", "ok", AG, AG_TRAILER, group="D"),
    Row(
        "36_content_filter",
        "partial",
        first(QA, 4),
        NO_TRAILER,
        ["finish_reason 'content_filter'", missing_from(5), MISSING_TRAILER],
        finish_reason="content_filter",
    ),
    Row("37_bare_tags_en_dash", "ok", AG, AG_TRAILER, group="D"),
    Row("38_digit_in_name_percent_overall", "ok", QA, QA_TRAILER),
    Row(
        "39_cut_in_brief",
        "partial",
        QA,
        (*QA_TRAILER[:3], None),
        ["brief cut off", "reply cut off"],
        finish_reason="length",
    ),
    # a closed think block holding the only slot lines: the reasoning is not the answer
    Row(
        "40_think_then_prose",
        "parse_error",
        [None] * 15,
        NO_TRAILER,
        ["slot lines only inside the reasoning block (ignored)", missing_from(1), MISSING_TRAILER],
    ),
    # --- issue 22: unambiguous shapes, read exactly ---
    # one JSON object, fenced, slot tags as keys, {score, rationale} values, the trailer beside them
    Row("41_json_fenced_tags", "ok", QA, QA_TRAILER, rationales={1: QA_R1}),
    # unfenced JSON, dimension names as keys, bare numbers
    Row("42_json_bare_names", "ok", AG, AG_TRAILER, group="D", has_rationales=False),
    # JSON with the repeated name "Answer Completeness" as a key twice: A8 then A11
    Row("43_json_names_repeated", "ok", QA, QA_TRAILER, rationales={8: QA_8, 11: QA_11}),
    # a list of {slot, dimension, score, rationale} objects in a plain fence
    Row("44_json_scores_list", "ok", AG, AG_TRAILER, group="D", rationales={1: AG_R1}),
    # dimension names without tags, in order; the repeated name takes A8 then A11
    Row("45_names_without_tags", "ok", QA, QA_TRAILER, rationales={1: QA_R1, 8: QA_8, 11: QA_11}),
    Row("46_names_bold_bullets", "ok", AG, AG_TRAILER, group="D", rationales={1: AG_R1}),
    # all fifteen on one line separated by `;`, the trailer on one line separated by `|`
    Row("47_one_line_semicolons", "ok", QA, QA_TRAILER, has_rationales=False),
    Row("48_one_line_names_pipes", "ok", AG, AG_TRAILER, group="D", has_rationales=False),
    # "Nine out of ten", "seven out of ten"
    Row("49_number_words", "ok", QA, QA_TRAILER, rationales={1: QA_R1, 2: QA_2}),
    # the score after the rationale: "— 7/10" ending the line, or "(Score: 8)"
    Row("50_score_after_rationale", "ok", AG, AG_TRAILER, group="D", rationales={1: AG_R1}),
    Row("51_table_names_no_tags", "ok", QA, QA_TRAILER, rationales={1: QA_R1}),
    # a slot repeated with the same score is fine
    Row("52_recap_same_score", "ok", AG, AG_TRAILER, ["A5 repeated with the same score"], group="D"),
    Row("53_think_then_json", "ok", QA, QA_TRAILER, has_rationales=False),
    Row("54_out_of_10_words_digits", "ok", AG, AG_TRAILER, group="D", rationales={1: AG_R1}),
    # --- issue 22: ambiguous or draft answers, refused ---
    Row(
        "55_hedged_ranges",
        "partial",
        with_(QA, a2=None, a5=None, a13=None),
        QA_TRAILER,
        [
            "A2: a range or alternative, not one score: 'Difficulty Appropriateness: 9-10/10 — h…'",
            "A5: a range or alternative, not one score: 'Specificity: 7 or 8 — names the constra…'",
            "A13: a range or alternative, not one score: 'Answer Conciseness: 6–7/10 — repeats th…'",
        ],
    ),
    # measured from a real 135M model cut at max_tokens: `- A3: 20.00 + 3.00 = 5.00.` (was: 7 slots stored)
    Row(
        "56_arithmetic_cut",
        "parse_error",
        [None] * 15,
        NO_TRAILER,
        [
            "A1: arithmetic, not a score: '14.00 + 8.00 = 7.00.'",
            "A2: arithmetic, not a score: '12.00 + 7.00 = 6.00.'",
            "A3: arithmetic, not a score: '16.00 + 9.00 = 8.00.'",
            "A4: arithmetic, not a score: '14.00 + 8.00 = 7.00.'",
            "A5: arithmetic, not a score: '10.00 + 6.00 = 5.00.'",
            "A6: arithmetic, not a score: '16.00 + 9.00 = 8.00.'",
            "A7: arithmetic, not a score: '12.00 + 7.00 = 6.00.'",
            "A8: score cut off",
            missing_from(9),
            MISSING_TRAILER,
            "reply cut off",
        ],
        finish_reason="length",
        group="D",
    ),
    # an unclosed <think> holding a full draft and "let me re-check ... before I write the final answer"
    Row(
        "57_unclosed_think_recheck",
        "parse_error",
        [None] * 15,
        NO_TRAILER,
        [UNCLOSED, missing_from(1), MISSING_TRAILER],
    ),
    Row(
        "58_names_correction_conflict",
        "partial",
        with_(QA, a5=None),
        QA_TRAILER,
        ["A5: given 2 times with different scores (7, 9); none stored"],
    ),
    Row(
        "59_json_duplicate_key_conflict",
        "partial",
        with_(AG, a3=None),
        AG_TRAILER,
        ["A3: given 2 times with different scores (4, 8); none stored"],
        group="D",
        has_rationales=False,
    ),
    Row(
        "60_json_range_strings",
        "partial",
        with_(AG, a1=None, a4=None),
        AG_TRAILER,
        [
            "A1: a range or alternative, not one score: 'score: 9-10'",
            "A4: a range or alternative, not one score: 'score: 7 or 8'",
        ],
        group="D",
        has_rationales=False,
    ),
    Row(
        "61_number_not_score",
        "partial",
        with_(QA, a4=None, a9=None),
        QA_TRAILER,
        [
            "A4: number not in the score position: 'Difficulty Level: 2 substitutions and o…'",
            "A9: number not in the score position: 'Verifiability: 3 checks by substitution…'",
        ],
    ),
    Row(
        "62_two_scores_on_line",
        "partial",
        with_(AG, a6=None, a12=None),
        AG_TRAILER,
        ["A6: two scores on its line (8, 6)", "A12: 2 different scores on its line (7, 5)"],
        group="D",
    ),
    Row(
        "63_alternative_parenthesised",
        "partial",
        with_(QA, a7=None, a10=None),
        QA_TRAILER,
        [
            "A7: a range or alternative, not one score: 'Think-Response Consistency: 9/10 (or 8/…'",
            "A10: a range or alternative, not one score: 'Pedagogical Value: 7/10 to 8/10 — good …'",
        ],
    ),
    Row(
        "64_one_line_list_cut",
        "partial",
        first(QA, 6),
        NO_TRAILER,
        ["A7: score cut off", missing_from(8), MISSING_TRAILER, "reply cut off"],
        finish_reason="length",
        has_rationales=False,
    ),
    Row(
        "65_json_cut",
        "parse_error",
        [None] * 15,
        NO_TRAILER,
        [missing_from(1), MISSING_TRAILER, "reply cut off"],
        finish_reason="length",
    ),
    # a complete answer, then an unclosed <think> reconsidering it: the answer is not final
    Row(
        "66_answer_then_unclosed_think",
        "parse_error",
        [None] * 15,
        NO_TRAILER,
        [UNCLOSED, missing_from(1), MISSING_TRAILER],
    ),
    Row(
        "67_overall_conflict",
        "partial",
        QA,
        (None, *QA_TRAILER[1:]),
        ["overall given 2 times with different values (70, 78); none stored"],
    ),
    Row(
        "68_word_not_score",
        "partial",
        with_(AG, a3=None, a9=None),
        AG_TRAILER,
        [
            "A3: number not in the score position: 'Goal Achievement: one of the best fixes…'",
            "A9: number not in the score position: 'Action Efficiency: seven tool calls whe…'",
        ],
        group="D",
    ),
    Row(
        "69_names_arithmetic",
        "partial",
        with_(QA, a5=None, a14=None),
        QA_TRAILER,
        [
            "A5: arithmetic, not a score: 'Specificity: 5 + 2 = 7'",
            "A14: arithmetic, not a score: 'Actionability: 3 + 2 = 5'",
        ],
    ),
    # the last slot given again in words with another score
    Row(
        "70_draft_words_mixed_repeat",
        "partial",
        with_(AG, a15=None),
        AG_TRAILER,
        ["A15: given 2 times with different scores (8, 9); none stored"],
        group="D",
    ),
    # --- held-out shapes found after the first 70 ---
    # each slot as fields: `A1:` then `name:`, `score:`, `rationale:` lines
    Row("71_yaml_fields", "ok", AG, AG_TRAILER, group="D", rationales={1: AG_R1}),
    # the dimension name as a heading, `Score: 9/10` on the next line
    Row("72_heading_then_score", "ok", QA, QA_TRAILER, rationales={1: QA_R1}),
    Row(
        "73_hedged_maybe_revised",
        "partial",
        with_(QA, a3=None, a9=None),
        QA_TRAILER,
        [
            "A3: a range or alternative, not one score: 'Educational Value: 8/10, maybe 9'",
            "A9: two scores on its line (9, 8)",
        ],
    ),
    # one JSON object at the end of a line of prose
    Row("74_json_after_prose", "ok", AG, AG_TRAILER, group="D", has_rationales=False),
    # a table of tags and bare numbers
    Row("75_tag_number_table", "ok", QA, QA_TRAILER, has_rationales=False),
    # a prose line after the answer gives a slot another score: the slot had two (a repeat with the same score is fine)
    Row(
        "76_correction_after_answer",
        "partial",
        with_(QA, a3=None),
        QA_TRAILER,
        ["A3: 8 on its line, 9/10 in 'Correction: on reflection [A3] Educatio…'; none stored"],
    ),
    Row(
        "77_json_then_revised_in_prose",
        "partial",
        with_(AG, a5=None),
        AG_TRAILER,
        ["A5: 5 on its line, 6/10 in 'Actually, A5 should be 6/10: the test i…'; none stored"],
        group="D",
        has_rationales=False,
    ),
]


def test_every_fixture_has_a_row() -> None:
    assert sorted(p.stem for p in REPLIES.glob("*.txt")) == sorted(r.file for r in ROWS)
    assert len(ROWS) >= 60
    assert sum(r.status != "ok" for r in ROWS) * 3 >= len(ROWS)  # a third of them must refuse something


@pytest.mark.parametrize("row", ROWS, ids=[r.file for r in ROWS])
def test_golden(row: Row) -> None:
    text = (REPLIES / f"{row.file}.txt").read_text(encoding="utf-8")
    r = parse_reply(text, row.finish_reason, NAMES[row.group])
    assert r.status == row.status
    assert r.scores == row.scores
    assert (r.overall, r.recommendation, r.domain_tag, r.brief) == row.trailer
    assert r.issues == row.issues
    for slot, rationale in row.rationales.items():
        assert r.rationales[slot - 1] == rationale, slot
    # everything scored has its rationale (when the reply gives one)
    if row.has_rationales:
        assert all(r.rationales[i] for i, s in enumerate(r.scores) if s is not None)


@pytest.mark.parametrize("row", ROWS, ids=[r.file for r in ROWS])
def test_golden_survives_crlf(row: Row) -> None:
    text = (REPLIES / f"{row.file}.txt").read_text(encoding="utf-8")
    names = NAMES[row.group]
    a = parse_reply(text, row.finish_reason, names)
    b = parse_reply(text.replace("\n", "\r\n"), row.finish_reason, names)
    assert a == b
