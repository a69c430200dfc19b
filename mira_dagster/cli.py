"""`mira`: the command line. `mira run` brings the whole pipeline up to date on the persistent instance: through
its Dagster daemon when one is running (handoff.py), else by evaluating the same automation conditions tick by tick
in its own process (local_run.py)."""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from mira_dagster.core.config import ConfigError, MiraConfig
from mira_dagster.io.registry import load_config, read_yaml
from mira_dagster.settings import load_project_env, load_registry, mira_home, open_store

if TYPE_CHECKING:
    from dagster import DagsterInstance

    from mira_dagster.defs.freshness import Evaluation


def _prepare_env(config: str | None, home: str | None) -> Path:
    """Set MIRA_CONFIG / MIRA_HOME / DAGSTER_HOME before Dagster or our definitions are imported."""
    if config:
        os.environ["MIRA_CONFIG"] = str(Path(config).resolve())
    if home:
        os.environ["MIRA_HOME"] = str(Path(home).resolve())
    from mira_dagster.instance import dagster_home, ensure_instance

    home_path = mira_home()
    # the instance as `mira init` / `make setup` make it: folder, dagster.yaml, storage (once, locked)
    os.environ["DAGSTER_HOME"] = str(ensure_instance(dagster_home()))
    return home_path


def _home_and_registry(args: argparse.Namespace) -> tuple[Path, MiraConfig | None]:
    """The environment set up from --config/--home and the registry loaded; None (after one line saying why) when
    the registry cannot be read."""
    home = _prepare_env(args.config, args.home)
    try:
        return home, load_registry()
    except ConfigError as exc:
        print(f"mira: {exc}", file=sys.stderr)
        return home, None


def _unknown(what: str, names: list[str], known: list[str], registry: Path) -> int:
    """A name the registry does not have: one line saying which names it does have; exit code 2."""
    print(f"mira: unknown {what} {', '.join(names)} (the registry {registry} has {', '.join(known)})", file=sys.stderr)
    return 2


def stages() -> list[tuple[str, tuple[str, ...], str]]:
    """The stages in the order they run, one Dagster run per partition each: which assets, partitioned how."""
    from mira_dagster.defs.freshness import CORPUS, SCORING

    return [
        ("ingest", ("raw_records",), "source"),
        ("grouping", ("source_groups",), "all"),
        ("discovery", ("teacher_judgments", "anchor_rubric"), "unit"),
        ("scoring", SCORING, "source"),
        ("distill", ("distillation_dataset",), "unit"),
        ("corpus", CORPUS, "all"),
    ]


