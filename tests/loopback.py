"""A real OpenAI-compatible HTTP server on loopback, for tests: by default it answers chat completions in
the contract format (via the offline stand-in); a responder can inject faults. It records every request."""

from __future__ import annotations

import hashlib
import json
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from mira_dagster.core.offline import OfflineBackend


@dataclass
class Reply:
    status: int = 200
    payload: dict | None = None
    delay_s: float = 0.0
    drop: bool = False  # close the connection without answering


Responder = Callable[[dict, int], Reply]  # (request body, attempt number for this prompt) -> Reply


def user_key(body: dict) -> str:
    return hashlib.sha256(body["messages"][-1]["content"].encode()).hexdigest()[:16]


def word_vector(text: str, dim: int = 64) -> list[float]:
    """A bag-of-words vector (each word hashed to a column): similar texts get similar vectors."""
    vec = [0.0] * dim
    for word in text.lower().split():
        vec[int(hashlib.md5(word.encode()).hexdigest(), 16) % dim] += 1.0
    return vec


def completion(body: dict, text: str, finish_reason: str = "stop") -> dict:
    return {
        "id": "cmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": body["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150},
    }


class ChatServer:
    def __init__(self, responder: Responder | None = None, latency_s: float = 0.0) -> None:
        self.requests: list[dict] = []
        self.embedding_requests = 0
        self.answered: list[str] = []  # user_key of every 200 reply written
        self.auth_headers: list[str] = []
        self.attempts: dict[str, int] = {}
        self.lock = threading.Lock()
        self.latency_s = latency_s
        self.offline = OfflineBackend("student", [4, 9, 14])
        self.responder = responder or (lambda body, attempt: Reply(payload=self.contract(body)))

    def contract(self, body: dict) -> dict:
        return completion(body, self.offline.reply(body["messages"][-1]["content"]))

    @property
    def chat_requests(self) -> int:
        return len(self.requests)


@contextmanager
def serve(server: ChatServer) -> Iterator[str]:
    """Start the server on 127.0.0.1 (a free port) and yield its base URL (…/v1)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path.rstrip("/") == "/v1/embeddings":
                with server.lock:
                    server.embedding_requests += 1
                inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
                data = [{"object": "embedding", "index": i, "embedding": word_vector(t)} for i, t in enumerate(inputs)]
                self._send(
                    200,
                    {
                        "object": "list",
                        "data": data,
                        "model": body["model"],
                        "usage": {"prompt_tokens": 1, "total_tokens": 1},
                    },
                )
                return
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._send(404, {"error": {"message": "not found"}})
                return
            key = user_key(body)
            with server.lock:
                server.requests.append(body)
                server.auth_headers.append(self.headers.get("Authorization", ""))
                attempt = server.attempts[key] = server.attempts.get(key, 0) + 1
            reply = server.responder(body, attempt)
            time.sleep(server.latency_s + reply.delay_s)
            if reply.drop:
                self.close_connection = True
                self.connection.close()
                return
            self._send(reply.status, reply.payload or {})
            if reply.status == 200:
                with server.lock:
                    server.answered.append(key)

        def _send(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a timeout test)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        httpd.shutdown()
        httpd.server_close()


def wait_for_http(url: str, proc: subprocess.Popen, timeout_s: float, what: str) -> None:
    """Poll `url` until it answers; fail if `proc` exits first or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url, timeout=5)
            return
        except OSError:
            assert proc.poll() is None, f"{what} exited"
            assert time.monotonic() < deadline, f"{what} did not start in {timeout_s:.0f} s"
            time.sleep(0.5)
