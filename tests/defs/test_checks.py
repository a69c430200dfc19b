"""The blocking and warning checks, made to fail on purpose (and the scoring partitions' checks, made to pass)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from mira_dagster import definitions as d
from mira_dagster.cli import failure_lines, warning_lines
from mira_dagster.core.tables import SCORE_SCHEMA, SLOT_COLUMNS
from mira_dagster.defs.partitions import in_process_instance, register_partitions
from mira_dagster.defs.resources import MiraResource
from mira_dagster.defs.scoring import degenerate_replies
from mira_dagster.io.store import Store
from tests.conftest import SAMPLE
from tests.loopback import ChatServer, Reply, completion, serve

SOURCES = ["lean_qa", "agent_openhands"]


def _prepare(mira: MiraResource, instance: dg.DagsterInstance, sources: list[str] = SOURCES) -> None:
    for s in sources:
        sel = [*d.INGEST_ASSETS, *d.SCORING_ASSETS]
        assert dg.materialize(
            d.ALL_ASSETS, selection=sel, partition_key=s, instance=instance, resources={"mira": mira}
        ).success


def _corpus(mira: MiraResource, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        d.ALL_ASSETS, selection=d.CORPUS_ASSETS, instance=instance, resources={"mira": mira}, raise_on_error=False
    )


def test_all_checks_pass_on_the_sample(small_config: Path, tmp_path: Path) -> None:
    mira = MiraResource(config_path=str(small_config), home=str(tmp_path / "home"))
    instance = in_process_instance()
    _prepare(mira, instance)
    res = _corpus(mira, instance)
    assert res.success
    evals = {e.check_name: e.passed for e in res.get_asset_check_evaluations()}
    assert evals == {"no_source_fully_masked": True, "aggregate_drift": True, "budget_met": True}


def test_fully_masked_source_blocks_downstream(small_config: Path, tmp_path: Path) -> None:
    small_config.write_text(small_config.read_text().replace("pipeline: {", "pipeline: {mask_max_mae: 0.0, "))
    mira = MiraResource(config_path=str(small_config), home=str(tmp_path / "home"))
    instance = in_process_instance()
    _prepare(mira, instance)
    res = _corpus(mira, instance)
    assert not res.success
    evals = {e.check_name: e for e in res.get_asset_check_evaluations()}
    assert not evals["no_source_fully_masked"].passed
    assert instance.get_latest_materialization_event(dg.AssetKey("selected_subset")) is None


@pytest.mark.slow  # the corpus materialised twice: 10-20 s
def test_drift_warns_without_blocking(small_config: Path, tmp_path: Path) -> None:
    # a second source in group 2, so that group-normalised means can move
    data = SAMPLE / "math_think_thoughtanchors_r1distill.jsonl"
    extra = f'  reason_dpsk32: {{group: "2", format: qa_with_think, files: [{data}]}}\n'
    small_config.write_text(small_config.read_text().replace("pipeline: {", extra + "pipeline: {"))
    mira = MiraResource(config_path=str(small_config), home=str(tmp_path / "home"))
    instance = in_process_instance()
    _prepare(mira, instance, [*SOURCES, "reason_dpsk32"])
    assert _corpus(mira, instance).success
    # the student's scores for one source move (a new scorer, say): the drift check warns, the run still succeeds
    # (held-out records untouched, so reliability and the mask stay as they were)
    store = mira.store()
    heldout = store.read("teacher_labels", "lean_qa").filter(pl.col("split") == "heldout")["record_id"]
    path = store.partition_path("student_scores", "lean_qa")
    bump = ~pl.col("record_id").is_in(heldout.to_list())
    pl.read_parquet(path).with_columns(
        [
            pl.when(bump).then((pl.col(f"a{i}") + 3).clip(0, 10)).otherwise(pl.col(f"a{i}")).alias(f"a{i}")
            for i in range(1, 16)
        ]
    ).write_parquet(path)
    small_config.write_text(small_config.read_text().replace("pipeline: {", "pipeline: {drift_threshold: 0.1, "))
    res = _corpus(mira, instance)
    assert res.success
    drift = next(e for e in res.get_asset_check_evaluations() if e.check_name == "aggregate_drift")
    assert not drift.passed and drift.severity == dg.AssetCheckSeverity.WARN
    assert drift.metadata["moved"].value


# --- the scoring partitions' checks on what the scorer said (issue 22) ---


def _scoring(mira: MiraResource, source: str = "lean_qa") -> dg.ExecuteInProcessResult:
    return dg.materialize(
        d.ALL_ASSETS,
        selection=[*d.INGEST_ASSETS, *d.SCORING_ASSETS],
        partition_key=source,
        instance=in_process_instance(),
        resources={"mira": mira},
        raise_on_error=False,
    )


def _eval(res: dg.ExecuteInProcessResult, asset: str, name: str) -> dg.AssetCheckEvaluation:
    return next(e for e in res.get_asset_check_evaluations() if e.check_name == name and e.asset_key.path == [asset])


def test_a_mostly_unscored_source_fails_naming_the_source_and_the_share(small_config: Path, tmp_path: Path) -> None:
    # a context too small for any prompt + max_tokens: every record is too_long, none is sent
    small_config.write_text(small_config.read_text().replace("pipeline: {", "pipeline: {max_model_len: 1000, "))
    mira = MiraResource(config_path=str(small_config), home=str(tmp_path / "home"))
    res = _scoring(mira)
    assert not res.success
    check = _eval(res, "student_scores", "unscored_share")
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert check.description == (
        "student offline stand-in (model offline-student[noisy=4,9,14]:whw06/MIRA-QA-Group3), source lean_qa: "
        "67 of 67 records not scored (100%, limit 50%): 67 too_long"
    )
    assert check.metadata["unscored_share"].value == 1.0 and check.metadata["too_long"].value == 67
    assert _eval(res, "student_scores", "request_errors").passed  # too_long is never sent: not a request error
    # `mira run` prints it as its one line for the check
    assert f"scoring lean_qa: check student_scores.unscored_share: {check.description}" in failure_lines(
        res, "scoring lean_qa"
    )


def test_unscored_share_passes_under_its_setting(small_config: Path, tmp_path: Path) -> None:
    text = small_config.read_text().replace("pipeline: {", "pipeline: {max_model_len: 1000, max_unscored_share: 1.0, ")
    small_config.write_text(text)
    mira = MiraResource(config_path=str(small_config), home=str(tmp_path / "home"))
    res = _scoring(mira)
    check = _eval(res, "student_scores", "unscored_share")
    assert check.passed and check.metadata["threshold"].value == 1.0
    assert _eval(res, "teacher_labels", "unscored_share").metadata["unscored"].value == 34


DEGENERATE = (
    "\n".join(f"[A{i}] Dim {i}: 10/10 — 100" for i in range(1, 16))
    + "\noverall: 100\ntraining_recommendation: keep\ndomain_tag: x\nbrief: keepe\n"
)


def test_degenerate_replies_warn_without_blocking(
    small_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a real small model gave under constrained decoding: every slot 10/10, rationales that are numbers, a
    one-word brief. All of it parses `ok`; the check says so, and the run goes on."""
    server = ChatServer()
    server.responder = lambda body, n: Reply(payload=completion(body, DEGENERATE))
    mira = MiraResource(config_path=str(small_config), home=str(tmp_path / "home"))
    with serve(server) as url:
        monkeypatch.setenv("MIRA_STUDENT_BASE_URL", url)
        res = _scoring(mira)
    assert res.success
    check = _eval(res, "student_scores", "degenerate_replies")
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    meta = {k: v.value for k, v in check.metadata.items()}
    assert meta["scored"] == meta["degenerate"] == meta["constant_slots"] == meta["wordless_rationale"] == 67
    assert meta["wordless_brief"] == meta["repeated_brief"] == meta["repeated_scores"] == 67
    assert meta["degenerate_share"] == 1.0
    assert check.description.startswith(
        f"student endpoint {url} (model whw06/MIRA-QA-Group3), source lean_qa: 67 of 67 scored replies degenerate "
        "(100%): 67 the same score in all 15 slots; "
    )
    materialized = res.asset_materializations_for_node("student_scores")[0]
    assert materialized.metadata["degenerate_share"].value == 1.0
    # `mira run` prints it after the summary (and still exits 0); a blocking failure it is not
    lines = warning_lines(res, "scoring lean_qa")
    assert f"scoring lean_qa: check student_scores.degenerate_replies: {check.description}" in lines
    assert not any("degenerate_replies" in line for line in failure_lines(res, "scoring lean_qa"))