def cmd_run(args: argparse.Namespace) -> int:
    home, cfg = _home_and_registry(args)
    if cfg is None:
        return 2
    if unknown := sorted(set(args.source or []) - set(cfg.source_names())):
        return _unknown("source(s)", unknown, cfg.source_names(), cfg.path)
    import dagster as dg

    from mira_dagster.defs.daemon import daemon_running
    from mira_dagster.defs.freshness import Evaluation, local, record_request, withdraw_request
    from mira_dagster.defs.partitions import register_partitions
    from mira_dagster.defs.resources import mira_resource
    from mira_dagster.handoff import follow, start_daemon
    from mira_dagster.io.cost import cost_gate
    from mira_dagster.local_run import run_locally

    # Dagster's console logger prints every engine event; quiet by default (our one line per stage, the failures,
    # the summary), everything with -v. The event log itself is in the instance either way.
    if not args.verbose:
        quiet_dagster_failures()
    mira = mira_resource()  # MIRA_CONFIG, MIRA_HOME (set above from --config, --home) and the rest as dg.EnvVar
    sources = args.source or cfg.source_names()
    units = sorted({cfg.unit_of(s).key for s in sources})
    scope = {"source": sources, "unit": units, "all": [None]}
    with dg.DagsterInstance.get() as instance:
        register_partitions(instance, cfg)  # the partitions the sensor would add
        if args.plan:
            with local(args.source):
                return print_plan(Evaluation(instance, mira, retry=True), cfg, scope, sources, args.force, mira)
        if args.daemon and not daemon_running(instance):
            try:
                print(f"mira: {start_daemon(instance, Path(instance.root_directory))}", flush=True)
            except RuntimeError as exc:
                print(f"mira: {exc}", file=sys.stderr)
                return 1
        if daemon_running(instance):  # the daemon runs the work; two orchestrators never race over one instance
            ev = Evaluation(instance, mira, retry=True)
            discovery = next(assets for name, assets, _ in stages() if name == "discovery")
            judged = {p for p, *_ in stage_runs(ev, "discovery", discovery, units, force=args.force)[0]}
            if (code := cost_gate(cfg, mira.store(), paid_runs(cfg, sources, judged), mira.endpoint)) is not None:
                return code
            ran, failures, warned = follow(instance, mira, stages(), args.source, args.force, args.verbose)
            if failures:
                return _failed(home, cfg, instance, failures, warned)
            return _succeeded(home, cfg, instance, ran, warned)
        for run_id in release_dead_runs(instance):
            print(f"mira: run {run_id} of a `mira run` that died is marked failed and its pool slots freed")
        # retry incomplete work (and --force), as for the daemon; taken back if the cost gate refuses
        request = record_request(instance, args.force, args.source)

        def gate(judged: set[str]) -> int | None:
            # cost before spending: the plan (and max_teacher_requests) before the first run that may send, counting
            # the judgments of the units whose discovery runs and the scoring of the sources (io/cost.py)
            return cost_gate(cfg, mira.store(), paid_runs(cfg, sources, judged), mira.endpoint)

        def report(result: object, where: str) -> tuple[list[str], list[str]]:
            return failure_lines(result, where), warning_lines(result, where)

        # the automation conditions decide, as the daemon's sensor would, tick by tick in this process (local_run.py)
        done = run_locally(instance, mira, stages(), args.source, args.verbose, gate, report)
        if done.stopped and not done.failures:
            withdraw_request(instance, request)  # a refused command leaves no --force for a later daemon to act on
            return 1  # the cost gate refused, in one line
        if done.failures:
            return _failed(home, cfg, instance, done.failures, done.warnings)
        if held := still_stale(instance, mira, args.source):
            return _failed(home, cfg, instance, held, done.warnings)
        skipped = [
            _label(cfg, name, assets, partition)
            for name, assets, per in stages()
            for partition in scope[per]
            if (name, partition) not in done.steps
        ]
        if skipped and done.ran:
            shown = skipped if args.verbose or len(skipped) <= 6 else [*skipped[:5], "..."]
            print(f"up to date, not run ({len(skipped)}; -v lists all, --force runs all): " + "; ".join(shown))
        return _succeeded(home, cfg, instance, done.ran, done.warnings)


def _label(cfg: MiraConfig, stage: str, assets: tuple[str, ...], partition: str | None) -> str:
    """A stage's partition as the lines name it: `lean_qa: raw_records`, `group 2: ...`, `grouping`."""
    from mira_dagster.defs.freshness import UNIT_ASSETS

    if partition is None:
        return stage
    where = f"{cfg.pipeline.scorer_scope} {partition}" if assets[0] in UNIT_ASSETS else partition
    return f"{where}: {', '.join(assets)}"


def still_stale(instance: DagsterInstance, mira: object, sources: list[str] | None) -> list[str]:
    """What the conditions left stale when they stopped requesting runs without a failure: held by something no
    run of this command can end (a queued run or a backfill waiting for a daemon that is not running), one line each."""
    from mira_dagster.defs.conditions import upstream_busy
    from mira_dagster.defs.freshness import Evaluation, local
    from mira_dagster.handoff import pending

    with local(sources):
        ev = Evaluation(instance, mira, retry=False)
        return [
            f"{label}: {why}, not run: {upstream_busy(ev, label.split('[')[0]) or 'not requested'}"
            for label, why, _ in pending(ev, stages())
        ]


def _succeeded(home: Path, cfg: MiraConfig, instance: DagsterInstance, ran: int, warned: list[str]) -> int:
    """The end of a run without failures: where the event log is, the summary, the warnings; exit code 0 (1 when
    files of watched folders were skipped)."""
    if not ran:
        print("mira: nothing changed since the last run; the selection and export stand as they are")
    print(f"Dagster's event log: {event_log(instance)} (`dagster dev` shows it)")
    summarised = print_summary(home, cfg.source_names())
    for line in warned:
        print(f"mira: warning {line}", file=sys.stderr)
    return _report_skipped(cfg) if summarised else 1


def _failed(home: Path, cfg: MiraConfig, instance: DagsterInstance, failures: list[str], warned: list[str]) -> int:
    """The end of a run with failures: the tables as they stand, one line per failure, exit code 1."""
    print_summary(home, cfg.source_names(), stale_selection=True)
    for line in warned:
        print(f"mira: warning {line}", file=sys.stderr)
    for line in failures:
        print(f"mira: FAILED {line}", file=sys.stderr)
    _report_skipped(cfg)
    print(
        f"mira: {len(failures)} failure(s); later stages not run, so the last good selection and "
        f"export stay in place (-v shows Dagster's log; the event log: {event_log(instance)})",
        file=sys.stderr,
    )
    return 1


