"""The paper's variants end to end: `mira run` with scorer_scope global, group and source, one after the other into
one MIRA_HOME, each completing with the offline stand-in; selection_report then puts the three scopes and random side
by side at the same budget."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import duckdb
import pytest

from mira_dagster.core.config import PROJECT_ROOT
from mira_dagster.package_data import ANCHORS_DIR
from tests.e2e.test_commands import BIN, user_env

pytestmark = pytest.mark.e2e

SAMPLE = PROJECT_ROOT / "data" / "sample"
ANCHORS = ANCHORS_DIR  # the shipped anchors files (package data)
FILES = {
    "lean_qa": "lean_deepseek_prover_v15_minif2f_valid_fewshot.jsonl",
    "qwq": "math_think_marco_o1_cot_demo.part2.jsonl",
    "swe_qa": "swe_sweagent_trajs.jsonl",
}


def _registry(tmp_path: Path, scope: str) -> Path:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    for name in FILES.values():
        shutil.copy(SAMPLE / name, data / name)
    for name in ("group_2_dim_anchors.jsonl", "group_D_dim_anchors.jsonl"):
        shutil.copy(ANCHORS / name, tmp_path / name)
    cfg = tmp_path / f"groups.{scope}.yaml"
    cfg.write_text(
        f"""
groups:
  "2": {{family: qa_with_think, student_model: whw06/MIRA-QA-Group3, anchors: group_2_dim_anchors.jsonl,
        description: QA / math reasoning with thinking traces}}
  D: {{family: agent, student_model: whw06/MIRA-Agent-Group4, anchors: group_D_dim_anchors.jsonl,
      description: Agent / SWE repository repair}}
sources:
  lean_qa: {{group: "2", format: qa_with_think, files: [data/{FILES["lean_qa"]}]}}
  qwq: {{group: "2", format: qa_with_think, files: [data/{FILES["qwq"]}]}}
  swe_qa: {{group: D, format: agent, files: [data/{FILES["swe_qa"]}]}}
pipeline: {{scorer_scope: {scope}, teacher_sample_min: 10, min_heldout: 4}}
""",
        encoding="utf-8",
    )
    return cfg


@pytest.fixture(scope="module")
def three_scopes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    tmp = tmp_path_factory.mktemp("scopes")
    env = user_env(tmp)
    out = {}
    for scope in ("group", "global", "source"):
        run = subprocess.run(
            [str(BIN / "mira"), "run", "-v", "--config", str(_registry(tmp, scope))],  # -v: a line per run
            cwd=tmp,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert run.returncode == 0, f"{scope}: {run.stdout[-3000:]}\n{run.stderr[-3000:]}"
        out[scope] = run.stdout
    return tmp / ".mira", out


def test_each_scope_runs_its_stage_1_and_2_per_unit(three_scopes) -> None:
    home, out = three_scopes
    assert "group 2: teacher_judgments, anchor_rubric" in out["group"]
    assert "global global: teacher_judgments, anchor_rubric" in out["global"]
    assert "source swe_qa: distillation_dataset" in out["source"]
    # one discovered rubric per unit of the non-group scopes (the groups use their configured anchors)
    anchors = sorted(p.name for p in (home / "anchors").glob("*.jsonl"))
    assert "global_dim_anchors.jsonl" in anchors
    assert {f"source_{s}_dim_anchors.jsonl" for s in FILES} <= set(anchors)
    for name in ("global_dim_anchors.jsonl", "source_swe_qa_dim_anchors.jsonl"):
        slots = [json.loads(line) for line in (home / "anchors" / name).read_text().splitlines()]
        assert [s["slot"] for s in slots] == list(range(1, 16)) and len({s["name"] for s in slots}) == 15
    # one global rubric over two families: it holds the facets of both
    facets = {json.loads(line)["facet"] for line in (home / "anchors" / "global_dim_anchors.jsonl").open()}
    assert "agent" in facets and facets & {"think", "combined", "qa"}
    exports = {p.name for p in (home / "exports" / "distillation").glob("*.jsonl")}
    assert {"group_2.jsonl", "group_D.jsonl", "global.jsonl", *(f"source_{s}.jsonl" for s in FILES)} <= exports
    # the last run was the source scope: every source was scored by its own unit
    with duckdb.connect(str(home / "mira.duckdb"), read_only=True) as con:
        units = dict(con.execute("SELECT source, any_value(scorer_unit) FROM student_scores GROUP BY 1").fetchall())
        pools = dict(con.execute("SELECT source, any_value(pool) FROM dim_reliability GROUP BY 1").fetchall())
    assert units == {s: s for s in FILES} and pools == units


def test_report_compares_every_scope_with_random_at_one_budget(three_scopes) -> None:
    home, out = three_scopes
    with duckdb.connect(str(home / "mira.duckdb"), read_only=True) as con:
        variants = {r[0]: r for r in con.execute("SELECT * FROM selection_variants").fetchall()}
        cols = [d[0] for d in con.execute("SELECT * FROM selection_variants").description]
        per_source = con.execute(
            "SELECT variant, source, tokens_kept, source_tokens, jaccard_vs_current FROM selection_report"
        ).fetchall()
        biggest = dict(con.execute("SELECT source, max(n_tokens) FROM aggregated_scores GROUP BY 1").fetchall())
    assert set(variants) == {"MIRA-global", "MIRA-group", "MIRA-source", "random"}
    at = {c: i for i, c in enumerate(cols)}
    total = sum(t for v, _, _, t, _ in per_source if v == "random")
    for name, row in variants.items():
        # the same budget: half of all tokens, within one record per source
        assert abs(row[at["tokens_kept"]] - total / 2) <= sum(biggest.values()), name
        assert row[at["heldout_kept"]] > 0 and 0 <= row[at["teacher_overall_kept"]] <= 100
        assert 0 <= row[at["jaccard_vs_current"]] <= 1
    assert variants["MIRA-source"][at["jaccard_vs_current"]] == 1.0  # the current scope against itself
    # per-source retention in every variant: each source within one record of half its tokens
    for variant, source, kept, total, _ in per_source:
        assert abs(kept - total / 2) <= biggest[source], (variant, source)
    # the selections differ: the scopes do not all keep the same records
    assert len({variants[v][at["jaccard_vs_current"]] for v in variants}) > 1
    assert "the variants at the same budget" in out["source"] and "MIRA-global" in out["source"]
