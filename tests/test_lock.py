"""The environments the tests run in are exactly the committed locks (issue 20): what CI tests is what a clone gets."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UV = Path(os.environ.get("MIRA_UV") or ROOT / ".venv-uv" / "bin" / "uv")


def _uv(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    assert UV.exists(), f"no uv at {UV}: `make setup-test` installs it from deps/uv.txt (or set MIRA_UV)"
    return subprocess.run(
        [str(UV), *args], cwd=ROOT, capture_output=True, text=True, env={**os.environ, **env}, timeout=300
    )


def _pins(*files: str) -> dict[str, str]:
    """`name==version` lines of uv's compiled requirements files, names normalised as PEP 503 says."""
    pins: dict[str, str] = {}
    for name in files:
        for line in (ROOT / "deps" / name).read_text().splitlines():
            if m := re.match(r"^([A-Za-z0-9._-]+)==(\S+)", line):
                pins[re.sub(r"[-_.]+", "-", m[1]).lower()] = m[2]
    return pins


def test_uv_lock_matches_pyproject_and_the_venv_is_exactly_the_lock() -> None:
    """`--locked`: uv.lock is current with pyproject.toml; `--check`: this venv holds the runtime and the test extra
    at exactly the locked versions, nothing more and nothing less."""
    result = _uv("sync", "--locked", "--extra", "test", "--check", UV_PROJECT_ENVIRONMENT=sys.prefix)
    assert result.returncode == 0, result.stderr + result.stdout


def test_the_check_fails_on_a_version_the_lock_does_not_hold(tmp_path: Path) -> None:
    """The check above can fail: a venv with one package at another version is out of sync."""
    venv = tmp_path / "venv"
    assert _uv("venv", "--quiet", str(venv)).returncode == 0
    assert _uv("pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), "tabulate==0.9.0").returncode == 0
    result = _uv("sync", "--locked", "--check", UV_PROJECT_ENVIRONMENT=str(venv))
    assert result.returncode != 0
    assert "tabulate" in result.stderr + result.stdout


@pytest.mark.vllm
def test_the_vllm_venv_is_exactly_its_lock() -> None:
    python = Path(os.environ.get("MIRA_VLLM_PYTHON") or ROOT / ".venv-vllm" / "bin" / "python")
    result = _uv("pip", "freeze", "--python", str(python))
    assert result.returncode == 0, result.stderr
    installed = {
        re.sub(r"[-_.]+", "-", name).lower(): version
        for name, version in (line.split("==", 1) for line in result.stdout.splitlines() if "==" in line)
    }
    assert installed == _pins("vllm.txt", "models.txt")


def test_lock_diff_names_what_the_newest_versions_change(tmp_path: Path) -> None:
    """`make deps-latest` prints this: every package whose version differs, added or gone, and a count."""
    old, new = tmp_path / "old.lock", tmp_path / "new.lock"
    old.write_text('[[package]]\nname = "a"\nversion = "1.0"\n[[package]]\nname = "b"\nversion = "2.0"\n')
    new.write_text('[[package]]\nname = "a"\nversion = "2.0"\n[[package]]\nname = "c"\nversion = "0.1"\n')
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "lock_diff.py"), str(old), str(new)], capture_output=True, text=True
    )
    lines = out.stdout.splitlines()
    assert (
        out.returncode == 0 and lines[-1] == "3 package(s) differ from the lock (2 locked, 2 in the newest resolution)"
    )
    assert [line.split()[0] for line in lines[:-1]] == ["a", "b", "c"]
    assert lines[0].split()[1:] == ["1.0", "->", "2.0"] and lines[1].split()[1:] == ["2.0", "->", "-"]