def print_plan(ev: Evaluation, cfg: MiraConfig, scope: dict, sources: list[str], force: bool, mira: object) -> int:
    """`mira run --plan`: the runs each stage needs as the instance stands (a later stage may need more once an
    earlier one ran: what it reads changes), and the cost plan of the paid steps; nothing runs, nothing is sent."""
    from mira_dagster.io.cost import cost_plan

    judged: set[str | None] = set()
    print(f"plan for {cfg.path} ({'forced' if force else 'what is stale now'}):")
    for stage, assets, per in stages():
        todo, skipped = stage_runs(ev, stage, assets, scope[per], force=force)
        if stage == "discovery":
            judged = {p for p, *_ in todo}
        shown = ", ".join(f"{where} ({why})" for _, where, _, why in todo[:4]) + (", ..." if len(todo) > 4 else "")
        print(f"  {stage}: {len(todo)} run(s){': ' + shown if todo else ''}; {len(skipped)} up to date")
    print("  (a stage after one that runs may need more runs: what it reads changes)")
    plan = cost_plan(cfg, mira.store(), paid_runs(cfg, sources, judged), mira.endpoint)  # type: ignore[attr-defined]
    print(plan.render())
    if (line := plan.refusal(cfg.pipeline.max_teacher_requests)) is not None:
        print(line.replace("FAILED", "would refuse"), file=sys.stderr)
    return 0


def paid_runs(cfg: MiraConfig, sources: list[str], judged: set[str | None]) -> list[tuple[str, str]]:
    """The (asset, partition) steps that may send requests: the judgments of the units in `judged`, the scoring of
    every source (one up to date counts as cached)."""
    from mira_dagster.io.cost import every_step

    return [r for r in every_step(cfg, sources) if r[0] != "teacher_judgments" or r[1] in judged]


def stage_runs(
    ev: Evaluation, stage: str, assets: tuple[str, ...], partitions: list[str | None], force: bool = False
) -> tuple[list[tuple[str | None, str, list[str], str]], list[str]]:
    """The runs a stage needs now, one per partition with something stale: (partition, label, assets, why), the
    assets from the first stale one of the stage on (a later one reads it: anchor_rubric the judgments; the corpus
    as one block); and the labels of the partitions that are up to date."""
    from mira_dagster.defs.freshness import UNIT_ASSETS

    todo, skipped = [], []
    unit_scope = ev.cfg.pipeline.scorer_scope
    for partition in partitions:
        where = f"{unit_scope} {partition}" if assets[0] in UNIT_ASSETS else partition or stage
        stale = [(a, ev.reason(a, partition)) for a in assets]
        first = next((i for i, (_, why) in enumerate(stale) if why is not None or force), None)
        if first is None:
            skipped.append(f"{where}: {', '.join(assets)}" if partition else stage)
            continue
        chosen = list(assets) if stage == "corpus" else list(assets[first:])
        todo.append((partition, where, chosen, "forced" if force else str(stale[first][1])))
    return todo, skipped


def event_log(instance: DagsterInstance) -> str:
    """Where the instance keeps its event log: the PostgreSQL database, or the SQLite files under DAGSTER_HOME."""
    from mira_dagster.instance import use_postgres

    if use_postgres():
        return "the PostgreSQL database of MIRA_DAGSTER_PG_URL"
    return str(Path(instance.root_directory) / "history")


def _report_skipped(cfg: MiraConfig) -> int:
    """Files of watched folders that did not become sources, one line each with why; exit code 1 when any."""
    for line in cfg.rejected_files:
        print(f"mira: SKIPPED {line}", file=sys.stderr)
    if cfg.rejected_files:
        print(f"mira: {len(cfg.rejected_files)} file(s) of watched folders not ingested (above)", file=sys.stderr)
    return 1 if cfg.rejected_files else 0


def warning_lines(result: object, where: str) -> list[str]:
    """One line per failed non-blocking (WARN) check of an in-process run, e.g. degenerate replies and their share."""
    return [
        f"{where}: check {ev.asset_key.to_user_string()}.{ev.check_name}: {ev.description or 'failed'}"
        for ev in result.get_asset_check_evaluations()  # type: ignore[attr-defined]
        if not ev.passed and str(ev.severity.value) == "WARN"
    ]