def _row(rid: str, status: str, scores: list[float | None], rationales: list[str | None], brief: str | None) -> dict:
    return {
        "record_id": rid,
        "source": "s",
        "status": status,
        **dict(zip(SLOT_COLUMNS, scores, strict=True)),
        "brief": brief,
        "rationales": rationales,
        "issues": [],
        "from_cache": False,
    }


def test_degenerate_replies_counts_each_kind(tmp_path: Path) -> None:
    words = ["clear and correct"] * 15
    varied = [float(i % 11) for i in range(15)]
    rows = [
        _row("r1", "ok", [10.0] * 15, ["100"] * 15, "keepe"),  # constant, numbers as rationales, one-word brief
        _row("r2", "ok", [10.0] * 15, words, "A fine, clear algebra record."),  # constant, and the same as r1
        _row("r3", "ok", varied, words, "Same brief for both here."),
        _row("r4", "ok", [*varied[1:], 3.0], words, "  same brief for both HERE.  "),  # r3's brief, other case
        _row("r5", "partial", [7.0, *[None] * 14], [None] * 15, None),  # a scored slot without a rationale
        _row("r6", "parse_error", [None] * 15, [None] * 15, "keepe"),  # not scored: not counted
        _row("r7", "ok", [*varied[2:], 1.0, 2.0], words, "A distinct and useful record."),
        _row("r8", "ok", [*varied[3:], 1.0, 2.0, 4.0], [*words[:14], "这个回答很好"], "Verified by the tests."),
    ]
    store = Store(tmp_path)
    store.write("student_scores", pl.DataFrame(rows, schema=SCORE_SCHEMA), "s")
    assert degenerate_replies(store, "student_scores", "s") == {
        "scored": 7,
        "constant_slots": 2,
        "repeated_scores": 2,
        "wordless_rationale": 2,
        "wordless_brief": 1,
        "repeated_brief": 2,
        "degenerate": 5,
    }


