"""The commands a user runs when sources are bad: `mira inspect` first, and `mira run` failing loudly, by name,
without touching the last good export."""

from __future__ import annotations

import gzip
import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.e2e.test_commands import BIN, user_env

pytestmark = pytest.mark.e2e

CHAT_VALUE = {
    "messages": [
        {"role": "user", "content": [{"type": "text", "value": "Is 91 prime?"}]},
        {
            "role": "assistant",
            "content": [{"type": "reasoning", "value": "91 = 7 * 13."}, {"type": "text", "value": "No."}],
        },
    ]
}


def _mira(args: list[str], cwd: Path, env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "mira"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_mira_inspect_reports_layouts_reasons_and_a_mapping(tmp_path: Path) -> None:
    env = user_env(tmp_path)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    rows = [{**CHAT_VALUE, "id": i} for i in range(3)]
    rows[1]["messages"][0]["content"][0]["value"] = "Is 97 prime?"
    rows[2]["messages"][0]["content"][0]["value"] = "Is 99 prime?"
    (inbox / "chat.jsonl.gz").write_bytes(gzip.compress(("\n".join(map(json.dumps, rows)) + "\n{broken\n").encode()))
    (inbox / "odd.jsonl").write_text(
        json.dumps({"prompt_text": "Why?", "model_reasoning": "Because.", "final": "Yes"}) + "\n"
    )
    out = _mira(["inspect", str(inbox), "--group", "2"], tmp_path, env)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "chat.jsonl.gz  (jsonl, gz)  4 read" in text
    assert "qa_with_think: 3 records (75%); layouts: chat_messages 3" in text
    assert "invalid JSON: 1" in text and "example #1 [chat_messages]" in text and "thinking: 91 = 7 * 13." in text
    assert "odd.jsonl  (jsonl)  1 read" in text and "['final', 'model_reasoning', 'prompt_text']: 1" in text
    assert "fields:" in text and "question: prompt_text" in text
    # nothing was written
    assert not (tmp_path / ".mira" / "tables").exists()

    missing = _mira(["inspect", str(inbox / "nope.jsonl")], tmp_path, env)
    assert missing.returncode == 1 and "file not found" in missing.stdout


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_failures_exit_non_zero_name_the_cause_and_keep_the_export(small_config: Path, tmp_path: Path) -> None:
    env = user_env(tmp_path)
    home = tmp_path / "runs[1]" / "home*"  # glob characters in MIRA_HOME work
    ok = _mira(["run", "--config", str(small_config), "--home", str(home)], tmp_path, env)
    assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-3000:]
    export = home / "exports" / "selected_subset"
    before = _tree(export)
    assert before

    # the student endpoint is down: the run fails within minutes, naming the endpoint
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    start = time.monotonic()
    down = _mira(
        ["run", "--config", str(small_config), "--home", str(home)], tmp_path, {**env, "MIRA_STUDENT_BASE_URL": url}
    )
    assert time.monotonic() - start < 300
    assert down.returncode != 0, down.stdout[-3000:]
    failed = [line for line in down.stderr.splitlines() if line.startswith("mira: FAILED")]
    assert failed and all(url in line or "127.0.0.1" in line for line in failed), down.stderr
    assert "Traceback" not in down.stdout + down.stderr and "Stack Trace" not in down.stdout + down.stderr
    assert _tree(export) == before  # byte-identical

    # a source whose file went missing: its partition fails with the file named; the others were read
    cfg = yaml.safe_load(small_config.read_text())
    shutil.copy(small_config.parent / "data" / "swe_openhands_resolver_output.jsonl", tmp_path / "x.jsonl")
    cfg["sources"]["gone"] = {"group": "D", "format": "agent", "files": [str(tmp_path / "missing.jsonl")]}
    broken = small_config.parent / "broken.yaml"
    broken.write_text(yaml.safe_dump(cfg))
    bad = _mira(["run", "--config", str(broken), "--home", str(home)], tmp_path, env)
    assert bad.returncode != 0
    assert any(
        "gone" in line and "missing.jsonl" in line and "file not found" in line for line in bad.stderr.splitlines()
    )
    assert "Traceback" not in bad.stdout + bad.stderr and "Stack Trace" not in bad.stdout + bad.stderr
    summary = bad.stdout[bad.stdout.index("| source") :]
    for source in ("lean_qa", "agent_openhands", "gone"):
        assert f"| {source} " in summary
    assert _tree(export) == before
