"""`mira run` redoes only what changed: a re-run with nothing changed runs nothing; a source with appended lines is
re-ingested and re-scored alone (asking only for its new records), with its unit's stage 1 and the corpus; a changed
setting of the selection reruns only the corpus; a failed step is retried by the next run. What is stale is read from
the instance (defs/freshness.py), not from what the last `mira run` did: a source ingested by another command still
re-runs its group's stage 1, and a run stopped between two steps has the later one redone."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import dagster as dg
import pytest

from mira_dagster.core.config import PROJECT_ROOT
from mira_dagster.package_data import ANCHORS_DIR
from tests.e2e.test_commands import BIN, user_env

pytestmark = pytest.mark.e2e

SAMPLE = PROJECT_ROOT / "data" / "sample"
ANCHORS = ANCHORS_DIR  # the shipped anchors files (package data)


def _registry(tmp: Path, pipeline: str = "") -> Path:
    data = tmp / "data"
    data.mkdir(exist_ok=True)
    for name in ("lean_deepseek_prover_v15_minif2f_valid_fewshot.jsonl", "math_think_marco_o1_cot_demo.part2.jsonl"):
        if not (data / name).exists():
            shutil.copy(SAMPLE / name, data / name)
    for name in ("group_2_dim_anchors.jsonl",):
        shutil.copy(ANCHORS / name, tmp / name)
    cfg = tmp / "groups.yaml"
    cfg.write_text(
        f"""
groups:
  "2": {{family: qa_with_think, student_model: whw06/MIRA-QA-Group3, anchors: group_2_dim_anchors.jsonl}}
sources:
  lean_qa: {{group: "2", format: qa_with_think, files: [data/lean_deepseek_prover_v15_minif2f_valid_fewshot.jsonl]}}
  qwq: {{group: "2", format: qa_with_think, files: [data/math_think_marco_o1_cot_demo.part2.jsonl]}}
pipeline: {{teacher_sample_min: 10, min_heldout: 4{pipeline}}}
""",
        encoding="utf-8",
    )
    return cfg


def _run(tmp: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [str(BIN / "mira"), "run", "-v", "--config", str(tmp / "groups.yaml"), *extra],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return out


def _steps(stdout: str) -> list[str]:
    """The runs `mira run -v` started, one line each: `[stage i/n] where: assets (why)`."""
    return [m.group(1) for m in re.finditer(r"^\[\w+ \d+/\d+\] (.*?)(?: \(.*\))?$", stdout, re.M)]


def _student_requests(tmp: Path, source: str) -> int:
    with dg.DagsterInstance.from_config(str(tmp / ".mira" / "dagster")) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey("student_scores"))
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("student_scores"), asset_partitions=[source]), limit=1
        ).records
        assert event is not None and records
        return records[0].asset_materialization.metadata["requests_sent"].value


@pytest.fixture
def ran(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    env = user_env(tmp_path)
    _registry(tmp_path)
    first = _run(tmp_path, env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "lean_qa: raw_records" in _steps(first.stdout) and any(s.startswith("corpus") for s in _steps(first.stdout))
    return tmp_path, env


def test_nothing_changed_runs_nothing(ran) -> None:
    tmp, env = ran
    again = _run(tmp, env)
    assert again.returncode == 0, again.stderr
    assert _steps(again.stdout) == []
    assert "nothing changed since the last run" in again.stdout and "| TOTAL" in again.stdout
    forced = _run(tmp, env, "--force", "--source", "qwq")
    assert forced.returncode == 0 and "qwq: raw_records" in _steps(forced.stdout)
    assert _student_requests(tmp, "qwq") == 0  # forced, but every reply is cached


def test_appended_lines_redo_one_source_and_ask_only_for_them(ran) -> None:
    tmp, env = ran
    src = tmp / "data" / "math_think_marco_o1_cot_demo.part2.jsonl"
    extra = SAMPLE / "math_think_marco_o1_cot_demo.part1.jsonl"  # 42 other records
    with src.open("ab") as fh:
        fh.write(b"".join(extra.read_bytes().splitlines(keepends=True)[:5]))
    with dg.DagsterInstance.from_config(str(tmp / ".mira" / "dagster")) as instance:
        runs_before = len(instance.get_runs())
    plan = _run(tmp, env, "--plan")  # what would run and cost, and nothing runs
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert "ingest: 1 run(s): qwq (input files changed)" in plan.stdout and "to_send" in plan.stdout
    with dg.DagsterInstance.from_config(str(tmp / ".mira" / "dagster")) as instance:
        assert len(instance.get_runs()) == runs_before
    out = _run(tmp, env)
    assert out.returncode == 0, out.stdout + out.stderr
    steps = _steps(out.stdout)
    assert "qwq: raw_records" in steps and "qwq: teacher_labels, student_scores" in steps
    assert "lean_qa: raw_records" not in steps and "lean_qa: teacher_labels, student_scores" not in steps
    assert "group 2: teacher_judgments, anchor_rubric" in steps and steps[-1].startswith("corpus")
    assert _student_requests(tmp, "qwq") == 5  # the appended records only


def test_a_selection_setting_reruns_only_the_corpus(ran) -> None:
    tmp, env = ran
    _registry(tmp, ", retention_share: 0.3")
    out = _run(tmp, env)
    assert out.returncode == 0, out.stderr
    assert [s.split(":")[0] for s in _steps(out.stdout)] == ["corpus"]


def test_a_failed_ingest_is_retried_by_the_next_run(ran) -> None:
    tmp, env = ran
    src = tmp / "data" / "math_think_marco_o1_cot_demo.part2.jsonl"
    good = src.read_bytes()
    src.write_bytes(b"not json\n" * 40 + good[:200])  # mostly garbage: records_usable refuses it
    bad = _run(tmp, env)
    assert bad.returncode == 1 and "records_usable" in bad.stderr
    again = _run(tmp, env)  # nothing changed since, but the last ingest was refused: it runs (and fails) again
    assert again.returncode == 1 and "qwq: raw_records" in _steps(again.stdout)
    src.write_bytes(good)
    fixed = _run(tmp, env)
    assert fixed.returncode == 0, fixed.stderr
    assert _student_requests(tmp, "qwq") == 0  # the records are the earlier ones: all cached


def _materialise(tmp: Path, env: dict[str, str], asset: str, partition: str) -> None:
    """One asset partition through Dagster's own command, on the instance `mira run` uses."""
    cmd = [str(BIN / "dagster"), "asset", "materialize", "-m", "mira_dagster.definitions"]
    out = subprocess.run(
        [*cmd, "--select", asset, "--partition", partition],
        cwd=tmp,
        env={
            **env,
            "MIRA_CONFIG": str(tmp / "groups.yaml"),
            "MIRA_HOME": str(tmp / ".mira"),
            "DAGSTER_HOME": str(tmp / ".mira" / "dagster"),
        },
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]