def test_a_step_failure_line_is_the_users_error_not_its_cause(small_config: Path, tmp_path: Path) -> None:
    """A truncated archive fails ingest with a SourceFileError naming the file; the one line `mira run` prints is
    that error, not the EOFError under it, which names no file."""
    data = small_config.parent / "data" / "lean_deepseek_prover_v15_minif2f_valid_fewshot.jsonl"
    broken = data.with_name("lean.jsonl.gz")
    broken.write_bytes(b"\x1f\x8b\x08\x00garbage")  # a gzip header, then nothing whole
    small_config.write_text(small_config.read_text(encoding="utf-8").replace(data.name, broken.name), "utf-8")
    mira = MiraResource(config_path=str(small_config), home=str(tmp_path / "home"))
    instance = in_process_instance()
    register_partitions(instance, mira.config())
    result = dg.materialize(
        d.ALL_ASSETS,
        selection=[a for a in d.ALL_ASSETS if dg.AssetKey("raw_records") in a.keys],
        partition_key="lean_qa",
        instance=instance,
        resources={"mira": mira},
        raise_on_error=False,
    )
    assert not result.success
    [line] = failure_lines(result, "lean_qa")
    assert line.startswith("lean_qa: step raw_records: source 'lean_qa': cannot read "), line
    assert str(broken) in line and "EOFError" in line, line
