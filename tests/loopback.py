"""A real OpenAI-compatible HTTP server on loopback, for tests: it answers chat completions in the
contract format (via the offline stand-in) and counts what it receives."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from mira_dagster.core.offline import OfflineBackend

Responder = Callable[[dict], tuple[int, dict]]


class ChatServer:
    def __init__(self, responder: Responder | None = None) -> None:
        self.requests: list[dict] = []
        self.auth_headers: list[str] = []
        self.lock = threading.Lock()
        self._offline = OfflineBackend("student", [4, 9, 14])
        self.responder = responder or self.contract_reply

    def contract_reply(self, body: dict) -> tuple[int, dict]:
        user = body["messages"][-1]["content"]
        text = self._offline.reply(user)
        return 200, {
            "id": "cmpl-test",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150},
        }

    @property
    def chat_requests(self) -> int:
        return len(self.requests)


@contextmanager
def serve(server: ChatServer) -> Iterator[str]:
    """Start the server on 127.0.0.1 (a free port) and yield its base URL (…/v1)."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path.rstrip("/") != "/v1/chat/completions":
                self.send_error(404)
                return
            with server.lock:
                server.requests.append(body)
                server.auth_headers.append(self.headers.get("Authorization", ""))
            status, payload = server.responder(body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        httpd.shutdown()
        httpd.server_close()