def failure_lines(result: object, where: str) -> list[str]:
    """One line per failed blocking check or failed step of an in-process run: where, and why."""
    lines = [
        f"{where}: check {ev.asset_key.to_user_string()}.{ev.check_name}: {ev.description or 'failed'}"
        for ev in result.get_asset_check_evaluations()  # type: ignore[attr-defined]
        if not ev.passed and str(ev.severity.value) == "ERROR"
    ]
    for event in result.get_step_failure_events():  # type: ignore[attr-defined]
        error = event.step_failure_data.error
        # the user's exception, not Dagster's wrapper; not its own cause either (a SourceFileError names the file,
        # the EOFError under it does not)
        while error is not None and error.cause is not None and (error.cls_name or "").startswith("Dagster"):
            error = error.cause
        message = (error.message if error else "failed").strip().splitlines()[0]
        message = message.split(": ", 1)[1] if ": " in message and "." in message.split(": ", 1)[0] else message
        if "blocking asset check" in message.lower() and lines:
            continue  # the check's own line above says why
        lines.append(f"{where}: step {event.step_key}: {message[:400]}")
    return lines or [f"{where}: run {result.run_id} failed; see `dagster dev`"]  # type: ignore[attr-defined]


def quiet_dagster_failures() -> None:
    """Dagster's console logger prints a traceback for every failed step and run, and a line for each step not run
    after it; `mira run` prints one line per failure instead (all of it with -v). Dagster builds its console logger
    from logging.getLoggerClass(), so a logger class that filters those records is the one public place to do it."""
    import logging

    def drop_failures(record: logging.LogRecord) -> bool:
        event = getattr(record, "dagster_event", None) or (getattr(record, "dagster_meta", None) or {}).get(
            "dagster_event"
        )
        if getattr(event, "is_step_failure", False) or getattr(event, "is_run_failure", False):
            return False
        # the steps after a failed one, which Dagster logs at ERROR ("Dependencies for step ... failed ... Not
        # executing."): the failure's own line says that later stages did not run
        message = record.getMessage()
        return not ("Dependencies for step" in message and "Not executing" in message)

    class QuietFailures(logging.Logger):
        def __init__(self, name: str, level: int | str = logging.NOTSET) -> None:
            super().__init__(name, level)
            self.addFilter(drop_failures)

    logging.setLoggerClass(QuietFailures)


PID_TAG = "mira/pid"
HOST_TAG = "mira/host"  # a process id means something on its own machine only


def release_dead_runs(instance: DagsterInstance) -> list[str]:
    """Runs whose process was killed stay "started" and keep their concurrency-pool slots, so the next run would
    wait for those slots forever, and Dagster's run monitoring cannot see it: its default run launcher has no
    worker health check (1.13). Mark them failed and free their slots: runs of a `mira run` whose process (tag
    mira/pid) is gone, and runs the daemon launched whose worker process (the pid of their "Started process for run"
    event) is gone. Runs of live processes are left, and so are runs of other machines (an instance on PostgreSQL is
    shared: their process ids cannot be checked here; the `mira run` of that machine releases its own)."""
    import dagster as dg

    from mira_dagster.instance import use_postgres

    in_progress = [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.NOT_STARTED]
    released = []
    here = socket.gethostname()
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=in_progress)):
        if run.tags.get("mira/entry") == "mira run":
            pid = run.tags.get(PID_TAG)
            if pid is None or run.tags.get(HOST_TAG, here) != here or _alive(int(pid)):
                continue
            why = f"its `mira run` process ({pid}) is gone"
        elif use_postgres() or run.status != dg.DagsterRunStatus.STARTED:
            continue
        else:
            worker = _worker_pid(instance, run.run_id)
            if worker is None or _alive(worker):
                continue
            why = f"its run worker process ({worker}) is gone"
        release_run(instance, run, why)
        released.append(run.run_id)
    return released


def release_run(instance: DagsterInstance, run: object, why: str) -> None:
    """Mark a run whose process is gone failed, saying why, and free its concurrency-pool slots."""
    instance.report_run_failed(run, why)  # type: ignore[arg-type]
    instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)  # type: ignore[attr-defined]


_worker_pids: dict[str, int] = {}  # run id -> its worker's pid, read once (`mira run` polls every few seconds)


def _worker_pid(instance: DagsterInstance, run_id: str) -> int | None:
    """The pid a launched run's worker logged when it started (its "Started process for run" engine event)."""
    import dagster as dg

    if run_id in _worker_pids:
        return _worker_pids[run_id]
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        event = entry.dagster_event
        if event is not None and (event.message or "").startswith("Started process for run"):
            pid = event.engine_event_data.metadata.get("pid")
            if pid is None:
                return None
            _worker_pids[run_id] = int(pid.value)
            return _worker_pids[run_id]
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


