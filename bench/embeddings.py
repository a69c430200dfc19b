"""Stage 1 with the offline hashed TF-IDF next to a real embedding model, on the bundled sample.

    python bench/embeddings.py                        # hashed TF-IDF only
    MIRA_EMBED_BASE_URL=http://127.0.0.1:8031/v1 python bench/embeddings.py   # and the served model next to it

The sample is ingested and judged once (offline judge) through Dagster in a temporary MIRA_HOME; then, for each
embedder, what `source_groups` and `anchor_rubric` compute is recomputed from those tables with the same functions:
- source grouping: the clusters, each one's intra-cluster cosine, whether the six math and the three agent sources
  separate, and the mean cosine between source vectors of the same configured group and of different groups;
- discovery on the sample's judgment items, whose planted facet is known from the name the offline judge gave it:
  slots whose majority facet is theirs alone (one-to-one, of 15; at pipeline.seed and KMeans seeds 1-3), item
  purity, adjusted Rand index, and how many distinct facets the 15 slot names stand for;
- discovery on the synthetic corpus of tests/core/test_discovery.py (15 planted facets, seeds 0-2): one-to-one slots;
- the seconds spent embedding.
The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from itertools import combinations
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dagster as dg  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
from sklearn.metrics import adjusted_rand_score  # noqa: E402

from mira_dagster import definitions as d  # noqa: E402
from mira_dagster.core.clustering import group_sources, source_vector  # noqa: E402
from mira_dagster.core.config import MiraConfig  # noqa: E402
from mira_dagster.core.discovery import JudgmentItem, discover_anchors, item_text  # noqa: E402
from mira_dagster.core.embeddings import Embedder, HashedTfidfEmbedder, dense  # noqa: E402
from mira_dagster.core.offline_judge import catalogue  # noqa: E402
from mira_dagster.core.records import record_text  # noqa: E402
from mira_dagster.core.sampling import hash_sample  # noqa: E402
from mira_dagster.defs.partitions import in_process_instance  # noqa: E402
from mira_dagster.defs.resources import MiraResource  # noqa: E402
from mira_dagster.io.embedding_client import OpenAIEmbedder
from mira_dagster.io.registry import load_config
from tests.core.test_discovery import planted_items  # noqa: E402


def prepare(home: Path) -> tuple[MiraConfig, pl.DataFrame, pl.DataFrame]:
    """raw_records and teacher_judgments of the whole sample (offline judge, hashed TF-IDF for source_groups)."""
    os.environ.pop("MIRA_EMBED_BASE_URL", None)
    mira, instance, cfg = MiraResource(home=str(home)), in_process_instance(), load_config()

    def run(assets: list, partition: str | None = None) -> None:
        res = dg.materialize(
            d.ALL_ASSETS, selection=assets, partition_key=partition, instance=instance, resources={"mira": mira}
        )
        assert res.success, (assets, partition)

    for source in cfg.source_names():
        run(d.INGEST_ASSETS, source)
    run(d.GROUPING_ASSETS)
    for group in cfg.groups:
        run(d.DISCOVERY_ASSETS[:1], group)
    return cfg, mira.store().read("raw_records"), mira.store().read("teacher_judgments")


def grouping(cfg: MiraConfig, raw: pl.DataFrame, embedder: Embedder) -> dict[str, Any]:
    p = cfg.pipeline
    sample = pl.concat(
        hash_sample(part, p.embed_sample_per_source, p.seed, "embed") for _, part in raw.group_by("source")
    ).sort("source", "record_id")
    t0 = time.perf_counter()
    x = dense(embedder.embed([record_text(r) for r in sample.iter_rows(named=True)]))
    seconds = time.perf_counter() - t0
    src = np.array(sample["source"].to_list())
    vectors = {s: source_vector(x[src == s]) for s in sorted(set(src))}
    configured = {s: cfg.sources[s].group for s in vectors}
    groups = group_sources(vectors, configured, p.source_group_k, p.seed)
    clusters = {g.cluster: (sorted(g.cluster_sources), g.intra_cluster_cosine) for g in groups}
    by_group = {grp: {g.cluster for g in groups if g.configured_group == grp} for grp in set(configured.values())}
    same, cross = [], []
    for a, b in combinations(sorted(vectors), 2):
        (same if configured[a] == configured[b] else cross).append(float(vectors[a] @ vectors[b]))
    return {
        "clusters": [{"sources": s, "intra_cosine": c} for s, c in clusters.values()],
        "separated": all(len(c) == 1 for c in by_group.values()) and len(set().union(*by_group.values())) == 2,
        "same_group_cosine": round(float(np.mean(same)), 3),
        "cross_group_cosine": round(float(np.mean(cross)), 3),
        "records": sample.height,
        "seconds": round(seconds, 1),
    }


def recovery(truth: list[int], slots: list[int]) -> tuple[int, float]:
    """(slots whose majority planted facet no other slot has, share of items in their slot's majority facet)."""
    majority = {s: Counter(t for t, sl in zip(truth, slots, strict=True) if sl == s).most_common(1) for s in set(slots)}
    counts = Counter(m[0][0] for m in majority.values())
    one_to_one = sum(counts[m[0][0]] == 1 for m in majority.values())
    return one_to_one, sum(m[0][1] for m in majority.values()) / len(truth)


def planted_facet(family: str) -> dict[str, int]:
    """The offline judge's surface names -> the index of the latent facet they name (names are unique)."""
    out = {name: i for i, (_, names, _) in enumerate(catalogue(family)) for name in names}  # type: ignore[arg-type]
    assert len(out) == sum(len(n) for _, n, _ in catalogue(family))  # type: ignore[arg-type]
    return out


KMEANS_SEEDS = (0, 1, 2, 3)  # the first is replaced by pipeline.seed


def discovery(cfg: MiraConfig, judgments: pl.DataFrame, group: str, embedder: Embedder) -> dict[str, Any]:
    rows = judgments.filter(pl.col("source").is_in([s for s, c in cfg.sources.items() if c.group == group]))
    items = [JudgmentItem(**{k: r[k] for k in JudgmentItem.model_fields}) for r in rows.iter_rows(named=True)]
    names = planted_facet(cfg.groups[group].family)
    truth = [names[i.dimension] for i in items]
    t0 = time.perf_counter()
    x = embedder.embed([item_text(i) for i in items])
    seconds = time.perf_counter() - t0
    found = discover_anchors(items, x, seed=cfg.pipeline.seed)
    one_to_one, purity = recovery(truth, found.item_slots)
    named = {names[dim.name.split(" (")[0]] for dim in found.dims}
    other_seeds = [recovery(truth, discover_anchors(items, x, seed=s).item_slots)[0] for s in KMEANS_SEEDS[1:]]
    return {
        "items": len(items),
        "one_to_one": [one_to_one, *other_seeds],
        "purity": round(purity, 3),
        "ari": round(adjusted_rand_score(truth, found.item_slots), 3),
        "facets_named": len(named),
        "seconds": round(seconds, 1),
    }


def synthetic(embedder: Embedder) -> list[int]:
    out = []
    for seed in (0, 1, 2):
        items, truth = planted_items(seed)
        found = discover_anchors(items, embedder.embed([item_text(i) for i in items]), seed=seed)
        out.append(recovery(truth, found.item_slots)[0])
    return out


def measure(cfg: MiraConfig, raw: pl.DataFrame, judgments: pl.DataFrame, embedder: Embedder) -> dict[str, Any]:
    return {
        "embedder": embedder.name,
        "grouping": grouping(cfg, raw, embedder),
        **{f"discovery_{g}": discovery(cfg, judgments, g, embedder) for g in cfg.groups},
        "synthetic_one_to_one": synthetic(embedder),
    }


def table(results: list[dict[str, Any]]) -> str:
    head = "| | " + " | ".join(r["embedder"] for r in results) + " |\n|---|" + "---|" * len(results)
    lines = [head]

    def row(label: str, cell: Any) -> None:
        lines.append(f"| {label} | " + " | ".join(str(cell(r)) for r in results) + " |")

    row("math (6) and agent (3) sources separate", lambda r: "yes" if r["grouping"]["separated"] else "no")
    for i in range(2):
        row(f"cluster {i + 1}: sources, intra-cluster cosine", lambda r, i=i: _cluster(r["grouping"]["clusters"][i]))
    row("mean cosine, same group / across groups", lambda r: _pair(r["grouping"]))
    for g in ("2", "D"):
        key = f"discovery_{g}"
        row(f"group {g}: one-to-one slots of 15, KMeans seeds 0/1/2/3", lambda r, k=key: _seeds(r[k]["one_to_one"]))
        row(f"group {g}: item purity / ARI (seed 0)", lambda r, k=key: f"{r[k]['purity']} / {r[k]['ari']}")
        row(f"group {g}: planted facets named by the 15 slots", lambda r, k=key: r[k]["facets_named"])
    row("synthetic corpus: one-to-one slots, seeds 0/1/2", lambda r: _seeds(r["synthetic_one_to_one"]))
    row("seconds embedding: records / items 2 / items D", lambda r: _seconds(r))
    return "\n".join(lines)


def _seeds(values: list[int]) -> str:
    return "/".join(map(str, values))


def _cluster(c: dict[str, Any]) -> str:
    return f"{len(c['sources'])} ({', '.join(c['sources'])}), {c['intra_cosine']:.3f}"


def _pair(g: dict[str, Any]) -> str:
    return f"{g['same_group_cosine']:.3f} / {g['cross_group_cosine']:.3f}"


def _seconds(r: dict[str, Any]) -> str:
    return f"{r['grouping']['seconds']} / {r['discovery_2']['seconds']} / {r['discovery_D']['seconds']}"


def main() -> None:
    url = os.environ.get("MIRA_EMBED_BASE_URL")
    embedders: list[Embedder] = [HashedTfidfEmbedder()]
    if url:
        model = os.environ.get("MIRA_EMBED_MODEL") or None
        embedders.append(OpenAIEmbedder(url, model, os.environ.get("MIRA_EMBED_API_KEY") or "EMPTY"))
    else:
        print("MIRA_EMBED_BASE_URL is not set: hashed TF-IDF only")
    with tempfile.TemporaryDirectory() as home:
        cfg, raw, judgments = prepare(Path(home))
        results = [measure(cfg, raw, judgments, e) for e in embedders]
    print(
        f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}"
    )
    print(table(results))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
