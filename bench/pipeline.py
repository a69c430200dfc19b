"""The whole pipeline at corpus scale on the real client path, step by step (issue 25 items 1-2, issue 12).

The teacher and the student are OpenAI-compatible servers on loopback (bench/loopback_server.py, separate
processes, so their CPU is not ours) answering at once in the cards' format with deterministic scores; the
embedding endpoint of rubric discovery is a third. So everything but the model is measured: prompt build, HTTP,
reply cache, parse, write.

A synthetic corpus of N records in four qa_with_think sources is built from the bundled sample: each record is a
sample record (their lengths vary, 0.5-20 kB) whose text fields get a variant marker, so every record has its own
record_id. Then, for each size, `mira run`'s stages (cli.stage_runs over defs/freshness.py, the same runs) run with each
step (one stage, one partition) as its own process, a fresh `dg.materialize` like `mira run`'s, waited for with
`os.wait4`: wall seconds, CPU seconds (user + system of that process alone), peak RSS (its ru_maxrss) and records a
second. `startup` is one such process that only imports (Dagster and our definitions): every step pays it once.
Not in the steps: `mira run`'s cost gate (it reads the store, no request) and the driver process's planning.

At the largest size also: a no-op `mira run` (nothing stale: it must run nothing; issue 12: at most 5% of the
cold run) and a re-run after appending 1% to one source (the student must be asked for exactly the new records),
its steps measured as above; and the memory of the append's duplicate check both ways, on the same partition:
the dict of every earlier record_id the append path held before issue 25 (`seen_dict`), and the DuckDB semi-join
per 2048-id batch that replaced it (io/earlier.py).

Targets (issue 25 item 2): per step, time per record at the largest size within 1.15x of the smallest and peak RSS
within 1.3x; our CPU per record over all steps at most 1 ms.

    .venv/bin/python bench/pipeline.py [--sizes 200000 2000000] [--keep DIR]
    .venv/bin/python bench/pipeline.py --sizes 200000 10000000   # 10M: ~107 GB of JSONL (10.7 kB a record)

Folders go under MIRA_BENCH_TMP (default the system temp); 2M records are ~21 GB of JSONL. Measured 2026-12-06 on
2 cores: ~4 ms of our CPU and ~8 ms of wall a record, so the default sizes take hours (docs/benchmarks.md). Prints
one JSON object last.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"
BIN = Path(sys.executable).parent
BASES = {
    "marco": ["math_think_marco_o1_cot_demo.part1.jsonl", "math_think_marco_o1_cot_demo.part2.jsonl"],
    "anchors": ["math_think_thoughtanchors_r1distill.jsonl"],
    "kimina": ["lean_kimina_prover_minif2f_test_solved.jsonl"],
    "deepseek": ["lean_deepseek_prover_v15_minif2f_valid_fewshot.jsonl"],
}
APPEND_TO = "marco"


def _mark(obj: Any, marker: str) -> None:
    """Put the marker into every longer string inside obj (in place): after its first line break (inside a
    `<Thought>` block, say, where a suffix after `</Output>` would be dropped by the layout), else at its end."""
    stack = [obj]
    while stack:
        node = stack.pop()
        items = (
            list(node.items()) if isinstance(node, dict) else list(enumerate(node)) if isinstance(node, list) else []
        )
        for key, value in items:
            if isinstance(value, str) and len(value) > 40:
                cut = value.find("\n") + 1 or len(value)
                node[key] = f"{value[:cut]}(variant {marker}) {value[cut:]}"
            elif isinstance(value, dict | list):
                stack.append(value)


def write_source(path: Path, bases: list[str], start: int, count: int, mode: str = "w") -> None:
    lines = [json.loads(line) for name in bases for line in (SAMPLE / name).read_text().splitlines() if line.strip()]
    with path.open(mode, encoding="utf-8") as fh:
        for i in range(start, start + count):
            obj = json.loads(json.dumps(lines[i % len(lines)]))
            _mark(obj, f"{i}")
            fh.write(json.dumps(obj, ensure_ascii=False) + "\n")


def build(root: Path, n: int) -> Path:
    data = root / "data"
    data.mkdir(parents=True)
    per = n // len(BASES)
    for name, bases in BASES.items():
        write_source(data / f"{name}.jsonl", bases, 0, per)
    shutil.copy(
        ROOT / "mira_dagster" / "resources" / "anchors" / "group_2_dim_anchors.jsonl",
        root / "group_2_dim_anchors.jsonl",
    )
    sources = "\n".join(
        f'  {name}: {{group: "2", format: qa_with_think, files: [data/{name}.jsonl]}}' for name in BASES
    )
    registry = root / "groups.yaml"
    registry.write_text(
        'groups:\n  "2": {family: qa_with_think, student_model: whw06/MIRA-QA-Group3, '
        "anchors: group_2_dim_anchors.jsonl}\n"
        f"sources:\n{sources}\n",
        encoding="utf-8",
    )
    return registry


# one step of `mira run`, as `mira run` materialises it, in a fresh process (argv: asset names joined by ",", or
# "startup"; partition or "")
STEP = """
import sys
import dagster as dg
from mira_dagster import definitions as d
from mira_dagster.defs.resources import mira_resource
if sys.argv[1] != "startup":
    names = sys.argv[1].split(",")
    selection = [a for a in d.ALL_ASSETS if any(k.to_user_string() in names for k in a.keys)]
    with dg.DagsterInstance.get() as instance:
        result = dg.materialize(
            d.ALL_ASSETS, selection=selection, partition_key=sys.argv[2] or None,
            instance=instance, resources={"mira": mira_resource()}, raise_on_error=False,
        )
    sys.exit(0 if result.success else 1)
