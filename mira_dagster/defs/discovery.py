"""Stage 1: source grouping, free-form teacher judgments, the anchor rubric; and the distillation export. The
judgments, the rubric and the export are made once per scorer unit of pipeline.scorer_scope (a group by default,
"global", or a source)."""

import dagster as dg
import numpy as np
import polars as pl

from mira_dagster.core.clustering import group_sources, source_vector
from mira_dagster.core.config import MiraConfig, ScorerUnit
from mira_dagster.core.discovery import (
    JudgmentItem,
    configured_references,
    discover_anchors,
    item_text,
    items_of,
    judgment_items,
    judgments_frame,
)
from mira_dagster.core.embeddings import Embedder
from mira_dagster.core.records import record_text
from mira_dagster.core.rubric import N_SLOTS, discovered_anchor_name, generated_anchor_name, generated_for
from mira_dagster.core.scoring import Outcome, context_length, run_scorer
from mira_dagster.defs.conditions import FOLLOW_INPUTS, with_its_stage
from mira_dagster.defs.freshness import SOURCES_FINGERPRINT, sources_fingerprint
from mira_dagster.defs.metadata import md_table, table_metadata
from mira_dagster.defs.partitions import source_to_group, unit_partitions
from mira_dagster.defs.resources import MiraResource
from mira_dagster.io.anchors import load_rubric, write_anchor_file
from mira_dagster.io.cost import step_over_cap
from mira_dagster.io.scorers import make_judge
from mira_dagster.io.sending import judge_chunks, judge_records
from mira_dagster.io.sending import sample_records as _sample_records
from mira_dagster.io.sending import source_counts as _counts
from mira_dagster.io.sft import write_sft_file
from mira_dagster.io.store import Store


def _unit(cfg: MiraConfig, key: str) -> ScorerUnit:
    units = cfg.scorer_units()
    if key not in units:
        raise dg.Failure(
            description=(
                f"{key!r} is not a scorer unit of scorer_scope {cfg.pipeline.scorer_scope!r} "
                f"(its units: {', '.join(units) or 'none'}); `mira run` or the new_sources sensor updates the "
                "partitions"
            )
        )
    return units[key]


def _unit_empty(store: Store, unit: ScorerUnit) -> str | None:
    """Why the unit is skipped when none of its sources has records (counted by DuckDB, no id read out)."""
    if _counts(store, unit.sources):
        return None
    return f"{unit.scope} {unit.key}: no records in any of its sources ({', '.join(unit.sources) or 'none'})"


def _unit_file_name(unit: ScorerUnit) -> str:
    """group_<id> (the cards' naming), global, or source_<name>."""
    return "global" if unit.scope == "global" else f"{unit.scope}_{unit.key}"


def _unit_partition(unit: ScorerUnit) -> str:
    """The unit's partition of the per-unit tables: the group id (as before scopes existed), or as its file name,
    so that a source named like a group never overwrites the group's rows."""
    return unit.key if unit.scope == "group" else _unit_file_name(unit)


def _skip(context: dg.AssetExecutionContext, why: str, kept: str) -> dg.MaterializeResult:
    """Skipped with a warning: nothing is written, so what an earlier run made (`kept`) stays as it was."""
    context.log.warning(f"{context.asset_key.to_user_string()} skipped: {why}; {kept}")
    return dg.MaterializeResult(metadata={"skipped": why, "kept": kept})


