"""The contract fast path of parse_reply against the full parser, same replies, same run (issue 25 item 2).

Replies are the offline student's (core/offline.py, the loopback servers of bench/pipeline.py answer with the same
text) to user prompts whose dimension lines are `[Ai] <name>: <score>/10`: 8 dimensions (about 1 kB a reply, the
lead's measurement) and the 15 of the shipped group 2 rubric. Each side parses every reply, alternating, `--runs`
times; CPU microseconds a reply (time.process_time, the steadier figure on a shared machine) and the ratio
fast / full. Every reply is checked to take the fast path and to give the full parser's result.

    .venv/bin/python bench/parsing.py [--replies 2000] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence

from mira_dagster.core.offline import OfflineBackend
from mira_dagster.core.parsing import ScoreResult, parse_contract, parse_reply, parse_reply_full
from mira_dagster.package_data import ANCHORS_DIR

EIGHT = [
    "clarity",
    "correctness",
    "reasoning_depth",
    "relevance",
    "efficiency",
    "completeness",
    "novelty",
    "difficulty",
]


def _replies(names: Sequence[str], count: int) -> list[str]:
    """The offline student's replies to `count` distinct user prompts listing `names`."""
    student = OfflineBackend("student")
    slots = "\n".join(f"[A{j}] {d}: <score>/10" for j, d in enumerate(names, 1))
    users = [f"Record {i}: a math problem {i * 7} with answer {i}.\nDimensions:\n{slots}" for i in range(count)]
    return [student.reply(u) for u in users]


def _cpu_us(
    parse: Callable[[str, str | None, Sequence[str]], ScoreResult], replies: list[str], names: list[str]
) -> float:
    start = time.process_time()
    for r in replies:
        parse(r, "stop", names)
    return (time.process_time() - start) / len(replies) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--replies", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    group2 = [json.loads(line)["name"] for line in (ANCHORS_DIR / "group_2_dim_anchors.jsonl").open()]
    out: dict[str, object] = {}
    for label, names in (("8 dimensions", EIGHT), ("15 dimensions (group 2)", group2)):
        replies = _replies(names, args.replies)
        for r in replies:
            if parse_contract(r, "stop", names) is None or parse_reply(r, "stop", names) != parse_reply_full(
                r, "stop", names
            ):
                raise SystemExit(f"a reply did not take the fast path or gave another result: {r[:80]!r}")
        full, fast = [], []
        for _ in range(args.runs):
            full.append(_cpu_us(parse_reply_full, replies, names))
            fast.append(_cpu_us(parse_reply, replies, names))
        row = {
            "reply_bytes": round(statistics.mean(len(r.encode()) for r in replies)),
            "full_us": [round(x, 1) for x in full],
            "fast_us": [round(x, 1) for x in fast],
            "fast_over_full": round(statistics.median(fast) / statistics.median(full), 3),
        }
        print(f"{label}: {row}", flush=True)
        out[label] = row
    print(json.dumps(out))


if __name__ == "__main__":
    main()