SUMMARY_COLUMNS = [
    "source",
    "records_in",
    "quarantined",
    "top_quarantine_reason",
    "records_scored",
    "records_kept",
    "tokens_in",
    "tokens_kept",
    "kept_token_share",
]


VARIANT_COLUMNS = [
    "variant",
    "records_kept",
    "tokens_kept",
    "kept_token_share",
    "jaccard_vs_current",
    "heldout_kept",
    "teacher_overall_kept",
    "teacher_overall_dropped",
]


def summary_rows(home: Path, sources: list[str]) -> list[list[object]]:
    """One row per configured source, whatever the tables hold: a source never ingested or with 0 records
    shows with zeros rather than disappearing."""
    import polars as pl

    from mira_dagster.core.records import QUARANTINE_SCHEMA, RECORD_SCHEMA
    from mira_dagster.core.tables import SCORE_SCHEMA

    store = open_store(home)
    # a stage that never ran has no table yet: it counts as empty
    empty = {
        "raw_records": RECORD_SCHEMA,
        "quarantine": QUARANTINE_SCHEMA,
        "student_scores": SCORE_SCHEMA,
        "selected_subset": {"source": pl.String, "record_id": pl.String, "n_tokens": pl.Int64},
    }
    present = set(store.tables())
    frames = {name: pl.DataFrame(schema=schema) for name, schema in empty.items() if name not in present}
    found = {row["source"]: row for row in store.query("run_summary", frames).iter_rows(named=True)}
    rows = []
    for source in sorted(set(sources) | set(found)):
        row = found.get(source)
        if row is None:
            rows.append([source, 0, 0, "not ingested", 0, 0, 0, 0, 0.0])
            continue
        blank = {c: 0 if c != "top_quarantine_reason" else "" for c in SUMMARY_COLUMNS}
        values = [row.get(c) if row.get(c) is not None else blank[c] for c in SUMMARY_COLUMNS]
        if sources and source not in sources:  # data in the store, no registry entry (`mira forget-source` removes it)
            values[0] = f"{source} (not in the registry)"
        rows.append(values)
    return rows


def print_summary(home: Path, sources: list[str] | None = None, stale_selection: bool = False) -> bool:
    """The per-source table and the variants; False, with one line that says which table and why, when a table
    cannot be read (a run's failures still print after it)."""
    from mira_dagster.io.tables import UnreadableTable

    try:
        _print_summary(home, sources, stale_selection)
    except UnreadableTable as exc:
        print(f"mira: FAILED no summary: {exc}", file=sys.stderr)
        return False
    return True


def _print_summary(home: Path, sources: list[str] | None, stale_selection: bool) -> None:
    from tabulate import tabulate

    store = open_store(home)
    rows = summary_rows(home, sources or [])
    n = {c: i for i, c in enumerate(SUMMARY_COLUMNS)}
    totals: list[object] = ["TOTAL"] + [""] * (len(SUMMARY_COLUMNS) - 1)
    for c in ("records_in", "quarantined", "records_scored", "records_kept", "tokens_in", "tokens_kept"):
        totals[n[c]] = sum(int(r[n[c]] or 0) for r in rows)
    tokens_in, tokens_kept = int(totals[n["tokens_in"]]), int(totals[n["tokens_kept"]])
    totals[n["kept_token_share"]] = round(tokens_kept / tokens_in, 3) if tokens_in else 0.0
    print()
    if stale_selection:
        print("tables as they stand; records_kept is from the last successful selection")
    print(tabulate([*rows, totals], headers=SUMMARY_COLUMNS, tablefmt="github"))
    if "selection_variants" in store.tables():
        variants = store.read("selection_variants").select(VARIANT_COLUMNS)
        print("\nthe variants at the same budget (selection_report; teacher: the anchored teacher's overall 0-100 on")
        print("held-out records kept and left out):")
        print(tabulate(variants.rows(), headers=VARIANT_COLUMNS, tablefmt="github"))
    print(f"\ncatalogue: {store.catalog_path}   export: {store.location('exports/selected_subset')}")


def cmd_summary(args: argparse.Namespace) -> int:
    home = _prepare_env(args.config, args.home)
    try:
        sources = load_registry().source_names()
    except ConfigError:
        sources = []
    return 0 if print_summary(home, sources) else 1


