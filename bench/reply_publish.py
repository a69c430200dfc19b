"""Publishing answers to object storage: the reply cache's writer against a synchronous PUT per answer, same run.

    .venv/bin/python bench/reply_publish.py [--answers 600] [--rates 50,200,0]

A moto S3 server on loopback stands in for the bucket. For each offered rate (answers a second; 0 = as fast as the
caller can add), N answers are added to one writer of the reply cache as the scoring loop adds them:
- ours: `ReplyWriter` with reply_publish_seconds 0 (group commit by its publisher thread, io/reply_cache.py), then
  `flush()`;
- the baseline: what one writes first for "every answer durable on S3 before going on": append the answer to a local
  log, PUT a one-row object (the same create-only `_put`), remove the log, in the caller's thread.
Reported per run: the caller's time per `add` (median, p99: time the scoring loop cannot send requests), the
publish lag (answer added -> its object written; median, p99), PUTs, the total time, and the process's peak RSS.
The last line is one JSON object with the ratios ours / baseline (lower is better for add time and lag).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mira_dagster.core.scoring import Completion  # noqa: E402
from mira_dagster.io.store import ObjectReplyCache, ReplyWriter, Store, object_store  # noqa: E402
from tests.defs.test_object_store import moto_s3  # noqa: E402

COMPLETION = Completion(text="x" * 1500, finish_reason="stop", prompt_tokens=900, completion_tokens=400)


def _pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


class _Timed:
    """The cache's PUT, timed, with each row's publish lag (the rows carry when they were added)."""

    def __init__(self, cache: ObjectReplyCache, version: str) -> None:
        self.cache, self.version = cache, version
        self.puts: list[float] = []
        self.lags: list[float] = []
        self.added: dict[str, float] = {}

    def put(self, df: object) -> str:
        t = time.perf_counter()
        name = self.cache._put(self.version, df)  # type: ignore[arg-type]
        done = time.perf_counter()
        self.puts.append(done - t)
        self.lags += [done - self.added[rid] for rid in df["record_id"].to_list()]  # type: ignore[index]
        return name


def _sync_writer(cache: ObjectReplyCache, version: str, timed: _Timed):  # noqa: ANN202
    """The baseline: log the answer, PUT it, remove the log, in the caller's thread."""
    import polars as pl

    from mira_dagster.io.store import ParquetReplyCache

    log = cache._dir(version) / f"{uuid.uuid4().hex}.wal.jsonl"
    log.parent.mkdir(parents=True, exist_ok=True)

    def add(record_id: str) -> None:
        row = {"record_id": record_id, **COMPLETION.model_dump(), "created_at": None, "attempt": 0}
        with log.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        from datetime import UTC, datetime

        row["created_at"] = datetime.now(UTC)
        timed.put(pl.DataFrame([row], schema=ParquetReplyCache.SCHEMA))
        log.unlink()

    return add


def run(endpoint: str, who: str, n: int, rate: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp), store_url=f"s3://bench/{uuid.uuid4().hex[:8]}", s3_endpoint_url=endpoint)
        cache = store.replies
        assert isinstance(cache, ObjectReplyCache)
        version = f"v-{who}"
        timed = _Timed(cache, version)
        writer = None
        if who == "ours":
            writer = ReplyWriter(cache._dir(version), 256, publish=timed.put, flush_seconds=0)
            add = lambda rid: writer.add(rid, COMPLETION)  # noqa: E731
        else:
            add = _sync_writer(cache, version, timed)
        add_s: list[float] = []
        start = time.perf_counter()
        for i in range(n):
            if rate:  # the answers arrive at the offered rate (or as fast as the caller gets back, if slower)
                time.sleep(max(0.0, start + i / rate - time.perf_counter()))
            rid = f"{i:08d}"
            timed.added[rid] = time.perf_counter()
            t = time.perf_counter()
            add(rid)
            add_s.append(time.perf_counter() - t)
        if writer is not None:
            writer.flush()
            writer.close()
        total = time.perf_counter() - start
        assert len(timed.lags) == n, (who, len(timed.lags))  # every answer published exactly once
    return {
        "who": who,
        "rate": rate,
        "answers": n,
        "add_median_ms": round(statistics.median(add_s) * 1000, 3),
        "add_p99_ms": round(_pct(add_s, 0.99) * 1000, 3),
        "lag_median_ms": round(statistics.median(timed.lags) * 1000, 1),
        "lag_p99_ms": round(_pct(timed.lags, 0.99) * 1000, 1),
        "puts": len(timed.puts),
        "put_median_ms": round(statistics.median(timed.puts) * 1000, 1),
        "total_s": round(total, 2),
        "answers_per_s": round(n / total, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answers", type=int, default=600)
    parser.add_argument("--rates", default="50,200,0", help="offered answers a second, comma-separated; 0 = unpaced")
    args = parser.parse_args()
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    summary: dict[str, dict] = {}
    with moto_s3("bench") as endpoint:
        object_store("s3://bench/x", endpoint).mkdir("bench")
        for rate in (float(r) for r in args.rates.split(",")):
            rows = {who: run(endpoint, who, args.answers, rate) for who in ("baseline", "ours")}
            for row in rows.values():
                print(json.dumps(row), flush=True)
            ours, base = rows["ours"], rows["baseline"]
            summary[f"rate_{rate:g}"] = {
                "add_p99_ratio": round(ours["add_p99_ms"] / base["add_p99_ms"], 4),
                "lag_median_ratio": round(ours["lag_median_ms"] / base["lag_median_ms"], 3),
                "puts_ratio": round(ours["puts"] / base["puts"], 3),
                "throughput_ratio": round(ours["answers_per_s"] / base["answers_per_s"], 2),
            }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
