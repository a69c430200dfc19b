"""Scoring a source partition through Dagster against a real vLLM server."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from mira_dagster.definitions import ALL_ASSETS, PARTITIONED_ASSETS
from mira_dagster.defs.partitions import in_process_instance
from mira_dagster.defs.resources import MiraResource
from tests.conftest import SAMPLE
from tests.serving.conftest import chat_requests

pytestmark = pytest.mark.vllm

RAW, TEACHER, STUDENT = PARTITIONED_ASSETS
ALL = ALL_ASSETS
N_SHORT, N_LONG = 12, 3


@pytest.fixture
def mixed_source(small_config: Path) -> Path:
    """lean_qa = 12 short DeepSeek-Prover records + the 3 longest Kimina records (too long for 8192)."""
    short = (SAMPLE / "lean_deepseek_prover_v15_minif2f_valid_fewshot.jsonl").read_text().splitlines()[:N_SHORT]
    kimina = (SAMPLE / "lean_kimina_prover_minif2f_test_solved.jsonl").read_text().splitlines()
    long = sorted(kimina, key=len)[-N_LONG:]
    data = small_config.parent / "data" / "mixed.jsonl"
    data.write_text("\n".join(short + long) + "\n")
    text = (
        small_config.read_text()
        .replace("data/lean_deepseek_prover_v15_minif2f_valid_fewshot.jsonl", "data/mixed.jsonl")
        .replace("pipeline: {", "pipeline: {constrained_rationale_chars: 40, max_in_flight: 8, ")
    )
    small_config.write_text(text)
    assert all(len(json.loads(x)["cot"]) > 30000 for x in long)
    return small_config


def test_vllm_partition_end_to_end(
    vllm_url: str, mixed_source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MIRA_STUDENT_BASE_URL", vllm_url)
    mira = MiraResource(config_path=str(mixed_source), home=str(tmp_path / "home"))
    instance = in_process_instance()
    before = chat_requests(vllm_url)
    res = dg.materialize(
        ALL, selection=[RAW, STUDENT], partition_key="lean_qa", instance=instance, resources={"mira": mira}
    )
    assert res.success
    after = chat_requests(vllm_url)
    df = pl.read_parquet(tmp_path / "home" / "tables" / "student_scores" / "lean_qa.parquet")
    assert df.height == N_SHORT + N_LONG
    assert sorted(df["status"].to_list()) == sorted(["ok"] * N_SHORT + ["too_long"] * N_LONG)
    assert after.get("2xx", 0) - before.get("2xx", 0) == N_SHORT  # too-long records were never sent
    assert after.get("4xx", 0) == before.get("4xx", 0)  # zero HTTP 400s for length
    ok = df.filter(pl.col("status") == "ok")
    assert ok.select([f"a{i}" for i in range(1, 16)]).null_count().sum_horizontal().item() == 0
    assert ok["prompt_tokens"].min() > 0 and ok["completion_tokens"].min() > 0
    assert ok["cached_tokens"].sum() > 0  # the shared system prompt came from vLLM's prefix cache
    meta = instance.get_latest_materialization_event(dg.AssetKey("student_scores")).asset_materialization.metadata
    assert meta["requests_sent"].value == N_SHORT
    assert meta["tokenize_calls"].value >= N_LONG
    assert meta["status_counts"].value["too_long"] == N_LONG

    # a second materialisation sends zero chat requests
    res = dg.materialize(
        ALL, selection=[RAW, STUDENT], partition_key="lean_qa", instance=instance, resources={"mira": mira}
    )
    assert res.success
    assert chat_requests(vllm_url) == after
    again = pl.read_parquet(tmp_path / "home" / "tables" / "student_scores" / "lean_qa.parquet")
    assert again.sort("record_id")["a1"].to_list() == df.sort("record_id")["a1"].to_list()
