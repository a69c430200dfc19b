"""Cost before spending: the plan counts what the assets send (cached and too_long records left out, only the steps
that run), the teacher sample cap, and the refusal of a run whose teacher requests would exceed
pipeline.max_teacher_requests (never of one that sends nothing)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from mira_dagster.cli import main
from mira_dagster.core.config import MiraConfig
from mira_dagster.core.offline import OfflineBackend
from mira_dagster.core.prompts import render_user
from mira_dagster.core.records import records_from
from mira_dagster.core.sampling import sample_size
from mira_dagster.core.scoring import Completion
from mira_dagster.definitions import ALL_ASSETS
from mira_dagster.defs.partitions import in_process_instance
from mira_dagster.defs.resources import MiraResource
from mira_dagster.io.anchors import load_rubric
from mira_dagster.io.cost import CostPlan, cost_gate, cost_plan, every_step
from mira_dagster.io.ingest import SourceIngest
from mira_dagster.io.registry import load_config
from mira_dagster.io.scorers import make_scorer
from mira_dagster.io.store import Store
from tests.loopback import ChatServer, serve

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


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The variables `mira run` sets (restored after the test) and a DAGSTER_HOME of the test's own: the home."""
    for var in ("MIRA_CONFIG", "MIRA_HOME"):
        monkeypatch.setenv(var, "unset")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    return tmp_path / "home"


def _plan(cfg: MiraConfig, store: Store, sources: list[str], endpoints=None) -> CostPlan:
    return cost_plan(cfg, store, every_step(cfg, sources), endpoints)


def test_plan_counts_every_step_and_leaves_out_cached_replies(setup) -> None:
    cfg, store = setup
    # the judgments run: group 2's shipped anchors get their references from them in this run, so its labels and
    # scores are counted whole (estimated) and said so
    plan = _plan(cfg, store, ["lean_qa"])
    student, labels, judge = (_step(plan, s) for s in ("student_scores", "teacher_labels", "teacher_judgments"))
    assert judge.records == judge.to_send == cfg.pipeline.judge_sample_per_source == 30 and not judge.estimated
    assert labels.records == labels.to_send == sample_size(N_LEAN, 0.5, 10) == 34 and labels.estimated
    assert student.to_send == N_LEAN and student.estimated
    assert plan.teacher_requests == 64
    assert plan.notes == ["group 2: its rubric is made in this run: its labels and scores count every record (est.)"]
    # without them the rubric is known: every record's prompt checked
    plan = cost_plan(cfg, store, [r for r in every_step(cfg, ["lean_qa"]) if r[0] != "teacher_judgments"])
    student, labels = (_step(plan, s) for s in ("student_scores", "teacher_labels"))
    assert (student.records, student.cached, student.too_long, student.to_send) == (N_LEAN, 0, 0, N_LEAN)
    assert not student.estimated and labels.to_send == 34 and plan.teacher_requests == 34
    assert all(s.free and s.endpoint == "offline stand-in" for s in plan.steps)  # no endpoint configured
    raw = store.read("raw_records", "lean_qa")
    # prompt tokens: the records' own plus the system prompt and template around each; completion below the bound
    assert student.prompt_tokens > int(raw["n_tokens"].sum()) + 500 * N_LEAN
    assert 0 < student.completion_tokens < student.completion_max == cfg.pipeline.max_tokens * N_LEAN

    # five student replies in the cache: five fewer requests, and their tokens are left out too
    unit = cfg.unit_of("lean_qa")
    rubric = load_rubric(unit.anchors, unit.key, unit.family)
    spec, _, _ = make_scorer("student", unit, cfg, rubric)
    with store.replies.writer(spec.version) as writer:  # replies that parse as `ok`: never asked again
        for rec in records_from(raw.head(5)):
            reply = OfflineBackend("student", []).reply(render_user(spec.user_template, rubric, rec))
            writer.add(rec.record_id, Completion(text=reply))
    again = cost_plan(cfg, store, [("student_scores", "lean_qa"), ("teacher_labels", "lean_qa")])
    assert (_step(again, "student_scores").cached, _step(again, "student_scores").to_send) == (5, N_LEAN - 5)
    assert _step(again, "student_scores").prompt_tokens < student.prompt_tokens
    assert _step(again, "teacher_labels").cached == 0  # another scorer_version


def test_teacher_sample_max_caps_the_labels(setup) -> None:
    cfg, store = setup
    plan = _plan(_with(cfg, teacher_sample_max=7), store, ["lean_qa", "agent_openhands"])
    labels = [s for s in plan.steps if s.step == "teacher_labels"]
    assert [s.records for s in labels] == [7, 2]  # agent_openhands has 2 records


def test_judgments_are_counted_only_for_units_whose_discovery_runs(setup) -> None:
    cfg, store = setup
    runs = [r for r in every_step(cfg, ["lean_qa"]) if r[0] != "teacher_judgments"]
    plan = cost_plan(cfg, store, runs)
    assert [s.step for s in plan.steps] == ["teacher_labels", "student_scores"]
    assert plan.teacher_requests == 34
    assert cost_plan(cfg, store, []).lines()[2] == "no scoring step will run: nothing will be sent"


