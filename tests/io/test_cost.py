"""Cost before spending: the plan's counts (cached replies left out), the teacher sample cap, and the refusal of a run
whose teacher requests would exceed pipeline.max_teacher_requests."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from mira_dagster.cli import main
from mira_dagster.core.config import MiraConfig
from mira_dagster.core.sampling import sample_size
from mira_dagster.core.scoring import Completion
from mira_dagster.io.anchors import load_rubric
from mira_dagster.io.cost import CostPlan, cost_gate, plan_run
from mira_dagster.io.ingest import SourceIngest
from mira_dagster.io.registry import load_config
from mira_dagster.io.scorers import make_scorer
from mira_dagster.io.store import Store

N_LEAN = 67  # records of the small registry's lean_qa source


def _ingest(cfg: MiraConfig, store: Store) -> None:
    """raw_records of every source, written as the ingest asset writes them (without Dagster)."""
    for name, src in cfg.sources.items():
        ingest = SourceIngest(name, src.group, src.format, src.files)
        store.write("raw_records", pl.concat(recs for recs, _ in ingest.batches()), name)


def _with(cfg: MiraConfig, **settings: object) -> MiraConfig:
    return cfg.model_copy(update={"pipeline": cfg.pipeline.model_copy(update=settings)})


def _step(plan: CostPlan, step: str):
    return next(s for s in plan.steps if s.step == step)


@pytest.fixture
def setup(small_config: Path, tmp_path: Path) -> tuple[MiraConfig, Store]:
    cfg = load_config(small_config)
    store = Store(tmp_path / "home")
    _ingest(cfg, store)
    return cfg, store


def test_plan_counts_every_step_and_leaves_out_cached_replies(setup) -> None:
    cfg, store = setup
    plan = plan_run(cfg, store, ["lean_qa"])
    student, labels, judge = (_step(plan, s) for s in ("student_scores", "teacher_labels", "teacher_judgments"))
    assert (student.records, student.cached, student.requests) == (N_LEAN, 0, N_LEAN)
    assert labels.records == labels.requests == sample_size(N_LEAN, 0.5, 10) == 34
    assert judge.records == judge.requests == cfg.pipeline.judge_sample_per_source == 30
    assert plan.teacher_requests == 64
    assert all(s.free and s.endpoint == "offline stand-in" for s in plan.steps)  # no endpoint configured
    raw = store.read("raw_records", "lean_qa")
    # prompt tokens: the records' own plus the system prompt and template around each; completion below the bound
    assert student.prompt_tokens > int(raw["n_tokens"].sum()) + 500 * N_LEAN
    assert 0 < student.completion_tokens < student.completion_max == cfg.pipeline.max_tokens * N_LEAN

    # five student replies in the cache: five fewer requests, and their tokens are left out too
    unit = cfg.unit_of("lean_qa")
    spec, _, _ = make_scorer("student", unit, cfg, load_rubric(unit.anchors, unit.key, unit.family))
    with store.replies.writer(spec.version) as writer:
        for rid in raw["record_id"][:5]:
            writer.add(rid, Completion(text="[A1] x: 5/10 — y\n"))
    again = _step(plan_run(cfg, store, ["lean_qa"]), "student_scores")
    assert (again.records, again.cached, again.requests) == (N_LEAN, 5, N_LEAN - 5)
    assert again.prompt_tokens < student.prompt_tokens
    assert _step(plan_run(cfg, store, ["lean_qa"]), "teacher_labels").cached == 0  # another scorer_version


def test_teacher_sample_max_caps_the_labels(setup) -> None:
    cfg, store = setup
    plan = plan_run(_with(cfg, teacher_sample_max=7), store, ["lean_qa", "agent_openhands"])
    labels = [s for s in plan.steps if s.step == "teacher_labels"]
    assert [s.records for s in labels] == [7, 2]  # agent_openhands has 2 records


def test_cost_gate_refuses_over_the_cap_in_one_line(setup, capsys: pytest.CaptureFixture[str]) -> None:
    cfg, store = setup
    assert cost_gate(_with(cfg, max_teacher_requests=64), store, ["lean_qa"]) is None
    out = capsys.readouterr()
    assert "cost plan" in out.out and "teacher_labels" in out.out and out.err == ""
    assert cost_gate(_with(cfg, max_teacher_requests=63), store, ["lean_qa"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("mira: FAILED cost: 64 teacher requests not yet cached would exceed ")
    assert "max_teacher_requests 63" in err[0]


def test_mira_run_refuses_before_any_teacher_request(
    small_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # the variables `mira run` sets, restored after the test
    for var in ("MIRA_CONFIG", "MIRA_HOME"):
        monkeypatch.setenv(var, "unset")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    text = small_config.read_text(encoding="utf-8")
    small_config.write_text(text.replace("min_heldout: 4}", "min_heldout: 4, max_teacher_requests: 5}"), "utf-8")
    home = tmp_path / "home"
    code = main(["run", "--config", str(small_config), "--home", str(home)])
    out = capsys.readouterr()
    assert code == 1
    refusal = [line for line in out.err.splitlines() if line.startswith("mira: FAILED cost:")]
    # judgments and labels of both sources: 30 + 34 of lean_qa, 2 + 2 of agent_openhands
    assert refusal == [
        "mira: FAILED cost: 68 teacher requests not yet cached would exceed pipeline.max_teacher_requests 5; nothing "
        "was sent (lower teacher_sample_max, run fewer sources with --source, or raise the cap)"
    ]
    assert "cost plan" in out.out
    store = Store(home)
    assert "raw_records" in store.tables()  # ingest ran; nothing after it
    assert not {"teacher_judgments", "teacher_labels", "student_scores"} & set(store.tables())
    assert not (home / "cache" / "replies").exists() or not any((home / "cache" / "replies").iterdir())
