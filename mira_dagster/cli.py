"""`mira`: the command line. `mira run` materialises the whole pipeline on the persistent instance."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from mira_dagster.core.config import PROJECT_ROOT, ConfigError, load_config, mira_home

if TYPE_CHECKING:
    from dagster import DagsterInstance


def _prepare_env(config: str | None, home: str | None) -> Path:
    """Set MIRA_CONFIG / MIRA_HOME / DAGSTER_HOME before Dagster or our definitions are imported."""
    if config:
        os.environ["MIRA_CONFIG"] = str(Path(config).resolve())
    if home:
        os.environ["MIRA_HOME"] = str(Path(home).resolve())
    home_path = mira_home()
    if not os.environ.get("DAGSTER_HOME"):
        os.environ["DAGSTER_HOME"] = str(home_path / "dagster")
    dagster_home = Path(os.environ["DAGSTER_HOME"]).resolve()
    dagster_home.mkdir(parents=True, exist_ok=True)
    instance_yaml = dagster_home / "dagster.yaml"
    if not instance_yaml.exists():
        shutil.copyfile(PROJECT_ROOT / "dagster.yaml", instance_yaml)
    return home_path


def cmd_run(args: argparse.Namespace) -> int:
    home = _prepare_env(args.config, args.home)
    try:
        cfg = load_config()
    except ConfigError as exc:
        print(f"mira: {exc}", file=sys.stderr)
        return 2
    import dagster as dg

    from mira_dagster import definitions as d
    from mira_dagster.defs.partitions import register_sources
    from mira_dagster.defs.resources import MiraResource

    # Dagster's console logger prints every engine event at DEBUG; our own progress lines are INFO.
    run_config = {"loggers": {"console": {"config": {"log_level": "DEBUG" if args.verbose else "INFO"}}}}
    resources = {"mira": MiraResource()}
    sources = args.source or cfg.source_names()
    groups = sorted({cfg.sources[s].group for s in sources})
    steps: list[tuple[str, list, str | None]] = [
        *((f"{s}: raw_records", d.INGEST_ASSETS, s) for s in sources),
        ("all sources: source_groups", d.GROUPING_ASSETS, None),
        *((f"group {g}: teacher_judgments, anchor_rubric", d.DISCOVERY_ASSETS, g) for g in groups),
        *((f"{s}: teacher_labels, student_scores", d.SCORING_ASSETS, s) for s in sources),
        *((f"group {g}: distillation_dataset", d.DISTILL_ASSETS, g) for g in groups),
        ("corpus: reliability, mask, aggregates, selection variants, selected_subset, report", d.CORPUS_ASSETS, None),
    ]
    with dg.DagsterInstance.get() as instance:
        for run_id in release_dead_runs(instance):
            print(f"mira: run {run_id} of a `mira run` that died is marked failed and its pool slots freed")
        register_sources(instance, cfg.source_names())  # the partitions the sensor would add
        for i, (label, selection, partition) in enumerate(steps, 1):
            print(f"[{i}/{len(steps)}] {label}", flush=True)
            result = dg.materialize(
                d.ALL_ASSETS,
                selection=selection,
                partition_key=partition,
                instance=instance,
                resources=resources,
                raise_on_error=False,
                run_config=run_config,
                tags={"mira/entry": "mira run", PID_TAG: str(os.getpid())},
            )
            if not result.success:
                print(f"mira: {label} failed (run id {result.run_id}); see `dagster dev`.", file=sys.stderr)
                return 1
    print_summary(home)
    return 0


PID_TAG = "mira/pid"


def release_dead_runs(instance: DagsterInstance) -> list[str]:
    """Runs of a `mira run` that was killed stay "started" and keep their concurrency-pool slots, so the next one
    would wait for those slots forever. Mark them failed and free their slots; runs of live processes are left."""
    import dagster as dg

    in_progress = [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.NOT_STARTED]
    released = []
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=in_progress, tags={"mira/entry": "mira run"})):
        pid = run.tags.get(PID_TAG)
        if pid is None or _alive(int(pid)):
            continue
        instance.report_run_failed(run, f"its `mira run` process ({pid}) is gone")
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        released.append(run.run_id)
    return released


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def print_summary(home: Path) -> None:
    from tabulate import tabulate

    from mira_dagster.core.store import Store

    store = Store(home)
    df = store.query("run_summary")
    cols = ["source", "records_in", "records_scored", "records_kept", "tokens_in", "tokens_kept", "kept_token_share"]
    rows = [list(r) for r in df.select(cols).iter_rows()]
    totals = ["TOTAL", *(int(df[c].sum()) for c in cols[1:6])]
    totals.append(round(totals[5] / totals[4], 3) if totals[4] else 0.0)
    print()
    print(tabulate([*rows, totals], headers=cols, tablefmt="github"))
    print(f"\ncatalogue: {store.catalog_path}   export: {store.exports_dir / 'selected_subset'}")


def cmd_summary(args: argparse.Namespace) -> int:
    print_summary(_prepare_env(args.config, args.home))
    return 0


def cmd_regroup(args: argparse.Namespace) -> int:
    """Write a copy of the registry with the groups `source_groups` discovered (the switch from configured groups)."""
    import yaml

    from mira_dagster.core.store import Store

    home = _prepare_env(args.config, args.home)
    cfg = load_config()
    found = Store(home).read("source_groups")
    raw = yaml.safe_load(cfg.path.read_text(encoding="utf-8"))
    moved, refused = [], []
    for row in found.filter(~found["agrees"]).iter_rows(named=True):
        source, target = row["source"], row["cluster_group"]
        if cfg.sources[source].format != cfg.groups[target].family:
            refused.append(f"{source}: format {cfg.sources[source].format} cannot join group {target}")
            continue
        raw["sources"][source]["group"] = target
        moved.append(f"{source}: {row['configured_group']} -> {target}")
    # paths become absolute so the copy works from anywhere
    for g in raw["groups"].values():
        if g.get("anchors"):
            g["anchors"] = str((cfg.path.parent / g["anchors"]).resolve())
    for name, src in raw["sources"].items():
        src["files"] = [str(f) for f in cfg.sources[name].files]
    out = Path(args.out).resolve()
    out.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    load_config(out)  # it must validate
    print("\n".join(moved) or "every source already sits in its discovered group")
    for line in refused:
        print(f"not moved: {line}")
    print(f"written: {out}\nuse it with: MIRA_CONFIG={out} mira run")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mira", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fn, helptext in (
        ("run", cmd_run, "materialise the whole pipeline (all sources) and print the summary"),
        ("summary", cmd_summary, "print the per-source summary of the last run"),
        ("regroup", cmd_regroup, "write a registry copy that uses the groups source_groups discovered"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--config", help="source registry YAML (default: $MIRA_CONFIG or anchors/groups.yaml)")
        p.add_argument("--home", help="where data lands (default: $MIRA_HOME or .mira)")
        p.set_defaults(fn=fn)
    sub.choices["regroup"].add_argument("--out", default="groups.discovered.yaml", help="where to write the copy")
    run = sub.choices["run"]
    run.add_argument("--source", action="append", help="only this source (repeatable)")
    run.add_argument("-v", "--verbose", action="store_true", help="show Dagster's event log")
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