"""

# the append path's duplicate check before issue 25 (defs/ingest._carry_over kept this dict), and after it
SEEN_DICT = """
import sys, polars as pl, pyarrow.parquet as pq
seen = {}
for batch in pq.ParquetFile(sys.argv[1]).iter_batches(batch_size=65_536):
    frame = pl.from_arrow(batch)
    seen.update(frame.select("record_id", pl.format("{}:{}", "origin_file", "origin_line")).iter_rows())
batches = pq.ParquetFile(sys.argv[1]).iter_batches(65_536, columns=["record_id"])
ids = [i for b in batches for i in b[0].to_pylist()[::100]]  # 1% of the ids, read batch by batch
print(sum(i in seen for i in ids))
"""
SEMI_JOIN = """
import sys, pyarrow.parquet as pq
from mira_dagster.io.earlier import EarlierRecords
batches = pq.ParquetFile(sys.argv[1]).iter_batches(65_536, columns=["record_id"])
ids = [i for b in batches for i in b[0].to_pylist()[::100]]  # 1% of the ids, read batch by batch
earlier = EarlierRecords(sys.argv[1])
print(sum(len(earlier(ids[i : i + 2048])) for i in range(0, len(ids), 2048)))
"""


def child(argv: list[str], env: dict[str, str], log: Path) -> dict[str, Any]:
    """Run one process to its end: wall and CPU seconds, peak RSS, exit code (its output appended to `log`)."""
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(argv[:1] + argv[3:]) if argv[1] == '-c' else ' '.join(argv)}\n")
        out.flush()
        t = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=env.get("PWD_BENCH"))
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "wall_s": round(time.perf_counter() - t, 2),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024),
        "rc": proc.returncode,
    }


class Servers:
    """Teacher, student and embedding endpoints on loopback, each its own process."""

    def __init__(self, root: Path) -> None:
        self.procs: dict[str, subprocess.Popen] = {}
        self.urls: dict[str, str] = {}
        for role in ("teacher", "student", "embed"):
            url_file = root / f"{role}.url"
            self.procs[role] = subprocess.Popen(
                [
                    sys.executable,
                    str(ROOT / "bench" / "loopback_server.py"),
                    role.replace("embed", "teacher"),
                    url_file,
                ],
                stdout=subprocess.DEVNULL,
                stderr=(root / f"{role}.log").open("w"),
            )
            deadline = time.monotonic() + 60
            while not url_file.exists():
                if self.procs[role].poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the {role} loopback server did not start (see {root / f'{role}.log'})")
                time.sleep(0.1)
            self.urls[role] = url_file.read_text()

    def env(self) -> dict[str, str]:
        urls = {f"MIRA_{role.upper()}_BASE_URL": url for role, url in self.urls.items()}
        return urls | {"MIRA_EMBED_MODEL": "bench-embed"}  # the loopback server lists no models

    def stop(self) -> dict[str, float]:
        """Stop them; their CPU seconds (not counted as ours)."""
        cpu = {}
        for role, proc in self.procs.items():
            proc.terminate()
            _, _, usage = os.wait4(proc.pid, 0)
            proc.returncode = -15
            cpu[role] = round(usage.ru_utime + usage.ru_stime, 1)
        return cpu


def bench_env(root: Path, servers: Servers, registry: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MIRA_", "DAGSTER_"))}
    return (
        env
        | servers.env()
        | {
            "MIRA_CONFIG": str(registry),
            "MIRA_HOME": str(root / "home"),
            "DAGSTER_HOME": str(root / "home" / "dagster"),
            "PWD_BENCH": str(root),
        }
    )


def run_steps(root: Path, env: dict[str, str], log: Path) -> list[dict[str, Any]]:
    """`mira run`'s plan, each step in its own measured process; raises naming the first failed step."""
    os.environ.update(env)  # the plan reads the same registry, home and instance as the steps
    from mira_dagster.cli import _prepare_env

    _prepare_env(env["MIRA_CONFIG"], env["MIRA_HOME"])
    env = env | {"DAGSTER_HOME": os.environ["DAGSTER_HOME"]}
    import dagster as dg

    from mira_dagster.cli import stage_runs, stages
    from mira_dagster.defs.freshness import Evaluation
    from mira_dagster.defs.partitions import register_partitions
    from mira_dagster.defs.resources import mira_resource
    from mira_dagster.settings import load_registry

    cfg, mira, steps = load_registry(), mira_resource(), []
    with dg.DagsterInstance.get() as instance:
        register_partitions(instance, cfg)
        scope = {"source": cfg.source_names(), "unit": list(cfg.scorer_units()), "all": [None]}
        for stage, assets, per in stages():
            todo, _ = stage_runs(Evaluation(instance, mira, retry=True), stage, assets, scope[per])
            for partition, where, chosen, _why in todo:
                row = child([sys.executable, "-c", STEP, ",".join(chosen), partition or ""], env, log)
                row |= {"stage": stage, "partition": partition}
                print(f"  {where}: {', '.join(chosen)}: {row}", flush=True)
                if row["rc"] != 0:
                    raise SystemExit(f"step {where} failed (exit {row['rc']}); its log: {log}")
                steps.append(row)
    return steps


