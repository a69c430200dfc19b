"""Stage 1 (source grouping, rubric discovery) through a real vLLM embedding server with all-MiniLM-L6-v2.

The thresholds are what bench/embeddings.py measured on the sample (README, "Stage 1 with real embeddings"), with
a margin: math cluster intra-cosine 0.579, agent 0.348; slot names standing for 14 (group 2) and 15 (group D) of
the 15 planted facets.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pytest

from mira_dagster import definitions as d
from mira_dagster.core.offline_judge import catalogue
from mira_dagster.defs.partitions import in_process_instance
from mira_dagster.defs.resources import MiraResource
from mira_dagster.io.embedding_client import EmbeddingError, OpenAIEmbedder
from mira_dagster.io.registry import load_config
from tests.conftest import SAMPLE
from tests.serving.conftest import EMBED_MODEL

pytestmark = pytest.mark.vllm

MINILM = f"openai:{EMBED_MODEL}"


def embedding_requests(base_v1: str) -> float:
    """vLLM's own count of successful /v1/embeddings requests."""
    text = urllib.request.urlopen(base_v1.removesuffix("/v1") + "/metrics", timeout=10).read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("http_requests_total{") and 'handler="/v1/embeddings"' in line and 'status="2xx"' in line
    )


def test_minilm_embedder_is_the_real_model(embed_url: str) -> None:
    long = (SAMPLE / "lean_kimina_prover_minif2f_test_solved.jsonl").read_text()[:4000]  # ~1,500 tokens > 256
    emb = OpenAIEmbedder(embed_url, batch_size=2)  # no model name: the endpoint's only model
    x = emb.embed(["a proof by induction", "an inductive proof", "fix the failing unit test", long])
    assert emb.name == MINILM
    assert x.shape == (4, 384)
    assert np.allclose(np.linalg.norm(x, axis=1), 1.0)
    assert x[0] @ x[1] > 0.8 and x[0] @ x[2] < 0.2  # meaning, not shared words: 0.84 and 0.11 with MiniLM
    assert emb.truncate  # the long input was cut at 256 tokens instead of failing the batch
    with pytest.raises(EmbeddingError, match=f"{embed_url} \\(model nope\\).*does not exist"):
        OpenAIEmbedder(embed_url, "nope").embed(["x"])


@pytest.fixture(scope="module")
def discovered(embed_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dg.DagsterInstance, Path]]:
    """The whole sample through ingest, source_groups and both groups' discovery, embedding with MiniLM."""
    home = tmp_path_factory.mktemp("home")
    mira, instance, cfg = MiraResource(home=str(home)), in_process_instance(), load_config()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MIRA_EMBED_BASE_URL", embed_url)
        mp.setenv("MIRA_EMBED_MODEL", EMBED_MODEL)
        before = embedding_requests(embed_url)
        for source in cfg.source_names():
            _run(mira, instance, d.INGEST_ASSETS, source)
        _run(mira, instance, d.GROUPING_ASSETS)
        for group in ("2", "D"):
            _run(mira, instance, d.DISCOVERY_ASSETS, group)
        # 264 sampled records and 1,624 judgment items, 64 a request
        assert embedding_requests(embed_url) - before >= 3 + 23 + 3
    yield instance, home


def _run(mira: MiraResource, instance: dg.DagsterInstance, assets: list, partition: str | None = None) -> None:
    res = dg.materialize(
        d.ALL_ASSETS, selection=assets, partition_key=partition, instance=instance, resources={"mira": mira}
    )
    assert res.success


def _metadata(instance: dg.DagsterInstance, asset: str, partition: str | None = None) -> dict:
    """The metadata of the asset's (partition's) latest materialisation."""
    flt = dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition] if partition else None)
    (record,) = instance.fetch_materializations(flt, limit=1).records
    return record.asset_materialization.metadata


def test_source_groups_with_minilm(discovered: tuple[dg.DagsterInstance, Path]) -> None:
    instance, home = discovered
    assert _metadata(instance, "source_groups")["embedder"].value == MINILM
    with duckdb.connect(str(home / "mira.duckdb"), read_only=True) as con:
        rows = con.execute(
            "SELECT source, configured_group, cluster, agrees, intra_cluster_cosine, embedder FROM source_groups"
        ).fetchall()
    clusters: dict[str, set[int]] = {}
    intra: dict[str, float] = {}
    for source, group, cluster, agrees, cosine, embedder in rows:
        assert agrees and embedder == MINILM, source
        clusters.setdefault(group, set()).add(cluster)
        intra[group] = cosine
    assert sum(g == "2" for _, g, *_ in rows) == 6 and sum(g == "D" for _, g, *_ in rows) == 3
    assert len(clusters["2"]) == 1 and len(clusters["D"]) == 1 and clusters["2"] != clusters["D"]
    assert intra["2"] > 0.5 and intra["D"] > 0.3  # hashed TF-IDF: 0.347 and 0.192


@pytest.mark.parametrize(("group", "min_facets"), [("2", 13), ("D", 14)])
def test_anchor_rubric_with_minilm(discovered: tuple[dg.DagsterInstance, Path], group: str, min_facets: int) -> None:
    instance, home = discovered
    assert _metadata(instance, "anchor_rubric", group)["embedder"].value == MINILM
    lines = [json.loads(x) for x in (home / "anchors" / f"group_{group}_dim_anchors.jsonl").read_text().splitlines()]
    assert [x["slot"] for x in lines] == list(range(1, 16))
    assert len({x["name"] for x in lines}) == 15
    assert sum(bool(x["calibration_references"]) for x in lines) == 12
    # the offline judge names each planted facet with several synonyms: which facets the 15 slot names stand for
    facet_of = {
        name: i for i, (_, names, _) in enumerate(catalogue(load_config().groups[group].family)) for name in names
    }
    named = {facet_of[x["name"].split(" (")[0]] for x in lines}
    assert len(named) >= min_facets
    # each calibration reference, the item nearest its cluster's centre, is of the facet its slot is named for
    refs = [(x["name"].split(" (")[0], x["calibration_references"][0]) for x in lines if x["calibration_references"]]
    assert all(facet_of[r["source_dimension"]] == facet_of[name] for name, r in refs)