def cmd_inspect(args: argparse.Namespace) -> int:
    """What mira would make of some files: read only, nothing is written."""
    from mira_dagster.io.inspect import inspect_files, render_report

    family, mapping, paths = None, None, [Path(p) for p in args.paths]
    preference = "chosen"
    roots: list[Path] = []
    if args.group or args.source:
        _prepare_env(args.config, args.home)
        try:
            cfg = load_registry()
        except ConfigError as exc:
            print(f"mira: {exc}", file=sys.stderr)
            return 2
        roots = cfg.read_roots()  # where links may lead, as ingest reads them
        if args.source:
            if args.source not in cfg.sources:
                return _unknown("source", [args.source], cfg.source_names(), cfg.path)
            src = cfg.sources[args.source]
            family, mapping, paths = src.format, src.fields, paths or src.files
            preference = src.preference  # which side of a pair is the record, as ingest reads it
        elif args.group not in cfg.groups:
            return _unknown("group", [args.group], sorted(cfg.groups), cfg.path)
        else:
            family = cfg.groups[args.group].family
    if not paths:
        print("mira: inspect needs files, or --source", file=sys.stderr)
        return 2
    # archive members are unpacked while read under MIRA_HOME (--home), nowhere else
    scratch = (Path(args.home).resolve() if args.home else mira_home()) / "scratch"
    reports = inspect_files(
        paths, family, mapping, max_bytes=args.max_bytes, preference=preference, scratch=scratch, roots=roots
    )
    print(render_report(reports, examples=args.examples))
    return 1 if any(r.error for r in reports) else 0


def cmd_regroup(args: argparse.Namespace) -> int:
    """Write a copy of the registry with the groups `source_groups` discovered (the switch from configured groups)."""
    import yaml

    home = _prepare_env(args.config, args.home)
    cfg = load_registry()
    found = open_store(home).read("source_groups")
    raw = read_yaml(cfg.path)
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


def cmd_anchors_check(args: argparse.Namespace) -> int:
    """Validate an anchors file (downloaded or hand-written) and print it as the scorer would see it."""
    import re

    from mira_dagster.core.prompts import PromptTemplateError, render_system
    from mira_dagster.core.rubric import FAMILY_FACETS, RubricError, generated_anchor_name, generated_for
    from mira_dagster.io.anchors import load_rubric
    from mira_dagster.io.templates import load_templates

    path = Path(args.file)
    cfg = None
    with contextlib.suppress(ConfigError, OSError):
        cfg = load_registry(args.config)
    groups = cfg.groups if cfg is not None else {}
    group_id = args.group
    name_re = r"group_(\w+?)_dim_anchors(?:\.generated)?\.jsonl"
    if group_id is None and (m := re.fullmatch(name_re, path.name)) and m[1] in groups:
        group_id = m[1]
    if args.group is not None and args.group not in groups:
        known = ", ".join(sorted(groups)) or "none"
        print(f"mira: unknown group {args.group!r} (the registry has {known})", file=sys.stderr)
        return 1
    family = args.family or (groups[group_id].family if group_id in groups else None)
    if family is None:
        print("mira: cannot tell the prompt family: pass --group G (from the registry) or --family F", file=sys.stderr)
        return 1
    if args.group and args.family and groups[args.group].family != args.family:
        print(f"mira: group {args.group} is family {groups[args.group].family}, not {args.family}", file=sys.stderr)
        return 1
    try:
        rubric = load_rubric(path, group_id or "?", family)
    except RubricError as exc:
        print(f"mira: {exc}".splitlines()[0], file=sys.stderr)
        return 1
    description = groups[group_id].description if group_id in groups else ""
    # the template the group's scorer uses (its `system_template`, the pipeline's, else the shipped one) unless one
    # is given
    template = Path(args.system_template) if args.system_template else None
    if template is None and cfg is not None and group_id in groups:
        template = groups[group_id].system_template or cfg.pipeline.system_template
    try:
        templates = load_templates(template)
        prompt = render_system(templates, rubric, description)
    except PromptTemplateError as exc:
        print(f"mira: {exc}", file=sys.stderr)
        return 1
    shown = {id(r) for r in rubric.references()}
    print(f"anchors file: {path.resolve()}  (sha256 {rubric.file_sha256[:16]}…)")
    where = f"group {group_id}" if group_id else "no group (pass --group for its description)"
    print(f"{where}, family {family}: {len(rubric.dims)} slots, facets {', '.join(FAMILY_FACETS[family])}")
    for d in rubric.dims:
        facet = d.facet if d.facet_given else f"{d.facet} (derived: no facet in the file)"
        refs = len(d.calibration_references)
        used = sum(id(r) in shown for r in d.calibration_references)
        ref_text = f", {refs} reference(s), {used} shown" if refs else ""
        extra = f", other fields: {', '.join(sorted(d.model_extra or {}))}" if d.model_extra else ""
        size = f", cluster size {d.cluster_size}" if d.cluster_size is not None else ""
        print(f"  [A{d.slot}] {d.name}  facet {facet}{size}{ref_text}{extra}")
    total = rubric.n_references()
    if total:
        which = ", ".join(f"A{d.slot}" for d, _ in rubric.shown_references())
        print(f"calibration references: {total}, {len(shown)} shown in the system prompt (at most 12): {which}")
        for d, ref in rubric.shown_references():
            print(f"  [A{d.slot}] from {_reference_origin(ref.model_extra or {})}")
    else:
        print("calibration references: none in this file (the cards' prompt embeds the top-12)")
        generated = mira_home() / generated_anchor_name(group_id) if group_id in groups else None
        if generated is not None and generated.is_file():
            made = load_rubric(generated, group_id or "?", family)
            if generated_for(made, rubric):
                print(
                    f"  its scorers use the {made.n_references()} that anchor_rubric generated from the teacher's "
                    f"judgments: {generated} (mira anchors check {generated})"
                )
            else:
                print(f"  {generated} was generated from another version of this file: not used")
        elif group_id in groups:
            print("  anchor_rubric generates them from the teacher's judgments (`mira run`); until then, none")
    if args.show_ours:
        _print_marked(templates, rubric, description, family)
        return 0
    print("=== system prompt ===")
    print(prompt)
    return 0


