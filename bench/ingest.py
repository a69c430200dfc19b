"""Ingest benchmark: records/s and MB/s of mira's reader against a plain read of the same files, same run.

    .venv/bin/python bench/ingest.py [--gb 1.0] [--workdir DIR] [--rounds 3] [--formats jsonl gz parquet]

It generates at least --gb of JSONL in the bundled sample's record mix (every sample line, repeated with a small
change in its longest text so that each copy is a distinct record), as shards per sample file, then the same
data as .jsonl.gz and as Parquet shards. For each format it times, each in a fresh process so that peak RSS is
that step's own:
- ours: `SourceIngest` (read, decode, detect the layout, normalise, hash, count tokens, quarantine, dedupe) with
  the records and quarantine written to Parquet through `Store.table_writer`, as the raw_records asset does;
- the baseline: `polars.read_ndjson` of each JSONL shard (gzip: polars reads the decompressed bytes) and
  `pyarrow.parquet.read_table` of each Parquet shard, which decode the files and do nothing else.
MB/s is over the uncompressed JSONL bytes of the data in every row, so formats compare; "per core" divides by
the process's CPU time (user + system) instead of wall time. Growth: ours is also run on a quarter of the data.
The containers of issue 21 (item 6), on --new-gb of generated data (default a quarter of --gb), same run:
- `chat`: long multi-turn chat, one `{"messages": [...]}` of 12-20 turns (2-6 KB each) per line, against
  `polars.read_ndjson`;
- `chat_lists`: the same conversations as bare lists of messages, one per line (the container read as ONE unit a
  line), against `polars.read_ndjson` of the `chat` file (polars reads no top-level list);
- `csv`: a question/answer CSV with quoted commas, quotes and newlines, against `polars.read_csv` (all columns
  kept as strings, as we keep them).
- `qa_short`: short question/answer lines (GSM8K-sized, 0.2-0.7 KB), against `polars.read_ndjson`: where reading
  per record costs most (the sample's records average 16 KB).
`per_record` is ours with the columnar path off (`SourceIngest(columnar=False)`, every unit decoded and normalised
in Python, as before issue 25): the JSON Lines, Parquet and `qa_short` rows name both, same run.
`--rounds N` runs the JSON Lines, gzip and Parquet steps on the baseline's files N times, alternating baseline, ours
and per_record within each round, and adds to the summary the medians of the per-round ratios (wall and CPU) with
their range and the load average: on a shared machine a load spike lands on one step of one round, not on one side.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SAMPLE = ROOT / "data" / "sample"


def _family(name: str) -> str:
    return "agent" if name.startswith("swe_") else "qa_with_think"


def _longest_string_path(obj: object, path: tuple = ()) -> tuple[tuple, int]:
    best: tuple[tuple, int] = ((), -1)
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else []
    for key, value in items:
        cand = (path + (key,), len(value)) if isinstance(value, str) else _longest_string_path(value, path + (key,))
        if cand[1] > best[1]:
            best = cand
    return best


def _variant(obj: dict, path: tuple, i: int) -> dict:
    """A copy with ` v<i> ` inserted in the middle of its longest string: another record, same shape and size."""
    out = json.loads(json.dumps(obj))
    parent = out
    for key in path[:-1]:
        parent = parent[key]
    text = parent[path[-1]]
    mid = len(text) // 2
    parent[path[-1]] = f"{text[:mid]} v{i} {text[mid:]}"
    return out


def _parquet_safe(value: object) -> object:
    """Parquet has no struct without fields: an empty object becomes null (no text is lost)."""
    if isinstance(value, dict):
        return {k: _parquet_safe(v) for k, v in value.items()} or None
    if isinstance(value, list):
        return [_parquet_safe(v) for v in value]
    return value


def _arrow_accepts(objs: list) -> bool:
    import pyarrow as pa

    try:
        pa.Table.from_pylist(objs)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return False
    return True


def generate(workdir: Path, gb: float) -> dict:
    """Shards per sample file in three formats; returns the byte counts. Reused when already there."""
    stamp = workdir / "done.json"
    if stamp.exists() and json.loads(stamp.read_text())["gb"] == gb:
        return json.loads(stamp.read_text())
    import pyarrow as pa
    import pyarrow.parquet as pq

    samples = {p.name.removesuffix(".jsonl"): p for p in sorted(SAMPLE.glob("*.jsonl"))}
    lines = {
        name: [json.loads(x) for x in p.read_text(encoding="utf-8").splitlines() if x.strip()]
        for name, p in samples.items()
    }
    sample_bytes = sum(p.stat().st_size for p in samples.values())
    copies = max(1, int(gb * 1e9 / sample_bytes) + 1)
    for fmt in ("jsonl", "gz", "parquet"):
        for family in ("qa_with_think", "agent"):
            (workdir / fmt / family).mkdir(parents=True, exist_ok=True)
    total = parquet_total = 0
    skipped: list[str] = []
    bytes_by_name: dict[str, int] = {}
    import polars as pl

    def polars_reads(path: Path) -> bool:
        try:
            pl.read_ndjson(path, infer_schema_length=None)
        except Exception:
            return False
        return True

    unreadable = [name for name, p in samples.items() if not polars_reads(p)]
    for name, objs in lines.items():
        family = _family(name)
        paths = [_longest_string_path(o)[0] for o in objs]
        jsonl = workdir / "jsonl" / family / f"{name}.jsonl"
        with (
            jsonl.open("w", encoding="utf-8") as fh,
            gzip.open(workdir / "gz" / family / f"{name}.jsonl.gz", "wt", compresslevel=1, encoding="utf-8") as gz,
        ):
            chunk: list[dict] = []
            chunk_bytes = shard = 0
            # Arrow needs one type per column: files whose objects mix types under a key (a string here, an object
            # there) have no Parquet form, and are left out of the Parquet rows (named in the summary)
            arrow_ok = _arrow_accepts([_parquet_safe(o) for o in objs])
            if not arrow_ok:
                skipped.append(name)
            for i in range(copies):
                for obj, path in zip(objs, paths, strict=True):
                    v = _variant(obj, path, i) if path else obj
                    line = json.dumps(v, ensure_ascii=False) + "\n"
                    fh.write(line)
                    gz.write(line)
                    total += len(line.encode("utf-8"))
                    bytes_by_name[name] = bytes_by_name.get(name, 0) + len(line.encode("utf-8"))
                    if arrow_ok:
                        chunk.append(_parquet_safe(v))
                        chunk_bytes += len(line.encode("utf-8"))
                if chunk and (len(chunk) >= 2000 or i == copies - 1):
                    # one schema per shard (the sample's layouts differ between files, not within a chunk)
                    pq.write_table(
                        pa.Table.from_pylist(chunk), workdir / "parquet" / family / f"{name}-{shard:05d}.parquet"
                    )
                    parquet_total += chunk_bytes
                    chunk, chunk_bytes, shard = [], 0, shard + 1
    info = {
        "gb": gb,
        "copies": copies,
        "jsonl_bytes": total,
        "parquet_jsonl_bytes": parquet_total,
        "parquet_left_out": skipped,
        "ndjson_left_out": unreadable,
        "bytes_by_name": bytes_by_name,
    }
    for fmt in ("jsonl", "gz", "parquet"):
        info[f"{fmt}_disk_bytes"] = sum(f.stat().st_size for f in (workdir / fmt).rglob("*") if f.is_file())
    stamp.write_text(json.dumps(info))
    return info


NEW_FORMATS = ("chat", "chat_lists", "csv", "qa_short")
MAIN_FORMATS = ("jsonl", "gz", "parquet")


def generate_new(workdir: Path, gb: float) -> dict:
    """The issue-21 containers: long multi-turn chat lines (objects and bare lists) and a CSV; reused when there."""
    import csv
    import random

    stamp = workdir / "new" / "done.json"
    if stamp.exists() and json.loads(stamp.read_text())["gb"] == gb:
        made = json.loads(stamp.read_text())
        if set(made["bytes"]) == set(NEW_FORMATS):  # an older run may have made fewer
            return made
    rng = random.Random(0)
    words = [w for p in sorted(SAMPLE.glob("*.jsonl")) for w in p.read_text(encoding="utf-8").split()[:20_000]]
    for fmt in NEW_FORMATS:
        (workdir / "new" / fmt).mkdir(parents=True, exist_ok=True)

    def text(n_bytes: int, i: int) -> str:
        start = rng.randrange(len(words))
        out, size = [f"#{i}"], 0
        while size < n_bytes:
            w = words[(start + len(out)) % len(words)]
            out.append(w)
            size += len(w) + 1
        return " ".join(out)

    sizes = dict.fromkeys(NEW_FORMATS, 0)
    target = gb * 1e9 / 2
    with (
        (workdir / "new" / "chat" / "chat.jsonl").open("w", encoding="utf-8") as chat,
        (workdir / "new" / "chat_lists" / "chat_lists.jsonl").open("w", encoding="utf-8") as lists,
    ):
        i = 0
        while sizes["chat"] < target:
            turns = [{"role": "system", "content": "You are a helpful assistant."}]
            for t in range(rng.randrange(12, 21)):
                turns.append(
                    {"role": "user" if t % 2 == 0 else "assistant", "content": text(rng.randrange(2000, 6000), i)}
                )
            if turns[-1]["role"] == "user":
                turns.append({"role": "assistant", "content": text(2000, i)})
            line = json.dumps({"messages": turns}, ensure_ascii=False) + "\n"
            chat.write(line)
            lists.write(json.dumps(turns, ensure_ascii=False) + "\n")
            sizes["chat"] += len(line.encode())
            sizes["chat_lists"] += len(line.encode()) - len('{"messages": }')
            i += 1
    with (workdir / "new" / "csv" / "qa.csv").open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["question", "answer"])
        i = 0
        while sizes["csv"] < target:
            q, a = f'{text(300, i)}, "quoted"?', f"{text(rng.randrange(200, 2000), i)}\nso: {i:,}"
            writer.writerow([q, a])
            sizes["csv"] += len(q) + len(a) + 8
            i += 1
    with (workdir / "new" / "qa_short" / "qa_short.jsonl").open("w", encoding="utf-8") as fh:
        i = 0
        while sizes["qa_short"] < target:
            line = json.dumps(
                {"question": f"{i}: {text(rng.randrange(60, 250), i)}?", "answer": text(rng.randrange(20, 400), i)},
                ensure_ascii=False,
            )
            fh.write(line + "\n")
            sizes["qa_short"] += len(line.encode()) + 1
            i += 1
    info = {"gb": gb, "bytes": sizes}
    stamp.write_text(json.dumps(info))
    return info


def _files(workdir: Path, fmt: str, family: str, fraction: float, subset: str = "all") -> list[Path]:
    if fmt in NEW_FORMATS:
        return sorted((workdir / "new" / fmt).iterdir()) if family == "qa" else []
    files = sorted((workdir / fmt / family).iterdir())
    if subset == "plain":  # only what the baseline can read
        info = json.loads((workdir / "done.json").read_text())
        files = [f for f in files if _sample_name(f) not in info["ndjson_left_out"] + info["parquet_left_out"]]
    if fraction >= 1:
        return files
    if fmt == "parquet":  # a quarter of each sample file's shards
        by_name: dict[str, list[Path]] = {}
        for f in files:
            by_name.setdefault(f.name.rsplit("-", 1)[0], []).append(f)
        return [f for group in by_name.values() for f in group[: max(1, int(len(group) * fraction))]]
    return files


def _sample_name(path: Path) -> str:
    name = path.name.removesuffix(".gz").removesuffix(".jsonl").removesuffix(".parquet")
    return name.rsplit("-", 1)[0] if path.name.endswith(".parquet") else name


def run_one(workdir: Path, fmt: str, who: str, fraction: float, subset: str = "all") -> dict:
    """One measurement, in this process (called in a child process by main)."""
    t0, c0 = time.perf_counter(), _cpu()
    records = quarantined = 0
    if who in ("ours", "per_record"):
        import tempfile

        from mira_dagster.core.records import QUARANTINE_SCHEMA, RAW_RECORD_SCHEMA
        from mira_dagster.io.ingest import SourceIngest
        from mira_dagster.io.store import Store

        with tempfile.TemporaryDirectory(dir=workdir) as home:
            store = Store(Path(home))
            for family in ("qa",) if fmt in NEW_FORMATS else ("qa_with_think", "agent"):
                files = _files(workdir, fmt, family, fraction, subset)
                if fraction < 1 and fmt != "parquet":
                    files = [_head(f, fraction, workdir) for f in files]
                with (
                    store.table_writer("raw_records", family, RAW_RECORD_SCHEMA) as w,
                    store.table_writer("quarantine", family, QUARANTINE_SCHEMA) as q,
                ):  # as the raw_records asset does: the frames are written on the ingest's worker thread
                    ingest = SourceIngest(
                        family,
                        "g",
                        family,
                        files,
                        sink=lambda r, b: (w(r), q(b)),  # type: ignore[arg-type]
                        columnar=who == "ours",
                    )
                    for _ in ingest.batches():
                        pass
                records += ingest.stats.records
                quarantined += ingest.stats.quarantined
    else:
        import polars as pl
        import pyarrow.parquet as pq

        for family in ("qa",) if fmt in NEW_FORMATS else ("qa_with_think", "agent"):
            for f in _files(workdir, fmt, family, fraction, subset):
                if fraction < 1 and fmt != "parquet":
                    f = _head(f, fraction, workdir)
                if fmt == "chat_lists":  # polars reads no top-level list: the same conversations as objects
                    records += pl.read_ndjson(workdir / "new" / "chat" / "chat.jsonl", infer_schema_length=None).height
                elif fmt == "qa_short":
                    records += pl.read_ndjson(f, infer_schema_length=None).height
                elif fmt == "csv":
                    records += pl.read_csv(f, infer_schema_length=0).height
                elif fmt == "parquet":
                    records += pq.read_table(f).num_rows
                else:
                    data = _gunzip(f) if fmt == "gz" else f
                    records += pl.read_ndjson(data, infer_schema_length=None).height
    wall, cpu = time.perf_counter() - t0, _cpu() - c0
    peak = _peak_rss_bytes()
    return {
        "format": fmt,
        "who": who,
        "subset": subset,
        "fraction": fraction,
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "records": records,
        "quarantined": quarantined,
        "peak_rss_mb": round(peak / 2**20, 1),
    }


def _head(path: Path, fraction: float, workdir: Path) -> Path:
    """The first `fraction` of a JSONL(.gz) shard's lines, written once next to the data."""
    out = workdir / "head" / f"{fraction}" / path.parent.name / path.name
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            data = fh.read()
        lines = data.splitlines(keepends=True)
        part = b"".join(lines[: max(1, int(len(lines) * fraction))])
        with opener(out, "wb") as fh:
            fh.write(part)
    return out