@dg.asset(
    automation_condition=FOLLOW_INPUTS,
    group_name="discovery",
    kinds={"duckdb", "parquet"},
    deps=["raw_records"],
    description=(
        "Sources clustered into capability-coherent groups: a hashed sample of each source's records is embedded "
        "(offline hashed TF-IDF, or MIRA_EMBED_BASE_URL), averaged per source, and clustered with KMeans "
        "(source_group_k). Reports each cluster's intra-group cosine similarity and every source whose cluster "
        "disagrees with its configured group; the configured groups stay authoritative. Sources with 0 records are "
        "left out and listed in the metadata (`skipped`)."
    ),
)
def source_groups(context: dg.AssetExecutionContext, mira: MiraResource) -> dg.MaterializeResult:
    cfg, store = mira.config(), mira.store()
    present = _counts(store)
    # a source with 0 records (every line quarantined, say) has nothing to embed: it is left out and listed
    skipped = {n: "no records in raw_records" for n in cfg.source_names() if n not in present}
    if skipped:
        context.log.warning(f"source_groups: sources without records, left out: {sorted(skipped)}")
    if not present:
        raise dg.Failure(description="source_groups: no source has records in raw_records; nothing to cluster")
    # sampled by id in DuckDB; only the sampled records' text is read
    sample = _sample_records(store, None, cfg.pipeline.embed_sample_per_source, cfg.pipeline.seed, "embed")
    embedder = mira.embedder()
    x = embedder.embed([record_text(r) for r in sample.iter_rows(named=True)])
    sources = sample["source"].to_list()
    vectors = {s: source_vector(x[np.flatnonzero(np.array(sources) == s)]) for s in sorted(set(sources))}
    groups = group_sources(
        vectors, {s: cfg.sources[s].group for s in vectors}, cfg.pipeline.source_group_k, cfg.pipeline.seed
    )
    df = pl.DataFrame([g.model_dump() for g in groups]).with_columns(pl.lit(embedder.name).alias("embedder"))
    store.write("source_groups", df)
    disagree = df.filter(~pl.col("agrees"))["source"].to_list()
    if disagree:
        context.log.warning(f"sources whose discovered group differs from the configured one: {disagree}")
    clusters = (
        df.group_by("cluster")
        .agg(pl.col("source").sort().str.join(", ").alias("sources"), pl.col("intra_cluster_cosine").first())
        .sort("cluster")
    )
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": df.height,
            "clusters": md_table(clusters),
            "disagreements": dg.MetadataValue.json(disagree),
            "embedder": embedder.name,
            "records_embedded": sample.height,
            "skipped": dg.MetadataValue.json(skipped),
            SOURCES_FINGERPRINT: sources_fingerprint(cfg.source_names()),  # defs/freshness.py: sources changed
        }
    )


@dg.asset(
    automation_condition=FOLLOW_INPUTS,
    partitions_def=unit_partitions,
    group_name="discovery",
    kinds={"duckdb", "parquet"},
    deps=[dg.AssetDep("raw_records", partition_mapping=source_to_group), "source_groups"],
    pool="teacher",
    description=(
        "The teacher judges a stratified sample of the scorer unit's records freely (judge_sample_per_source per "
        "source): it names its own dimensions, scores each 0-10 and justifies it. Parsed into items "
        "(record, dimension, facet, score, rationale). Replies are cached like every scorer's. A unit whose sources "
        "all have 0 records is skipped with a warning (metadata `skipped`), keeping earlier judgments."
    ),
)
def teacher_judgments(context: dg.AssetExecutionContext, mira: MiraResource) -> dg.MaterializeResult:
    key = context.partition_key
    cfg, store = mira.config(), mira.store()
    unit = _unit(cfg, key)
    if empty := _unit_empty(store, unit):
        return _skip(context, empty, "earlier judgments of the unit, if any, are kept")
    records = judge_records(cfg, store, unit)  # io/sending.py: the records the cost plan counts
    spec, backend, where = make_judge(unit, cfg, mira.endpoint("teacher", unit.key))
    if refused := step_over_cap(cfg, store, "teacher_judgments", key, spec, backend, None):
        raise dg.Failure(description=refused)
    context.log.info(
        f"judging {len(records)} records of {unit.scope} {key} freely: {where}, context "
        f"{context_length(backend, cfg.pipeline.max_model_len)}"
    )
    replies: dict[str, Outcome] = {}
    stats = run_scorer(
        judge_chunks(records),
        spec,
        backend,
        store.replies,
        cfg.pipeline,
        sink=lambda job, out: replies.__setitem__(job.record.record_id, out),
        total=len(records),
        reask=False,  # free-form replies never parse as the scoring contract
        progress=lambda s: context.log.info(f"judgments {key}: {s.line()}"),
    )
    answered = [(r, o.completion.text) for r in records if (o := replies[r.record_id]).completion is not None]
    df = judgments_frame(judgment_items(answered)).with_columns(
        pl.lit(key).alias("scorer_unit"),
        pl.lit(unit.scope).alias("scorer_scope"),
        pl.lit(spec.version).alias("judge_version"),
    )
    store.write("teacher_judgments", df, _unit_partition(unit))
    unanswered = len(records) - len(answered)
    names = df.group_by("dimension").len().sort("len", descending=True)
    return dg.MaterializeResult(
        metadata={
            **table_metadata(df, ["source", "dimension", "facet", "score", "rationale"]),
            "records_judged": len(records),
            "records_without_reply": unanswered,
            "distinct_dimension_names": names.height,
            "top_names": md_table(names, n=20),
            "requests_sent": stats.sent,
            "from_cache": stats.from_cache,
            "too_long": stats.too_long,
            SOURCES_FINGERPRINT: sources_fingerprint(unit.sources),  # defs/freshness.py: the unit's sources changed
        }
    )


