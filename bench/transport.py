"""Client CPU a chat request, openai's default httpx transport against ours (io/aiohttp_client.py), same run.

    .venv/bin/python bench/transport.py [--requests 3000] [--in-flight 64] [--runs 2]

One loopback server (bench/loopback_server.py, its own process, so its CPU is not counted) answers at once in the
cards' format. `OpenAIBackend.complete` (the scorer's whole request path: the openai client, the transport, reading
the reply) sends `--requests` student prompts at `--in-flight` at a time, first on httpx, then on aiohttp, `--runs`
times alternating, each after a warm-up of 200 requests on a fresh backend. CPU is this process's
`time.process_time` over the batch (the event loop, the client and the transport; nothing else runs). Prints one
JSON object: ms of CPU a request for each run, and the ratio aiohttp / httpx of the means.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import openai  # noqa: E402

from mira_dagster.core.scoring import ScorerSpec  # noqa: E402
from mira_dagster.io import llm_client  # noqa: E402
from mira_dagster.io.aiohttp_client import AioHttpClient  # noqa: E402
from mira_dagster.io.llm_client import Endpoint, OpenAIBackend  # noqa: E402
from tests.core.test_scoring import _setup  # noqa: E402

CLIENTS = {"httpx": openai.DefaultAsyncHttpxClient, "aiohttp": AioHttpClient}


def _server() -> tuple[subprocess.Popen, str]:
    """Start bench/loopback_server.py (student) and wait for its URL."""
    url_file = Path(tempfile.mkdtemp()) / "url"
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("loopback_server.py")), "student", url_file])
    deadline = time.monotonic() + 60
    while not url_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("bench/loopback_server.py did not start")
        time.sleep(0.05)
    return proc, url_file.read_text()


async def _batch(backend: OpenAIBackend, spec: ScorerSpec, prompts: list[str], in_flight: int) -> None:
    gate = asyncio.Semaphore(in_flight)

    async def one(user: str) -> None:
        async with gate:
            await backend.complete(spec.system_prompt, user, spec)

    await asyncio.gather(*(one(u) for u in prompts))


async def _measure(name: str, url: str, spec: ScorerSpec, prompts: list[str], n: int, in_flight: int) -> float:
    """ms of this process's CPU a request on the named transport, after a warm-up on the same backend."""
    llm_client.AioHttpClient = CLIENTS[name]  # type: ignore[misc]  # the backend builds its client with this name
    backend = OpenAIBackend(Endpoint((url,), "EMPTY", spec.model), max_in_flight=in_flight)
    try:
        await _batch(backend, spec, [prompts[i % len(prompts)] for i in range(200)], in_flight)
        work = [prompts[i % len(prompts)] for i in range(n)]
        cpu = time.process_time()
        await _batch(backend, spec, work, in_flight)
        cpu = time.process_time() - cpu
        assert backend.stats.retries == 0 and backend.stats.requests == 200 + n, backend.stats
    finally:
        await backend.aclose()
    return cpu / n * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--in-flight", type=int, default=64)
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    spec, _, jobs = _setup("student")
    prompts = [j.user for j in jobs]
    proc, url = _server()
    ms: dict[str, list[float]] = {name: [] for name in CLIENTS}
    try:
        for _ in range(args.runs):
            for name in CLIENTS:
                cpu_ms = asyncio.run(_measure(name, url, spec, prompts, args.requests, args.in_flight))
                ms[name].append(round(cpu_ms, 3))
    finally:
        proc.kill()
        proc.wait()
    ratio = statistics.mean(ms["aiohttp"]) / statistics.mean(ms["httpx"])
    out = {
        "requests": args.requests,
        "in_flight": args.in_flight,
        "cpu_ms_per_request": ms,
        "ratio_aiohttp_over_httpx": round(ratio, 3),
        "prompt_chars_mean": round(statistics.mean(len(p) for p in prompts)),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