def by_stage(steps: list[dict[str, Any]], records: int) -> dict[str, dict[str, Any]]:
    """A stage's partitions summed (seconds, CPU) and their largest peak RSS; records a second over the corpus."""
    out: dict[str, dict[str, Any]] = {}
    for row in steps:
        agg = out.setdefault(row["stage"], {"steps": 0, "wall_s": 0.0, "cpu_s": 0.0, "peak_rss_mb": 0})
        agg["steps"] += 1
        agg["wall_s"] = round(agg["wall_s"] + row["wall_s"], 2)
        agg["cpu_s"] = round(agg["cpu_s"] + row["cpu_s"], 2)
        agg["peak_rss_mb"] = max(agg["peak_rss_mb"], row["peak_rss_mb"])
    for agg in out.values():
        agg["records_per_s"] = round(records / agg["wall_s"]) if agg["wall_s"] else None
        agg["us_per_record"] = round(1e6 * agg["wall_s"] / records, 1)
        agg["cpu_us_per_record"] = round(1e6 * agg["cpu_s"] / records, 1)
    return out


def mira_run(env: dict[str, str], log: Path) -> dict[str, Any]:
    row = child([str(BIN / "mira"), "run"], env, log)
    if row["rc"] != 0:
        raise SystemExit(f"mira run failed (exit {row['rc']}); its log: {log}")
    return row


def student_requests(root: Path, source: str) -> int:
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("student_scores"), asset_partitions=[source]), limit=1
        ).records
        return int(records[0].asset_materialization.metadata["requests_sent"].value)


def cold_copy(kept: Path, root: Path) -> None:
    """A copy of a `--keep` size folder without its scores and reply cache, so its scoring sends every request."""
    shutil.copytree(kept, root, ignore=shutil.ignore_patterns("*.url", "*.log"))
    for gone in ("tables/teacher_labels", "tables/student_scores", "cache/replies"):
        shutil.rmtree(root / "home" / gone, ignore_errors=True)