def test_a_plan_before_any_ingest_says_it_counted_nothing(tmp_path: Path) -> None:
    """Before the first ingest (a `mira run` handing a fresh home to the daemon), the steps cannot be counted: the
    plan says so, never that nothing will be sent."""
    cfg = load_config()
    plan = cost_plan(cfg, Store(tmp_path / "home"), every_step(cfg, cfg.source_names()))
    assert plan.uncounted and plan.teacher_requests == 0
    assert plan.lines()[2].startswith("not counted: no records are ingested yet; each teacher step checks")
    assert not any("nothing will be sent" in line for line in plan.lines())


def test_cost_gate_refuses_over_the_cap_in_one_line(setup, capsys: pytest.CaptureFixture[str]) -> None:
    cfg, store = setup
    runs = every_step(cfg, ["lean_qa"])
    assert cost_gate(_with(cfg, max_teacher_requests=64), store, runs) is None
    out = capsys.readouterr()
    assert "cost plan" in out.out and "teacher_labels" in out.out and out.err == ""
    assert cost_gate(_with(cfg, max_teacher_requests=63), store, runs) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("mira: FAILED cost: 64 teacher requests would be sent, over ")
    assert "max_teacher_requests 63" in err[0]


def _materialize(mira: MiraResource, assets: list[str], partition: str) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        ALL_ASSETS,
        selection=assets,
        partition_key=partition,
        instance=in_process_instance(),
        resources={"mira": mira},
        raise_on_error=False,
    )