def test_a_source_ingested_by_another_command_reruns_its_groups_stage_1(ran) -> None:
    tmp, env = ran
    shutil.copy(SAMPLE / "math_think_marco_o1_cot_demo.part1.jsonl", tmp / "data" / "more.jsonl")
    cfg = tmp / "groups.yaml"
    text = cfg.read_text(encoding="utf-8").replace(
        "pipeline:", 'more: {group: "2", format: qa_with_think, files: [data/more.jsonl]}\npipeline:'
    )
    cfg.write_text(text.replace("\nmore:", "\n  more:"), encoding="utf-8")
    _materialise(tmp, env, "raw_records", "more")  # not through `mira run`: it never saw this source ingested
    out = _run(tmp, env)
    assert out.returncode == 0, out.stdout + out.stderr
    steps = _steps(out.stdout)
    assert "more: raw_records" not in steps  # ingested already, and up to date
    assert "group 2: teacher_judgments, anchor_rubric" in steps, steps
    assert "more: teacher_labels, student_scores" in steps and steps[-1].startswith("corpus")
    with dg.DagsterInstance.from_config(str(tmp / ".mira" / "dagster")) as instance:
        judged = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("teacher_judgments"), asset_partitions=["2"]), limit=1
        ).records[0]
    assert judged.asset_materialization.metadata["records_judged"].value > 20  # lean_qa, qwq and now more
    assert _steps(_run(tmp, env).stdout) == []


def test_a_run_stopped_between_two_steps_has_the_later_one_redone(ran) -> None:
    tmp, env = ran
    # what a run killed after teacher_judgments[2] and before anchor_rubric[2] leaves in the instance
    _materialise(tmp, env, "teacher_judgments", "2")
    out = _run(tmp, env)
    assert out.returncode == 0, out.stdout + out.stderr
    steps = _steps(out.stdout)
    assert "group 2: anchor_rubric" in steps, steps
    assert "group 2: teacher_judgments, anchor_rubric" not in steps  # the judgments are not asked for again
    assert "group 2: distillation_dataset" in steps
    assert _steps(_run(tmp, env).stdout) == []


def test_a_cut_table_file_fails_by_name_and_a_deleted_one_is_rebuilt_without_sending(ran) -> None:
    """A source's student_scores file cut short after it was written: the next run that reads the table fails, one
    line naming the file and what to do, and every other table stays readable (before, the catalogue's refresh
    failed every step, and the summary's exception hid the failure lines). Deleted, the partition runs again from
    the reply cache (before, nothing re-ran and the selection was rebuilt without that source's scores)."""
    tmp, env = ran
    scores = tmp / ".mira" / "tables" / "student_scores" / "qwq.parquet"
    whole = scores.read_bytes()
    scores.write_bytes(whole[: len(whole) // 2])
    src = tmp / "data" / "lean_deepseek_prover_v15_minif2f_valid_fewshot.jsonl"
    src.write_text(src.read_text(encoding="utf-8").replace("theorem", "theorem ", 1), encoding="utf-8")
    bad = _run(tmp, env)
    assert bad.returncode == 1
    failed = [line for line in bad.stderr.splitlines() if line.startswith("mira: FAILED lean_qa")]
    assert failed and str(scores) in failed[0] and "delete that file" in failed[0], bad.stderr
    assert "lean_qa: raw_records" in _steps(bad.stdout)  # ingest (which reads no score) still ran
    scores.unlink()
    again = _run(tmp, env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "qwq: teacher_labels, student_scores" in _steps(again.stdout) or "qwq: student_scores" in _steps(
        again.stdout
    )
    assert scores.exists() and _student_requests(tmp, "qwq") == 0
    assert _steps(_run(tmp, env).stdout) == []


@pytest.mark.parametrize("gone", ["exports/selected_subset", "tables/aggregated_scores/all.parquet"])
def test_a_deleted_export_or_corpus_table_is_written_again(ran, gone: str) -> None:
    """The export folder or a corpus table's file removed by hand: the corpus runs again and writes it (before:
    "nothing changed", and nothing written until an input changed)."""
    tmp, env = ran
    path = tmp / ".mira" / gone
    before = sorted(p.name for p in path.iterdir()) if path.is_dir() else None
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    out = _run(tmp, env)
    assert out.returncode == 0, out.stdout + out.stderr
    steps = _steps(out.stdout)
    assert any(s.startswith("corpus") for s in steps) and all(s.startswith("corpus") for s in steps), steps
    assert path.exists() and (before is None or sorted(p.name for p in path.iterdir()) == before)
    assert _steps(_run(tmp, env).stdout) == []