def kept_sizes(keep: Path) -> list[tuple[int, Path]]:
    """The n<records> folders a `--keep` run left, with the records their raw_records hold (the largest has the 1%
    append), smallest first."""
    import pyarrow.parquet as pq

    def records(folder: Path) -> int:
        files = (folder / "home" / "tables" / "raw_records").glob("*.parquet")
        return sum(pq.ParquetFile(f).metadata.num_rows for f in files)

    return sorted((records(p), p) for p in keep.glob("n*") if (p / "home").is_dir())


def marginal_ms(runs: dict, sizes: list[tuple[int, Path]], sides: tuple[str, ...]) -> dict[str, list[float]]:
    """Per side, each run's CPU ms a record between the smallest and the largest size (no fixed cost in it)."""
    (small, _), (large, _) = sizes[0], sizes[-1]
    return {
        side: [
            round(1e3 * (b["cpu_s"] - a["cpu_s"]) / (large - small), 3)
            for a, b in zip(runs[side][str(small)], runs[side][str(large)], strict=True)
        ]
        for side in sides
    }


def two_ways(sizes: list[int], build: str, sides: dict[str, str], target: str, check: Any = None) -> dict[str, Any]:
    """Per size: `build` (python -c, argv: the target path, the size) makes the input in a process of its own (a
    child forked from a parent that held it would count it in its peak RSS), then each side's code (argv: the
    target path) runs in its own process; `check(log text, size)` may refuse what they printed. Returns the runs
    and each side's peak RSS growth, largest over smallest."""
    out: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(dir=os.environ.get("MIRA_BENCH_TMP")) as tmp:
        log, env = Path(tmp) / "log", dict(os.environ)
        for n in sorted(sizes):
            path = Path(tmp) / target.format(n=n)
            if child([sys.executable, "-c", build, str(path), str(n)], env, log)["rc"] != 0:
                raise SystemExit(f"building the input of {n:,} failed; log:\n{log.read_text()[-3000:]}")
            out[n] = {name: child([sys.executable, "-c", code, str(path)], env, log) for name, code in sides.items()}
            print(n, out[n], flush=True)
            if any(row["rc"] != 0 for row in out[n].values()):
                raise SystemExit(f"a run failed at {n:,}; log:\n{log.read_text()[-3000:]}")
            if check is not None:
                check(log.read_text(), n)
    small, large = out[min(out)], out[max(out)]
    growth = {k: round(large[k]["peak_rss_mb"] / small[k]["peak_rss_mb"], 3) for k in sides}
    return {"sizes": sorted(out), "runs": out, "peak_rss_growth_largest_over_smallest": growth}


def one_size(n: int, base: Path, largest: bool) -> dict[str, Any]:
    root = base / f"n{n}"
    t0 = time.perf_counter()
    registry = build(root, n)
    corpus_mb = sum(p.stat().st_size for p in (root / "data").iterdir()) / 2**20
    print(f"corpus: {n:,} records, {corpus_mb:.0f} MB, built in {time.perf_counter() - t0:.0f} s", flush=True)
    servers = Servers(root)
    log = root / "steps.log"
    try:
        env = bench_env(root, servers, registry)
        startup = child([sys.executable, "-c", STEP, "startup", ""], env, log)
        t = time.perf_counter()
        steps = run_steps(root, env, log)
        result: dict[str, Any] = {
            "records": n,
            "corpus_mb": round(corpus_mb),
            "startup": startup,
            "cold_wall_s": round(time.perf_counter() - t, 1),
            "steps": steps,
            "stages": by_stage(steps, n),
        }
        cpu = sum(r["cpu_s"] for r in steps)
        result["cpu_ms_per_record"] = round(1e3 * cpu / n, 3)
        result["cpu_ms_per_record_less_startup"] = round(1e3 * (cpu - len(steps) * startup["cpu_s"]) / n, 3)
        part = root / "home" / "tables" / "raw_records" / f"{APPEND_TO}.parquet"
        result["append_dup_check"] = {
            "seen_dict": child([sys.executable, "-c", SEEN_DICT, str(part)], env, log),
            "semi_join": child([sys.executable, "-c", SEMI_JOIN, str(part)], env, log),
        }
        if largest:
            noop = mira_run(env, log)
            noop["ran_nothing"] = "nothing changed since the last run" in log.read_text().rsplit("\n$ ", 1)[-1]
            result["noop"] = noop | {"share_of_cold": round(noop["wall_s"] / result["cold_wall_s"], 4)}
            print(f"no-op: {noop}", flush=True)
            appended, per = n // 100, n // len(BASES)
            write_source(root / "data" / f"{APPEND_TO}.jsonl", BASES[APPEND_TO], per, appended, mode="a")
            t = time.perf_counter()
            append_steps = run_steps(root, env, log)
            asked = student_requests(root, APPEND_TO)
            result["append"] = {
                "records": appended,
                "wall_s": round(time.perf_counter() - t, 1),
                "steps": append_steps,
                "student_requests": asked,
                "requests_exactly_new": asked == appended,
            }
            print(f"append {appended}: student asked {asked}", flush=True)
    finally:
        result_servers = servers.stop()
    result["server_cpu_s"] = result_servers
    return result