@dg.asset(
    automation_condition=with_its_stage("teacher_judgments"),
    partitions_def=unit_partitions,
    group_name="discovery",
    kinds={"duckdb", "parquet"},
    deps=["teacher_judgments"],
    description=(
        "The scorer unit's 15 anchor dimensions: the judgment items are embedded and clustered (KMeans k=15), slots "
        "sorted by cluster size and named by their most frequent dimension name, with a parenthetical sub-label where "
        "two clusters would share a name; the item nearest each centroid of the 12 largest clusters is a calibration "
        "reference. Written to $MIRA_HOME/anchors/group_<id>_dim_anchors.jsonl (global_dim_anchors.jsonl, "
        "source_<name>_dim_anchors.jsonl in the other scopes); scorers use it when the unit has no configured "
        "anchors (only groups have them) or pipeline.rubric_source is 'discovered' (a new file is a new "
        "scorer_version). A group whose configured anchors file has no calibration references gets them from the "
        "same judgments (each item joins the configured slot it is nearest to; the item nearest the centre of each of "
        "the 12 largest of those clusters), written with their provenance to "
        "$MIRA_HOME/anchors/group_<id>_dim_anchors.generated.jsonl, which its scorers then use (the shipped file is "
        "never changed; one with references is used as it is). The generated file is kept while the configured file "
        "is unchanged (new references would re-score the whole group): delete it to draw them again. A unit whose "
        "sources all have 0 records is skipped with a warning (metadata `skipped`): an existing rubric stays."
    ),
)
def anchor_rubric(context: dg.AssetExecutionContext, mira: MiraResource) -> dg.MaterializeResult:
    key = context.partition_key
    cfg, store = mira.config(), mira.store()
    unit = _unit(cfg, key)
    name = discovered_anchor_name(key, unit.scope)
    path = store.home / name  # with a store URL, the local copy published below
    if empty := _unit_empty(store, unit):
        kept = f"the existing rubric {store.location(name)} is kept" if store.fetch_file(name) else "no rubric written"
        return _skip(context, empty, kept)
    df = store.read("teacher_judgments", _unit_partition(unit))
    items = items_of(df)
    if len(items) < N_SLOTS:
        raise ValueError(
            f"{unit.scope} {key}: {len(items)} judgment items, at least {N_SLOTS} are needed for {N_SLOTS} slots"
        )
    embedder = mira.embedder()
    found = discover_anchors(items, embedder.embed([item_text(i) for i in items]), seed=cfg.pipeline.seed)
    write_anchor_file(path, found.dims)
    location = store.publish_file(name)
    table = pl.DataFrame(
        [
            {
                "scorer_unit": key,
                "scorer_scope": unit.scope,
                "slot": d.slot,
                "name": d.name,
                "cluster_size": d.cluster_size,
                "facet": d.facet,
                "references": len(d.calibration_references),
            }
            for d in found.dims
        ]
    )
    store.write("anchor_rubric", table, _unit_partition(unit))
    in_use = "discovered" if unit.anchors is None or cfg.pipeline.rubric_source == "discovered" else "configured"
    references = _configured_references(store, unit, items, embedder, df["judge_version"].unique().sort().to_list())
    if references.startswith("written"):
        context.log.info(f"{unit.scope} {key}: calibration references for the configured rubric {references}")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": table.height,
            "slots": md_table(table.drop("scorer_unit", "scorer_scope"), n=N_SLOTS),
            "anchor_file": dg.MetadataValue.path(location),
            "in_use_by_scorers": in_use,
            "embedder": embedder.name,
            "configured_references": references,
        }
    )