def _reference_origin(fields: dict) -> str:
    """Where a calibration reference came from, as its provenance fields (written by anchor_rubric) say."""
    if fields.get("origin"):
        parts = [str(fields["origin"])]
        if fields.get("record_id"):
            parts.append(f"record {fields['record_id']} of source {fields.get('source', '?')}")
        if fields.get("source_dimension"):
            parts.append(f"judged as {fields['source_dimension']!r}")
        if fields.get("cluster_items") is not None:
            parts.append(f"{fields['cluster_items']} judged items in the slot's cluster")
        if fields.get("configured_file"):
            parts.append(f"for {fields['configured_file']}")
        return ", ".join(parts)
    if fields.get("record_id"):
        return f"the anchors file itself: record {fields['record_id']} (no other provenance recorded)"
    return "the anchors file itself (no provenance recorded)"


def _print_marked(templates: object, rubric: object, description: str, family: str) -> None:
    """The system prompt and a placeholder record's user message, each line marked card or ours (the templates'
    provenance comments), then why each of our lines is there."""
    from mira_dagster.core.prompts import marked_system, marked_user
    from mira_dagster.core.records import TEXT_FIELDS, Record

    record_family = "qa_with_think" if family == "mixed" else family
    record = Record.model_construct(
        record_id="",
        source="",
        group_id="",
        format=record_family,
        layout="",
        n_tokens=0,
        origin_file="",
        origin_line=0,
        **{f: f"<the record's {f}>" for f in TEXT_FIELDS},
    )
    reasons: dict[str, None] = {}
    for title, lines in (
        ("system prompt", marked_system(templates, rubric, description)),  # type: ignore[arg-type]
        (f"user message (a placeholder {record_family} record)", marked_user(templates, rubric, record)),  # type: ignore[arg-type]
    ):
        print(f"=== {title}: card = the model cards' text, ours = our addition (why below) ===")
        if lines is None:
            print("(the template's marks cannot be placed: shown unmarked)")
            continue
        for line in lines:
            print(f"{line.mark or '':4} | {line.text}".rstrip())
            if line.mark == "ours":
                reasons.setdefault(line.why or "(no reason given)")
        unmarked = sum(1 for ln in lines if not ln.mark and ln.text.strip())
        if unmarked:
            print(f"({unmarked} line(s) without a mark: the template does not say whose they are)")
    print("=== why ours ===")
    for why in reasons:
        print(f"- {why}")