def test_the_plan_is_what_the_assets_send_at_an_endpoint_too_long_and_answered_left_out(
    small_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a context so small that part of lean_qa's prompts do not fit (for judging and scoring)
    text = small_config.read_text(encoding="utf-8")
    small_config.write_text(text.replace("min_heldout: 4}", "min_heldout: 4, max_model_len: 3000}"), "utf-8")
    server = ChatServer()
    mira = MiraResource(config_path=str(small_config), home=str(tmp_path / "home"))
    with serve(server) as url:
        for role in ("STUDENT", "TEACHER"):
            monkeypatch.setenv(f"MIRA_{role}_BASE_URL", url)
        assert _materialize(mira, ["raw_records"], "lean_qa").success
        cfg, store = mira.config(), mira.store()
        # the judgments (the rubric is the shipped one, without the references anchor_rubric would draw)
        judge = _step(cost_plan(cfg, store, [("teacher_judgments", "2")], mira.endpoint), "teacher_judgments")
        before = server.chat_requests
        assert _materialize(mira, ["teacher_judgments"], "2").success
        assert server.chat_requests - before == judge.to_send
        plan = cost_plan(cfg, store, [("teacher_labels", "lean_qa"), ("student_scores", "lean_qa")], mira.endpoint)
        student, labels = (_step(plan, s) for s in ("student_scores", "teacher_labels"))
        assert 0 < student.too_long < N_LEAN and student.to_send == N_LEAN - student.too_long
        assert labels.too_long > 0 and not student.free and not student.estimated and not plan.notes
        sent = {}
        for asset in ("teacher_labels", "student_scores"):
            before = server.chat_requests
            _materialize(mira, [asset], "lean_qa")
            sent[asset] = server.chat_requests - before
        assert sent == {"teacher_labels": labels.to_send, "student_scores": student.to_send}
        scores = store.read("student_scores", "lean_qa")
        assert scores.filter(pl.col("status") == "too_long").height == student.too_long
        # a later run: the answered records are cached, the too_long ones are still never pending
        again = cost_plan(cfg, store, [("teacher_labels", "lean_qa"), ("student_scores", "lean_qa")], mira.endpoint)
        judged_again = cost_plan(cfg, store, [("teacher_judgments", "2")], mira.endpoint)
    assert judged_again.teacher_requests == 0 and _step(judged_again, "teacher_judgments").cached == judge.to_send
    assert again.teacher_requests == 0 and _step(again, "student_scores").to_send == 0
    assert _step(again, "student_scores").too_long == student.too_long
    assert _step(again, "student_scores").cached == N_LEAN - student.too_long


def test_mira_run_refuses_before_any_teacher_request(
    small_config: Path, cli: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = small_config.read_text(encoding="utf-8")
    small_config.write_text(text.replace("min_heldout: 4}", "min_heldout: 4, max_teacher_requests: 5}"), "utf-8")
    home = cli
    code = main(["run", "--config", str(small_config), "--home", str(home)])
    out = capsys.readouterr()
    assert code == 1
    refusal = [line for line in out.err.splitlines() if line.startswith("mira: FAILED cost:")]
    # judgments and labels of both sources: 30 + 34 of lean_qa, 2 + 2 of agent_openhands
    assert refusal == [
        "mira: FAILED cost: 68 teacher requests would be sent, over pipeline.max_teacher_requests 5; nothing "
        "was sent (lower teacher_sample_max, run fewer sources with --source, or raise the cap)"
    ]
    assert "cost plan" in out.out
    store = Store(home)
    assert "raw_records" in store.tables()  # ingest ran; nothing after it
    assert not {"teacher_judgments", "teacher_labels", "student_scores"} & set(store.tables())
    assert not (home / "cache" / "replies").exists() or not any((home / "cache" / "replies").iterdir())


def test_a_refused_forced_run_takes_its_request_back(
    small_config: Path, cli: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command did not run, so a daemon started later must not act on its --force (nor on its retry)."""
    from mira_dagster.defs.freshness import latest_request

    home = cli
    run = ["run", "--config", str(small_config), "--home", str(home)]
    assert main([*run, "--source", "agent_openhands"]) == 0
    with dg.DagsterInstance.get() as instance:
        before = latest_request(instance)
    assert before is not None and not before.force and before.sources == ("agent_openhands",)
    text = small_config.read_text(encoding="utf-8")
    # lean_qa's judgments and labels are still to be asked: over the cap
    small_config.write_text(text.replace("min_heldout: 4}", "min_heldout: 4, max_teacher_requests: 5}"), "utf-8")
    capsys.readouterr()
    assert main([*run, "--force"]) == 1
    assert "mira: FAILED cost:" in capsys.readouterr().err
    with dg.DagsterInstance.get() as instance:
        assert latest_request(instance) == before


def test_a_forced_run_that_sends_nothing_is_not_refused(
    small_config: Path, cli: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = cli
    assert main(["run", "--config", str(small_config), "--home", str(home)]) == 0
    capsys.readouterr()
    # every reply is cached now: a forced run re-runs every step and sends nothing, so a cap of 5 lets it through
    text = small_config.read_text(encoding="utf-8")
    small_config.write_text(text.replace("min_heldout: 4}", "min_heldout: 4, max_teacher_requests: 5}"), "utf-8")
    code = main(["run", "--config", str(small_config), "--home", str(home), "--force"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "FAILED cost" not in out.err
    assert [line for line in out.out.splitlines() if line.startswith("teacher ")] == [
        "teacher offline stand-in (free): 0 requests, ~0 prompt + ~0 completion tokens"
    ]


def test_each_teacher_step_keeps_the_cap_where_no_mira_run_made_a_plan(small_config: Path, tmp_path: Path) -> None:
    """Runs the daemon, a backfill or the UI launch have no `mira run` plan before them: a teacher step that would send
    more than pipeline.max_teacher_requests by itself fails with one line before its first request; under the cap it
    runs. The student is not the cap's."""
    from mira_dagster.cli import failure_lines
    from mira_dagster.defs.partitions import register_partitions

    home = tmp_path / "home"
    mira = MiraResource(config_path=str(small_config), home=str(home))
    instance = in_process_instance()
    register_partitions(instance, mira.config())
    by_key = {k.to_user_string(): a for a in ALL_ASSETS for k in a.keys}

    def run(asset: str, partition: str | None) -> dg.ExecuteInProcessResult:
        return dg.materialize(
            ALL_ASSETS,
            selection=[by_key[asset]],
            partition_key=partition,
            instance=instance,
            resources={"mira": mira},
            raise_on_error=False,
        )

    original = small_config.read_text(encoding="utf-8")
    assert "min_heldout: 4}" in original
    small_config.write_text(original.replace("min_heldout: 4}", "min_heldout: 4, max_teacher_requests: 3}"), "utf-8")
    for source in ("lean_qa", "agent_openhands"):
        assert run("raw_records", source).success
    assert run("source_groups", None).success
    unit = mira.config().unit_of("lean_qa").key
    judged = run("teacher_judgments", unit)
    assert not judged.success
    [line] = failure_lines(judged, unit)
    assert line.startswith(f"{unit}: step teacher_judgments: ") and line.endswith(
        "teacher requests to send, over pipeline.max_teacher_requests 3; nothing was sent (lower teacher_sample_max "
        "or raise the cap)"
    ), line
    assert int(line.split(": ")[2].split()[0]) > 3
    assert "teacher_judgments" not in Store(home).tables()
    # under the cap the unit is judged, its rubric made; then the labels' own count meets a lower cap
    small_config.write_text(
        original.replace("min_heldout: 4}", "min_heldout: 4, max_teacher_requests: 10000}"), "utf-8"
    )
    assert run("teacher_judgments", unit).success and run("anchor_rubric", unit).success
    small_config.write_text(original.replace("min_heldout: 4}", "min_heldout: 4, max_teacher_requests: 1}"), "utf-8")
    labelled = run("teacher_labels", "lean_qa")
    assert not labelled.success
    [line] = failure_lines(labelled, "lean_qa")
    assert "step teacher_labels: " in line and "over pipeline.max_teacher_requests 1; nothing was sent" in line, line
    assert "teacher_labels" not in Store(home).tables()
    assert run("student_scores", "lean_qa").success  # the student sends as many as it needs