def _configured_references(
    store: Store, unit: ScorerUnit, items: list[JudgmentItem], embedder: Embedder, judge_versions: list[str]
) -> str:
    """Write the generated copy of the unit's configured anchors file with references from the judgments, when the
    file has none; say what was done (the metadata's `configured_references`)."""
    if unit.anchors is None:
        return "no configured anchors file"
    configured = load_rubric(unit.anchors, unit.key, unit.family)
    if configured.n_references():
        return f"{unit.anchors.name} has {configured.n_references()} of its own: used as it is"
    name = generated_anchor_name(unit.key, unit.scope)
    existing = store.fetch_file(name)
    if existing is not None and generated_for(load_rubric(existing, unit.key, unit.family), configured):
        # kept: new references would be a new scorer_version, every record of the group asked again
        return f"kept {store.location(name)} (made from this file; delete it to draw them from the latest judgments)"
    # slot names and items in one batch: the offline TF-IDF weighs words over the batch it embeds
    x = embedder.embed([d.name for d in configured.dims] + [item_text(i) for i in items])
    n = len(configured.dims)
    dims = configured_references(
        configured.dims,
        items,
        x[:n],
        x[n:],
        configured_file=unit.anchors.name,
        configured_sha256=configured.file_sha256,
        judge_version=",".join(judge_versions),
        embedder=embedder.name,
    )
    write_anchor_file(store.home / name, dims)
    location = store.publish_file(name)
    slots = ", ".join(f"A{d.slot}" for d in dims if d.calibration_references)
    return f"written to {location}: {sum(len(d.calibration_references) for d in dims)} ({slots})"


@dg.asset(
    automation_condition=FOLLOW_INPUTS,
    partitions_def=unit_partitions,
    group_name="teacher",
    kinds={"jsonl"},
    deps=[dg.AssetDep("teacher_labels", partition_mapping=source_to_group), "anchor_rubric"],
    description=(
        "The teacher's labels of the `distill` split as chat-format SFT data (system, user, assistant in the "
        "contract format), one file per scorer unit: $MIRA_HOME/exports/distillation/group_<id>.jsonl (global.jsonl, "
        "source_<name>.jsonl in the other scopes), the data to train that unit's student. Held-out records never "
        "appear in it. A unit whose sources all have 0 records is skipped with a warning (metadata `skipped`)."
    ),
)
def distillation_dataset(context: dg.AssetExecutionContext, mira: MiraResource) -> dg.MaterializeResult:
    key = context.partition_key
    store = mira.store()
    unit = _unit(mira.config(), key)
    name = f"exports/distillation/{_unit_file_name(unit)}.jsonl"
    out = store.home / name  # with a store URL, the local copy published below
    if empty := _unit_empty(store, unit):
        kept = f"the existing {store.location(name)} is kept" if store.fetch_file(name) else "nothing written"
        return _skip(context, empty, kept)
    rubric = mira.rubric(key)
    spec, _, _ = mira.scorer("teacher", key, rubric)
    # ids only (capped by teacher_sample_max per source); the text and the replies stream in io/sft.py
    labels = store.query("distill_labels", sources=unit.sources)
    stale = labels.filter(pl.col("scorer_version") != spec.version).height
    labels = labels.filter(pl.col("scorer_version") == spec.version)
    counts = write_sft_file(out, store, labels, spec, rubric)
    location = store.publish_file(name)
    context.log.info(f"{unit.scope} {key}: {sum(counts.values())} distillation examples written to {location}")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": sum(counts.values()),
            "per_source": dg.MetadataValue.json(counts),
            "stale_labels_skipped": stale,
            "path": dg.MetadataValue.path(location),
            SOURCES_FINGERPRINT: sources_fingerprint(unit.sources),  # defs/freshness.py: the unit's sources changed
        }
    )