def cmd_forget_source(args: argparse.Namespace) -> int:
    """`mira forget-source NAME...`: remove the data of sources the registry no longer has from every table (not the
    reply cache: it is keyed by scorer_version and costs nothing to keep); a registered source is refused."""
    from mira_dagster.io.forget import forget_sources, stored_sources

    home, cfg = _home_and_registry(args)
    if cfg is None:
        return 2
    if registered := sorted(set(args.names) & set(cfg.sources)):
        print(
            f"mira: refused: {', '.join(registered)} is in the registry {cfg.path}; remove it there first "
            "(forget-source removes only the data of sources the registry no longer has)",
            file=sys.stderr,
        )
        return 2
    store = open_store(home)
    stored = stored_sources(store)
    if unknown := sorted(set(args.names) - stored):
        others = ", ".join(sorted(stored - set(cfg.sources))) or "none"
        print(
            f"mira: no data of {', '.join(unknown)} in the store {store.location('tables')} (sources with data that "
            f"the registry does not have: {others}); nothing removed",
            file=sys.stderr,
        )
        return 2
    for line in forget_sources(store, args.names):
        print(f"removed: {line}")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    """`mira init DIR`: a project that every command started in DIR uses without MIRA_CONFIG exported."""
    from mira_dagster.project import init_project

    written = init_project(Path(args.dir))
    folder = written[0].parent
    print(f"mira: a new project in {folder}:")
    for path in written:
        print(f"  {path.relative_to(folder) if path.is_relative_to(folder) else path}")
    print(
        f"Next: cd {folder} && mira run   (add your sources to groups.yaml; `mira inspect FILE` shows how one reads).\n"
        "Dagster's commands read .env here: `dagster dev`, `dg launch --assets selected_subset`, "
        "`dg launch --assets raw_records --partition example`"
    )
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
    insp = sub.add_parser(
        "inspect",
        help="read files as a source would and report layouts, quarantine reasons and a suggested mapping",
    )
    insp.add_argument("paths", nargs="*", help="files, globs or folders (default with --source: its files)")
    insp.add_argument("--group", help="read with this group's prompt family (default: try every family)")
    insp.add_argument("--source", help="read as this registry source does (its family and its fields: mapping)")
    insp.add_argument("--examples", type=int, default=3, help="normalised records shown per file (default 3)")
    insp.add_argument("--max-bytes", type=int, default=4 * 1024 * 1024, help="max_record_bytes (default 4 MiB)")
    insp.add_argument("--config", help="source registry YAML (default: $MIRA_CONFIG or anchors/groups.yaml)")
    insp.add_argument("--home", help=argparse.SUPPRESS)
    insp.set_defaults(fn=cmd_inspect)
    anchors = sub.add_parser("anchors", help="anchors files: `mira anchors check FILE`")
    anchors_sub = anchors.add_subparsers(dest="anchors_command", required=True)
    check = anchors_sub.add_parser(
        "check", help="validate an anchors file and print the report and the system prompt the scorer would send"
    )
    check.add_argument("file", help="the anchors file (JSONL, one slot a line)")
    check.add_argument("--group", help="the registry group it is for (default: from a group_<id>_dim_anchors name)")
    check.add_argument(
        "--family",
        choices=["qa_with_think", "qa", "agent", "mixed"],
        help="prompt family (default: the group's; mixed: a global rubric)",
    )
    check.add_argument("--config", help="source registry YAML (default: $MIRA_CONFIG or anchors/groups.yaml)")
    check.add_argument(
        "--system-template", help="render with this Jinja2 system template (default: the group's, else the shipped)"
    )
    check.add_argument(
        "--show-ours",
        action="store_true",
        help="print the system prompt and a user message with each line marked: the cards' text or ours (and why)",
    )
    check.set_defaults(fn=cmd_anchors_check)
    init = sub.add_parser("init", help="write a new project into DIR: registry, example source, .env, instance")
    init.add_argument("dir", help="the project folder (created if missing; existing project files are refused)")
    init.set_defaults(fn=cmd_init)
    forget = sub.add_parser("forget-source", help="remove the data of sources no longer in the registry from the store")
    forget.add_argument("names", nargs="+", metavar="NAME", help="the sources whose rows and partitions go")
    forget.add_argument("--config", help="source registry YAML (default: $MIRA_CONFIG or anchors/groups.yaml)")
    forget.add_argument("--home", help="where data lands (default: $MIRA_HOME or .mira)")
    forget.set_defaults(fn=cmd_forget_source)
    run = sub.choices["run"]
    run.add_argument("--source", action="append", help="only this source (repeatable)")
    run.add_argument("-v", "--verbose", action="store_true", help="show Dagster's event log")
    run.add_argument("--force", action="store_true", help="run every step, also those that are up to date")
    run.add_argument("--plan", action="store_true", help="print what would run and what it would cost; run nothing")
    run.add_argument(
        "--daemon",
        action="store_true",
        help="start the instance's Dagster daemon when none runs (it stays), and let it run the work",
    )
    args = parser.parse_args(argv)
    try:
        if argv is None and args.fn is not cmd_init:
            # the `mira` command in a project folder: its .env's registry and instance (settings.py); a caller of
            # main(argv) in its own process sets the environment itself
            load_project_env(Path.cwd(), home_given=bool(getattr(args, "home", None)))
        return args.fn(args)
    except Exception as exc:  # one line naming the cause; the traceback with -v
        if getattr(args, "verbose", False):
            raise
        print(f"mira: {type(exc).__name__}: {exc}".splitlines()[0], file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
