"""Benchmark of the scoring path against a loopback server with a fixed latency.

    python bench/scoring.py [--records 5000] [--concurrency 64] [--latency 0.2] [--sequential 40]

A server process answers every chat completion in the contract format after `latency` seconds, serving at
most `concurrency` requests at once (like a vLLM server with that many sequences in flight). Measured in the
same run:
- our path (`score_jobs` with the OpenAI backend, the reply cache on disk): achieved requests/s over the
  ideal concurrency / latency;
- the model card's loop (one `client.chat.completions.create` after another) on `--sequential` records:
  our speed-up over it;
- CPU milliseconds per record spent in our own code (prompt build, parse, persist), timed on their own.
The last line printed is one JSON object with these figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from openai import OpenAI  # noqa: E402

from mira_dagster.core.offline import OfflineBackend  # noqa: E402
from mira_dagster.core.parsing import parse_reply  # noqa: E402
from mira_dagster.core.prompts import render_system, render_user  # noqa: E402
from mira_dagster.core.records import Record, record_id_of  # noqa: E402
from mira_dagster.core.scoring import Completion, Job, ScorerSpec  # noqa: E402
from mira_dagster.core.tables import scores_frame  # noqa: E402
from mira_dagster.io.anchors import load_rubric  # noqa: E402
from mira_dagster.io.llm_client import Endpoint, OpenAIBackend  # noqa: E402
from mira_dagster.io.registry import load_config  # noqa: E402
from mira_dagster.io.store import ParquetReplyCache  # noqa: E402
from mira_dagster.io.templates import load_templates
from tests.helpers import score_jobs  # noqa: E402


# -- the loopback server (its own process, so it does not share our GIL) --------------------------------
async def _serve(port: int, latency: float, concurrency: int, reply: bytes, ready: mp.Event) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await reader.readexactly(length)
                async with gate:
                    await asyncio.sleep(latency)
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                    + str(len(reply)).encode()
                    + b"\r\n\r\n"
                    + reply
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    ready.set()
    async with server:
        await server.serve_forever()


def _server_main(port: int, latency: float, concurrency: int, reply: bytes, ready: mp.Event) -> None:
    asyncio.run(_serve(port, latency, concurrency, reply, ready))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the workload -------------------------------------------------------------------------------------
def make_records(n: int) -> list[Record]:
    records = []
    for i in range(n):
        fields = {
            "question": f"Problem {i}: what is {i} * 7 + {i % 13}? Explain each step.",
            "thinking": f"We multiply {i} by 7 to get {i * 7}, then add {i % 13}. " * 20,
            "answer": f"The result is \\boxed{{{i * 7 + i % 13}}}.",
        }
        records.append(
            Record(
                record_id=record_id_of(fields),
                source="bench",
                group_id="2",
                format="qa_with_think",
                layout="question_answer",
                n_tokens=400,
                origin_file="bench",
                origin_line=i + 1,
                **fields,
            )
        )
    return records


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--sequential", type=int, default=40)
    args = ap.parse_args()

    cfg = load_config()
    rubric, templates = load_rubric(cfg.groups["2"].anchors, "2", "qa_with_think"), load_templates()
    spec = ScorerSpec(
        role="student",
        backend="openai",
        model="whw06/MIRA-QA-Group3",
        system_prompt=render_system(templates, rubric, cfg.groups["2"].description),
        user_template=templates.user,
        anchors_sha256=rubric.file_sha256,
        temperature=0.7,
        top_p=0.95,
        max_tokens=2048,
    )
    records = make_records(args.records)
    sample_user = render_user(spec.user_template, rubric, records[0])
    reply_text = OfflineBackend("student").reply(sample_user)
    reply = json.dumps(
        {
            "id": "b",
            "object": "chat.completion",
            "created": 0,
            "model": spec.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply_text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 900, "completion_tokens": 400, "total_tokens": 1300},
        }
    ).encode()

    port = free_port()
    ready = mp.Event()
    server = mp.Process(target=_server_main, args=(port, args.latency, args.concurrency, reply, ready), daemon=True)
    server.start()
    ready.wait(30)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            # our path, end to end: prompts, async client, cache on disk, parse
            jobs = [Job(r, render_user(spec.user_template, rubric, r)) for r in records]
            # the project's default client settings, as a user runs them
            in_flight = cfg.pipeline.max_in_flight
            backend = OpenAIBackend(Endpoint((url,), "EMPTY", spec.model), max_in_flight=in_flight)
            cache = ParquetReplyCache(Path(tmp) / "replies")
            t0 = time.perf_counter()
            outcomes, stats = asyncio.run(
                score_jobs(jobs, spec, backend, cache, max_model_len=65536, max_in_flight=backend.capacity)
            )
            ours_s = time.perf_counter() - t0
            assert stats.answered == args.records and all(o.result.status == "ok" for o in outcomes)

            # the model card's loop
            client = OpenAI(base_url=url, api_key="EMPTY")
            t0 = time.perf_counter()
            for job in jobs[: args.sequential]:
                client.chat.completions.create(
                    model=spec.model,
                    messages=[{"role": "system", "content": spec.system_prompt}, {"role": "user", "content": job.user}],
                    temperature=0.7,
                    top_p=0.95,
                    max_tokens=2048,
                )
            seq_rate = args.sequential / (time.perf_counter() - t0)

            # CPU in our own code, each phase on its own
            cpu = {}
            t0 = time.process_time()
            users = [render_user(spec.user_template, rubric, r) for r in records]
            cpu["prompt_build"] = time.process_time() - t0
            t0 = time.process_time()
            parsed = [parse_reply(reply_text, "stop") for _ in users]
            cpu["parse"] = time.process_time() - t0
            comp = Completion(text=reply_text, finish_reason="stop", prompt_tokens=900, completion_tokens=400)
            t0 = time.process_time()
            with ParquetReplyCache(Path(tmp) / "persist").writer("v", batch_size=256) as w:
                for r in records:
                    w.add(r.record_id, comp)
            scores_frame(records, outcomes, spec).write_parquet(Path(tmp) / "scores.parquet")
            cpu["persist"] = time.process_time() - t0
            assert len(parsed) == len(users)
    finally:
        server.terminate()

    ideal = args.concurrency / args.latency
    achieved = args.records / ours_s
    cpu_ms = {k: round(1000 * v / args.records, 4) for k, v in cpu.items()}
    result = {
        "records": args.records,
        "concurrency": args.concurrency,
        "client_max_in_flight": cfg.pipeline.max_in_flight,
        "latency_s": args.latency,
        "wall_s": round(ours_s, 2),
        "achieved_rps": round(achieved, 1),
        "ideal_rps": round(ideal, 1),
        "fraction_of_ideal": round(achieved / ideal, 3),
        "sequential_rps": round(seq_rate, 2),
        "speedup_vs_sequential": round(achieved / seq_rate, 1),
        "cpu_ms_per_record": round(sum(cpu_ms.values()), 4),
        "cpu_ms_per_record_by_phase": cpu_ms,
    }
    print(f"our path: {achieved:.1f} req/s of ideal {ideal:.1f} ({achieved / ideal:.3f}) in {ours_s:.1f} s")
    print(f"model-card loop: {seq_rate:.2f} req/s; speed-up {achieved / seq_rate:.1f}x")
    print(f"CPU in our code: {sum(cpu_ms.values()):.3f} ms/record {cpu_ms}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
