"""An OpenAI-compatible server on loopback for bench/pipeline.py: tests/loopback.py's server answering at once in
the cards' format (core/offline.OfflineBackend's reply text, deterministic scores), run as its own process so its
CPU is not the pipeline's. It keeps no per-request state (the test server records every request).

    .venv/bin/python bench/loopback_server.py teacher|student URL_FILE

Writes its base URL (…/v1) to URL_FILE once it listens; runs until killed.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from http.server import ThreadingHTTPServer  # noqa: E402

from mira_dagster.core.offline import OfflineBackend  # noqa: E402
from mira_dagster.core.offline_judge import OfflineJudge  # noqa: E402
from tests.loopback import ChatServer, completion, serve  # noqa: E402


class _Count:
    """Stands in for the test server's request logs: counts, keeps nothing."""

    def __init__(self) -> None:
        self.n = 0

    def append(self, _: Any) -> None:
        self.n += 1

    def __len__(self) -> int:
        return self.n


class _NoAttempts(dict):
    """Every prompt is its first attempt (the test server counts attempts per prompt, which grows)."""

    def __setitem__(self, key: str, value: int) -> None:
        pass


class BenchServer(ChatServer):
    """The teacher judges freely when asked to (rubric discovery, as core/offline_judge.OfflineJudge), else scores."""

    judge = OfflineJudge()

    def contract(self, body: dict) -> dict:
        user = body["messages"][-1]["content"]
        text = self.judge.judge(user) if "\nJudge this record freely" in user else self.offline.reply(user)
        return completion(body, text)


def main() -> None:
    role, url_file = sys.argv[1], Path(sys.argv[2])
    # a listen backlog like vLLM's (uvicorn: 2048), not http.server's 5: a step opens up to max_in_flight (128)
    # connections at once, and connections the backlog drops wait seconds for the kernel's retransmission
    ThreadingHTTPServer.request_queue_size = 2048
    server = BenchServer()
    server.offline = OfflineBackend(role, [4, 9, 14] if role == "student" else [])  # type: ignore[arg-type]
    server.requests, server.answered, server.auth_headers = _Count(), _Count(), _Count()  # type: ignore[assignment]
    server.attempts = _NoAttempts()
    with serve(server) as url:
        tmp = url_file.with_suffix(".tmp")
        tmp.write_text(url)
        tmp.replace(url_file)
        threading.Event().wait()


if __name__ == "__main__":
    main()
