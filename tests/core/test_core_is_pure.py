"""core/ computes on values and frames: no module of it opens a file, a socket or a database, or reads the
environment (issue 13). Checked on the source (AST), so a new module or a new call is caught too; the checker itself
is shown to catch each kind of I/O on a small sample."""

from __future__ import annotations

import ast

import pytest

from mira_dagster.core.config import PROJECT_ROOT

CORE = PROJECT_ROOT / "mira_dagster" / "core"

# Modules whose import means I/O (files, processes, sockets, databases, object storage, HTTP clients) or a layer
# above core.
FORBIDDEN_MODULES = {
    "os",
    "shutil",
    "glob",
    "fcntl",
    "tempfile",
    "subprocess",
    "socket",
    "sqlite3",
    "duckdb",
    "openai",
    "httpx",
    "requests",
    "urllib.request",
    "s3fs",
    "fsspec",
    "boto3",
    "pyarrow.parquet",
    "pyarrow.dataset",
    "yaml",
    "dagster",
    "mira_dagster.io",
    "mira_dagster.defs",
    "mira_dagster.settings",
    "mira_dagster.instance",
    "mira_dagster.cli",
}
# Methods that touch the file system (pathlib) or read/write files (polars, pyarrow, numpy).
FILE_METHODS = {
    "read_text",
    "write_text",
    "read_bytes",
    "write_bytes",
    "mkdir",
    "unlink",
    "rmdir",
    "iterdir",
    "glob",
    "rglob",
    "exists",
    "is_file",
    "is_dir",
    "stat",
    "touch",
    "resolve",
    "read_parquet",
    "read_csv",
    "read_ndjson",
    "read_json",
    "scan_parquet",
    "scan_csv",
    "scan_ndjson",
    "sink_parquet",
    "load",
    "save",
    "loadtxt",
    "savetxt",
}
# Writers that return text when called without a destination (`df.write_csv()` is a string) and write a file with one.
WRITERS = {"write_parquet", "write_csv", "write_ndjson", "write_json", "write_ipc"}


def problems(source: str, name: str) -> list[str]:
    """Every I/O a module's source does, as `<name>:<line>: <what>`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, f"imports {a.name}") for a in node.names if _forbidden(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            found += [(node.lineno, f"imports {n}") for n in names[:1] + names[1:] if _forbidden(n)][:1]
        elif isinstance(node, ast.Call):
            fn = node.func
            if isinstance(fn, ast.Name) and fn.id in {"open", "input", "print"}:
                found.append((node.lineno, f"calls {fn.id}()"))
            elif isinstance(fn, ast.Attribute) and (
                fn.attr in FILE_METHODS or (fn.attr in WRITERS and (node.args or node.keywords))
            ):
                found.append((node.lineno, f"calls .{fn.attr}()"))
        elif isinstance(node, ast.Attribute | ast.Name) and getattr(node, "attr", getattr(node, "id", "")) in _ENV:
            found.append((node.lineno, "reads the environment"))
    return [f"{name}:{line}: {what}" for line, what in sorted(found)]


_ENV = {"environ", "getenv", "environb", "getenvb"}


def _forbidden(module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in FORBIDDEN_MODULES)


def test_no_core_module_does_io() -> None:
    found = []
    for path in sorted(CORE.glob("*.py")):
        found += problems(path.read_text(encoding="utf-8"), path.name)
    assert not found, "core/ must not do I/O:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "snippet",
    [
        "import os",
        "import duckdb",
        "from pyarrow import parquet",
        "from pyarrow.parquet import write_table",
        "from mira_dagster.io.store import Store",
        "import dagster as dg",
        "open('x')",
        "p.read_text()",
        "Path('x').mkdir()",
        "pl.read_parquet('x')",
        "df.write_parquet('x.parquet')",
        "df.write_csv(file='x.csv')",
        "x = environ['MIRA_HOME']",
        "os.getenv('MIRA_HOME')",
    ],
)
def test_the_checker_catches_each_kind_of_io(snippet: str) -> None:
    assert problems(snippet, "m.py"), snippet


def test_the_checker_allows_values_and_frames() -> None:
    text = "import polars as pl\nimport io\ns = df.write_csv()\nbuf = io.BytesIO()\nx = 'a'.replace('a', 'b')\n"
    assert problems(text, "m.py") == []
