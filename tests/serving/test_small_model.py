"""A real small instruct model (SmolLM2-135M-Instruct on the CPU vLLM) scoring sample records with constrained
decoding on and off (issue 22): whatever it writes, every score stored is one its reply gives on that slot's line,
and its statuses are printed for docs/benchmarks.md. Its replies are weak (degenerate under the constraint, off the
format without it): a test of the parser and the checks against real text, not of scoring quality."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from pathlib import Path

import pytest

from mira_dagster.core.parsing import parse_reply
from mira_dagster.core.prompts import render_user
from mira_dagster.core.scoring import Job
from mira_dagster.io.anchors import load_rubric
from mira_dagster.io.llm_client import Endpoint
from mira_dagster.io.registry import load_config
from mira_dagster.io.scorers import make_scorer
from mira_dagster.io.store import ParquetReplyCache
from tests.conftest import SAMPLE
from tests.helpers import read_source, score_jobs
from tests.serving.conftest import MAX_MODEL_LEN, SMALL_MODEL

pytestmark = pytest.mark.vllm
N_RECORDS = 4


def _given(reply: str, slot: int, score: float) -> bool:
    """The reply gives `score` for slot `slot` on that slot's own line, as `s/10` (the only shape it writes)."""
    line = next((ln for ln in reply.splitlines() if ln.lstrip().startswith(f"[A{slot}]")), "")
    return re.search(rf"(?<![\d.]){score:g}(?:\.0)?\s*/\s*10", line) is not None


@pytest.mark.parametrize("constrained", ["on", "off"])
def test_every_stored_score_is_one_the_reply_gives(small_model_url: str, constrained: str, tmp_path: Path) -> None:
    cfg = load_config()
    cfg.pipeline.constrained_decoding = constrained  # type: ignore[assignment]
    rubric = load_rubric(cfg.groups["2"].anchors, "2", "qa_with_think")
    endpoint = Endpoint((small_model_url,), "EMPTY", SMALL_MODEL)
    spec, backend, where = make_scorer("student", cfg.scorer_units()["2"], cfg, rubric, endpoint)
    assert where.endswith(f"constrained decoding {constrained}")
    path = SAMPLE / "lean_deepseek_prover_v15_minif2f_valid_fewshot.jsonl"
    records = read_source("lean_qa", "2", "qa_with_think", [path]).records[:N_RECORDS]
    jobs = [Job(r, render_user(spec.user_template, rubric, r)) for r in records]
    outcomes, stats = asyncio.run(
        score_jobs(jobs, spec, backend, ParquetReplyCache(tmp_path), max_model_len=MAX_MODEL_LEN, max_in_flight=4)
    )
    assert stats.sent == N_RECORDS
    names = [d.name for d in rubric.dims]
    stored = 0
    for o in outcomes:
        assert o.completion is not None
        for slot, score in enumerate(o.result.scores, 1):
            if score is not None:
                stored += 1
                assert _given(o.completion.text, slot, score), (slot, score, o.completion.text[:2000])
        # the stored result is what the parser makes of the reply: nothing added on the way
        assert parse_reply(o.completion.text, o.completion.finish_reason, names).scores == o.result.scores
    statuses = Counter(o.result.status for o in outcomes)
    finish = Counter(o.completion.finish_reason for o in outcomes if o.completion)
    print(
        f"SmolLM2-135M-Instruct, constrained {constrained}: statuses {dict(statuses)}, finish {dict(finish)}, "
        f"slot scores stored {stored} of {15 * N_RECORDS}"
    )
    if constrained == "on":
        assert finish == {"stop": N_RECORDS}  # under the constraint every reply ends before max_tokens