def _peak_rss_bytes() -> int:
    """This process's own peak RSS (VmHWM: reset at exec, unlike ru_maxrss, which a child inherits on Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _gunzip(path: Path) -> bytes:
    with gzip.open(path) as fh:
        return fh.read()


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gb", type=float, default=1.0)
    parser.add_argument("--workdir", default="/tmp/mira-bench-ingest")
    parser.add_argument("--new-gb", type=float, default=None, help="data for the issue-21 containers (--gb / 4)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the baseline / ours / per_record steps of each format this many times, alternating, and report "
        "the median of the per-round ratios with their range (on a shared machine one load spike moves one run)",
    )
    parser.add_argument(
        "--formats",
        nargs="+",
        choices=(*NEW_FORMATS, *MAIN_FORMATS),
        default=None,
        help="only these formats (default: all)",
    )
    parser.add_argument("--one", nargs=4, metavar=("FMT", "WHO", "FRACTION", "SUBSET"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    formats = set(args.formats or (*NEW_FORMATS, *MAIN_FORMATS))
    workdir = Path(args.workdir)
    if args.one:
        fmt, who, fraction, subset = args.one
        print(json.dumps(run_one(workdir, fmt, who, float(fraction), subset)))
        return
    t = time.perf_counter()
    info = generate(workdir, args.gb)
    print(
        f"data: {info['jsonl_bytes'] / 1e9:.2f} GB of JSONL ({info['copies']} copies of the sample), generated "
        f"or reused in {time.perf_counter() - t:.0f} s",
        flush=True,
    )
    for fmt in ("jsonl", "gz"):  # the quarter-size inputs, made here so that no measured process makes them
        for family in ("qa_with_think", "agent"):
            for f in _files(workdir, fmt, family, 1.0):
                _head(f, 0.25, workdir)
    new = generate_new(workdir, args.new_gb if args.new_gb is not None else args.gb / 4)
    results = []
    for fmt in (f for f in NEW_FORMATS if f in formats):
        for who in ("baseline", "ours", "per_record") if fmt == "qa_short" else ("baseline", "ours"):
            out = subprocess.run(
                [sys.executable, __file__, "--workdir", str(workdir), "--one", fmt, who, "1.0", "all"],
                capture_output=True,
                text=True,
            )
            if out.returncode != 0:
                raise SystemExit(f"bench step {fmt} {who} failed: {out.stderr.strip().splitlines()[-1]}")
            row = json.loads(out.stdout.strip().splitlines()[-1])
            row["mb"] = round(new["bytes"][fmt] / 1e6, 1)
            row["mb_per_s"] = round(row["mb"] / row["wall_s"], 1)
            row["records_per_s"] = round(row["records"] / row["wall_s"])
            results.append(row)
            print(json.dumps(row), flush=True)
    plain = (("baseline", 1.0, "plain"), ("ours", 1.0, "plain"), ("per_record", 1.0, "plain"))
    steps = [
        (fmt, step, r)
        for r in range(args.rounds)
        for fmt in MAIN_FORMATS
        if fmt in formats
        for step in plain + ((("ours", 1.0, "all"), ("ours", 0.25, "all")) if r == 0 else ())
    ]
    for fmt, (who, fraction, subset), round_ in steps:
        out = subprocess.run(
            [sys.executable, __file__, "--workdir", str(workdir), "--one", fmt, who, str(fraction), subset],
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            raise SystemExit(f"bench step {fmt} {who} {subset} failed: {out.stderr.strip().splitlines()[-1]}")
        row = json.loads(out.stdout.strip().splitlines()[-1])
        left_out = info["parquet_left_out"] if fmt == "parquet" else []
        if subset == "plain":
            left_out = left_out + info["ndjson_left_out"] + info["parquet_left_out"]
        nbytes = sum(b for name, b in info["bytes_by_name"].items() if name not in left_out)
        mb = nbytes * fraction / 1e6
        row["mb"] = round(mb, 1)
        row["mb_per_s"] = round(mb / row["wall_s"], 1)
        row["mb_per_cpu_s"] = round(mb / row["cpu_s"], 1)
        row["records_per_s"] = round(row["records"] / row["wall_s"])
        row["round"] = round_
        row["load_avg_1min"] = float(Path("/proc/loadavg").read_text().split()[0])
        results.append(row)
        print(json.dumps(row), flush=True)
    summary: dict = {
        "jsonl_gb": round(info["jsonl_bytes"] / 1e9, 3),
        "left_out_of_baseline": sorted(set(info["ndjson_left_out"] + info["parquet_left_out"])),
        "left_out_of_parquet": info["parquet_left_out"],
        "cores": os.cpu_count(),
    }

    def pick(fmt: str, who: str, subset: str, fraction: float = 1.0) -> dict:
        return next(
            r for r in results if (r["format"], r["who"], r["subset"], r["fraction"]) == (fmt, who, subset, fraction)
        )

    for fmt in (f for f in NEW_FORMATS if f in formats):
        base, ours = pick(fmt, "baseline", "all"), pick(fmt, "ours", "all")
        summary[fmt] = {
            "time_ratio_vs_baseline": round(ours["wall_s"] / base["wall_s"], 2),
            "ours_mb_per_s": ours["mb_per_s"],
            "baseline_mb_per_s": base["mb_per_s"],
            "ours_records": ours["records"],
            "ours_quarantined": ours["quarantined"],
            "baseline_rows": base["records"],
            "ours_peak_rss_mb": ours["peak_rss_mb"],
            "baseline_peak_rss_mb": base["peak_rss_mb"],
        }
        if fmt == "qa_short":
            old = pick(fmt, "per_record", "all")
            summary[fmt].update(per_record_time_ratio_vs_baseline=round(old["wall_s"] / base["wall_s"], 2))
            summary[fmt].update(ours_cpu_s=ours["cpu_s"], per_record_cpu_s=old["cpu_s"])
    for fmt in (f for f in MAIN_FORMATS if f in formats):
        base, same, old, whole, quarter = (
            pick(fmt, "baseline", "plain"),
            pick(fmt, "ours", "plain"),
            pick(fmt, "per_record", "plain"),
            pick(fmt, "ours", "all"),
            pick(fmt, "ours", "all", 0.25),
        )
        summary[fmt] = {
            "time_ratio_vs_baseline": round(same["wall_s"] / base["wall_s"], 2),
            "per_record_time_ratio_vs_baseline": round(old["wall_s"] / base["wall_s"], 2),
            "ours_cpu_s_same_files": same["cpu_s"],
            "per_record_cpu_s_same_files": old["cpu_s"],
            "ours_mb_per_s": whole["mb_per_s"],
            "ours_mb_per_cpu_s": whole["mb_per_cpu_s"],
            "ours_records_per_s": whole["records_per_s"],
            "baseline_mb_per_s": base["mb_per_s"],
            "ours_same_files_mb_per_s": same["mb_per_s"],
            "ours_peak_rss_mb": whole["peak_rss_mb"],
            "ours_peak_rss_mb_at_quarter": quarter["peak_rss_mb"],
            "ours_time_s": whole["wall_s"],
            "ours_time_s_at_quarter": quarter["wall_s"],
            "baseline_peak_rss_mb": base["peak_rss_mb"],
            "records": whole["records"],
            "quarantined": whole["quarantined"],
        }
        if args.rounds > 1:  # the same steps, alternating: medians of the per-round ratios, with their range
            summary[fmt].update(_rounds(results, fmt))
    print(json.dumps(summary))


def _rounds(results: list[dict], fmt: str) -> dict:
    """Per-round ratios of ours and per_record to the baseline (wall and CPU), as medians and ranges."""
    rows = [r for r in results if r["format"] == fmt and r["subset"] == "plain"]
    by_round: dict[int, dict[str, dict]] = {}
    for r in rows:
        by_round.setdefault(r["round"], {})[r["who"]] = r
    out: dict = {"rounds": len(by_round)}
    for who in ("ours", "per_record"):
        wall = [b[who]["wall_s"] / b["baseline"]["wall_s"] for b in by_round.values()]
        cpu = [b[who]["cpu_s"] / b["baseline"]["cpu_s"] for b in by_round.values()]
        out[f"{who}_time_ratio_median"] = round(statistics.median(wall), 2)
        out[f"{who}_time_ratio_range"] = [round(min(wall), 2), round(max(wall), 2)]
        out[f"{who}_cpu_ratio_median"] = round(statistics.median(cpu), 2)
        out[f"{who}_cpu_s_median"] = round(statistics.median(b[who]["cpu_s"] for b in by_round.values()), 3)
        out[f"{who}_peak_rss_mb_median"] = round(statistics.median(b[who]["peak_rss_mb"] for b in by_round.values()))
    out["baseline_wall_s_median"] = round(statistics.median(b["baseline"]["wall_s"] for b in by_round.values()), 3)
    out["baseline_cpu_s_median"] = round(statistics.median(b["baseline"]["cpu_s"] for b in by_round.values()), 3)
    out["load_avg_1min_range"] = [min(r["load_avg_1min"] for r in rows), max(r["load_avg_1min"] for r in rows)]
    return out


if __name__ == "__main__":
    main()