def targets(small: dict[str, Any], large: dict[str, Any]) -> dict[str, Any]:
    """Issue 25 item 2, per stage: time per record and peak RSS at the largest size against the smallest."""
    out: dict[str, Any] = {}
    for stage, big in large["stages"].items():
        base = small["stages"].get(stage)
        if base is None:
            continue
        time_ratio = big["us_per_record"] / base["us_per_record"] if base["us_per_record"] else None
        rss_ratio = big["peak_rss_mb"] / base["peak_rss_mb"]
        out[stage] = {
            "time_per_record_ratio": round(time_ratio, 3) if time_ratio else None,
            "time_within_1.15x": time_ratio is not None and time_ratio <= 1.15,
            "peak_rss_ratio": round(rss_ratio, 3),
            "rss_within_1.3x": rss_ratio <= 1.3,
        }
    out["cpu_ms_per_record_at_most_1"] = large["cpu_ms_per_record"] <= 1.0
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[200_000, 2_000_000])
    parser.add_argument("--keep", help="build and run in this folder and keep it")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: one size in this process
    parser.add_argument("--largest", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # each size in its own driver process: the registry, home and instance are read once per process
        print(json.dumps(one_size(args.one, Path(args.keep), args.largest)))
        return
    sizes = sorted(args.sizes)
    base = (
        Path(args.keep)
        if args.keep
        else Path(tempfile.mkdtemp(prefix="mira-bench-", dir=os.environ.get("MIRA_BENCH_TMP")))
    )
    try:
        runs = []
        for n in sizes:
            argv = [sys.executable, __file__, "--one", str(n), "--keep", str(base)]
            out = subprocess.run(argv + (["--largest"] if n == sizes[-1] else []), stdout=subprocess.PIPE, text=True)
            if out.returncode != 0:
                print(out.stdout, end="", flush=True)  # the steps measured before the failure: not lost with it
                raise SystemExit(f"the run at {n:,} records failed (exit {out.returncode})")
            *progress, last = out.stdout.strip().splitlines()
            print("\n".join(progress), flush=True)
            runs.append(json.loads(last))
        for run in runs:
            print(
                f"\n{run['records']:,} records: cold {run['cold_wall_s']} s, {run['cpu_ms_per_record']} ms CPU/record"
            )
            print(f"{'stage':<10} {'steps':>5} {'wall s':>8} {'cpu s':>8} {'peak MB':>8} {'rec/s':>8} {'us/rec':>8}")
            for stage, a in run["stages"].items():
                print(
                    f"{stage:<10} {a['steps']:>5} {a['wall_s']:>8} {a['cpu_s']:>8} {a['peak_rss_mb']:>8} "
                    f"{a['records_per_s']:>8} {a['us_per_record']:>8}"
                )
        result = {"sizes": sizes, "runs": runs}
        if len(runs) > 1:
            result["targets"] = targets(runs[0], runs[-1])
        last = runs[-1]
        if "noop" in last:
            result["issue_12"] = {
                "noop_at_most_5pct_of_cold": last["noop"]["share_of_cold"] <= 0.05 and last["noop"]["ran_nothing"],
                "append_requests_exactly_new": last["append"]["requests_exactly_new"],
            }
        print(json.dumps(result))
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
