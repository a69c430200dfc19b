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
    "http",
    "aiohttp",
    "urllib",
    "importlib",
    "builtins",
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
    "read_ipc",
    "scan_ipc",
    "read_excel",
    "read_database",
    "sink_parquet",
    "sink_csv",
    "sink_ipc",
    "sink_ndjson",
    "memory_map",
    "OSFile",
    "tofile",
    "fromfile",
    "open",
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
        elif isinstance(node, ast.ImportFrom) and node.level > 1:
            found.append((node.lineno, f"imports {'.' * node.level}{node.module or ''} (relative, outside core)"))
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            found += [(node.lineno, f"imports {n}") for n in names[:1] + names[1:] if _forbidden(n)][:1]
        elif isinstance(node, ast.Call):
            fn = node.func
            if isinstance(fn, ast.Name) and fn.id in {"open", "input", "print", "__import__", "exec", "eval"}:
                found.append((node.lineno, f"calls {fn.id}()"))
            elif isinstance(fn, ast.Attribute) and (
                fn.attr in FILE_METHODS or (fn.attr in WRITERS and (node.args or node.keywords))
            ):
                found.append((node.lineno, f"calls .{fn.attr}()"))
            elif isinstance(fn, ast.Attribute) and fn.attr == "import_module":
                found.append((node.lineno, "imports a module by name"))
            elif isinstance(fn, ast.Attribute) and fn.attr == "savefig" and _names_a_file(node):
                found.append((node.lineno, "calls .savefig() to a file"))
        elif isinstance(node, ast.Attribute) and node.attr in {"stdout", "stderr", "stdin"}:
            found.append((node.lineno, f"uses sys.{node.attr}"))
        elif isinstance(node, ast.Attribute | ast.Name) and getattr(node, "attr", getattr(node, "id", "")) in _ENV:
            found.append((node.lineno, "reads the environment"))
    return [f"{name}:{line}: {what}" for line, what in sorted(found)]


def _names_a_file(call: ast.Call) -> bool:
    """savefig(<a path>): a string or f-string, or a Path(...) call, as its first argument or `fname`."""
    args = [*call.args[:1], *(k.value for k in call.keywords if k.arg == "fname")]
    return any(
        isinstance(a, ast.JoinedStr)
        or (isinstance(a, ast.Constant) and isinstance(a.value, str))
        or (isinstance(a, ast.Call) and getattr(a.func, "id", getattr(a.func, "attr", "")) in {"Path", "joinpath"})
        or isinstance(a, ast.BinOp)  # folder / "name.png"
        for a in args
    )


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
        "path.open('w')",
        "gzip.open(p)",
        "from ..io.store import Store",
        "import io as _io; _io.open('x')",
        "builtins.open('x')",
        "import builtins",
        "import http.client",
        "import aiohttp",
        "importlib.import_module('os')",
        "import importlib",
        "pl.read_ipc('x')",
        "lf.sink_csv('x')",
        "pa.memory_map('x')",
        "pa.OSFile('x')",
        "np.fromfile('x')",
        "arr.tofile('x')",
        "fig.savefig('x.png')",
        "fig.savefig(out / 'x.png')",
        "fig.savefig(fname=f'{name}.png')",
        "sys.stdout.write('x')",
        "__import__('os')",
    ],
)
def test_the_checker_catches_each_kind_of_io(snippet: str) -> None:
    assert problems(snippet, "m.py"), snippet


def test_the_checker_allows_values_and_frames() -> None:
    text = (
        "import polars as pl\nimport io\ns = df.write_csv()\nbuf = io.BytesIO()\nx = 'a'.replace('a', 'b')\n"
        "fig.savefig(buf, format='png')\nfrom .records import Record\n"
    )
    assert problems(text, "m.py") == []
