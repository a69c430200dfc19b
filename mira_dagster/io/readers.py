"""Reading source files as a stream of units (a JSON Lines line, a JSON value, a CSV or Parquet row), in batches.

Containers are found by their CONTENT, never by the file name alone (a name only breaks ties), and named by
`describe_container(path)` for `mira inspect` and the raw_records metadata:
- compression (gzip, zstd, bzip2, xz), Parquet (`PAR1`), Arrow IPC files (`ARROW1`) and streams, zip and tar
  archives by their magic bytes; text in UTF-8, or UTF-16/32 by its byte-order mark (transcoded to UTF-8);
- JSON Lines: the first non-blank line is one whole JSON value and another line follows (or the file is named
  `.jsonl`/`.ndjson`). Each line is one unit, whatever its value: a line holding a list of messages is ONE unit
  (one conversation), never split;
- JSON values written one after another (pretty-printed or not, in any file name), and a single JSON document:
  the first line is not a whole value (or is the only line). Each top-level value is one unit, numbered 1, 2, ...;
- a top-level JSON array is read element by element (an Alpaca-style list of records), UNLESS its first elements
  are all turns (objects with a `role`/`from` key and a `content`/`value`/`text`/`parts`/`tool_calls` key, or
  agent steps: an `action`/`observation` with a `thought`/`response`/`message`/`content`, or OpenAI Responses
  `*_call` / `*_call_output` items, as an Agents SDK run saved with `to_input_list()`): then the array is one
  conversation or trajectory, and the whole array is ONE unit;
- CSV and TSV with a header (a `.csv`/`.tsv` name, or text that is not JSON and that csv.Sniffer reads as rows of
  a constant width): each data row is a dict of the header's columns, values as strings exactly as written;
- a Hugging Face `datasets` folder written by `save_to_disk` (`state.json` listing its Arrow stream files in
  `_data_files`, beside `dataset_info.json`): its rows, file after file in the listed order;
- archives (`.tar`, `.tar.gz`/`.tgz`, `.zip`, found by magic bytes): read member by member, each member being
  dispatched by content like a file (a unit names its member: `data.tar.gz!/a.jsonl`; unpacked meanwhile under
  MIRA_HOME/scratch, never the system temp folder), with the member count and
  the decompressed bytes per member and in total capped (see ARCHIVE_LIMITS); a member that is a link, a device,
  encrypted or itself an archive becomes one unreadable unit naming why, never bytes read as text.
What is none of these is refused in one line naming what it is: a git-LFS pointer ("run git lfs pull"), a 7-Zip or
RAR archive, a SQLite database, a pickle...; Parquet/Arrow columns of bytes holding text are decoded as UTF-8 (a
value that is not UTF-8 is that row's error, naming the column).

A `files:` entry is a path, a glob (`data/*.jsonl.gz`, `**` for subfolders) or a folder (every supported file
inside, recursively, skipping hidden `.x` / `_x` entries such as `_SUCCESS`). A path that exists is taken
literally, so paths with `[`, `*` or `?` in their names work. Only regular files are read (check_regular): a
symlink is followed only to a regular file inside an allowed root (the entry's own folder, the registry's folder,
the registry's `allowed_roots`, or the Hugging Face cache repository a snapshot link points into), never to /proc,
/sys, /dev, a socket, a FIFO or a device.

Memory stays bounded by the batch: lines are read with a size cap (a longer line is skipped to its end without
being held), JSON arrays and concatenated values through ijson, CSV row by row, Parquet and Arrow by record
batches. Errors in a unit are the caller's to quarantine; what makes a whole file unusable (missing, unreadable,
a corrupt Parquet file, changed while read) raises SourceFileError naming the file.
"""

from __future__ import annotations

import bz2
import csv
import glob
import gzip
import hashlib
import io
import json
import lzma
import os
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import ijson
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import zstandard

from mira_dagster.core.records import Unit

Kind = Literal["jsonl", "json", "csv", "parquet", "arrow", "hf_dataset", "tar", "zip"]
JsonMode = Literal["lines", "values", "elements", "trajectory"]

# name endings we recognise, longest first where one is the end of another
DATA_SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet", ".csv", ".tsv", ".arrow", ".tar", ".tgz", ".zip")
COMPRESSION_SUFFIXES = (".gz", ".zst", ".zstd", ".bz2", ".xz")
_MAGIC = {
    b"\x1f\x8b": "gz",
    b"\x28\xb5\x2f\xfd": "zst",
    b"BZh": "bz2",
    b"\xfd7zXZ\x00": "xz",
}
_PARQUET_MAGIC = b"PAR1"
_ARROW_FILE_MAGIC = b"ARROW1"
_ARROW_STREAM_MAGIC = b"\xff\xff\xff\xff"  # the continuation marker every Arrow IPC stream message starts with
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_LFS_POINTER = b"version https://git-lfs.github.com/spec/v1"
# formats we do not read, named by their magic bytes so that the refusal says what the file is
_REFUSED_MAGIC = {
    b"7z\xbc\xaf\x27\x1c": "a 7-Zip archive (extract it first)",
    b"Rar!\x1a\x07": "a RAR archive (extract it first)",
    b"SQLite format 3\x00": "a SQLite database",
    b"\x89HDF\r\n\x1a\n": "an HDF5 file",
    b"\x93NUMPY": "a NumPy array file",
    b"%PDF-": "a PDF document",
    b"Obj\x01": "an Avro container file",
    b"\x80\x02": "a Python pickle (never unpickled: it can run code)",
    b"\x80\x03": "a Python pickle (never unpickled: it can run code)",
    b"\x80\x04\x95": "a Python pickle (never unpickled: it can run code)",
    b"\x80\x05\x95": "a Python pickle (never unpickled: it can run code)",
}
# byte-order marks, longest first (the UTF-32-LE mark starts with the UTF-16-LE one)
_BOMS = (
    (b"\xff\xfe\x00\x00", "utf-32"),
    (b"\x00\x00\xfe\xff", "utf-32"),
    (b"\xff\xfe", "utf-16"),
    (b"\xfe\xff", "utf-16"),
)
_GLOB_CHARS = set("*?[")
# keys that make a JSON object a turn of a conversation (OpenAI messages, ShareGPT, agent steps)
_ROLE_KEYS = frozenset({"role", "from"})
_TURN_TEXT_KEYS = frozenset({"content", "value", "text", "parts", "tool_calls", "function_call"})
_STEP_KEYS = frozenset({"action", "observation", "thought", "response", "message", "content"})
# pseudo file systems whose "regular files" are the process's or the machine's state, never data
_SPECIAL_ROOTS = (Path("/proc"), Path("/sys"), Path("/dev"))


@dataclass(frozen=True, slots=True)
class ArchiveLimits:
    """Bounds on what an archive may unpack to (a zip bomb is refused in one line, not written out)."""

    max_members: int = 100_000
    max_member_bytes: int = 8 << 30
    max_total_bytes: int = 64 << 30
    # past `ratio_floor_bytes` unpacked, an archive may unpack to at most `max_ratio` times its own size: text
    # compresses 3-20 times, a bomb thousands of times, and is refused after a second, not after filling a disk
    max_ratio: int = 200
    ratio_floor_bytes: int = 256 << 20


ARCHIVE_LIMITS = ArchiveLimits()


class SourceFileError(OSError):
    """A source file that cannot be read as a whole: the message names the source and the file."""


@dataclass(frozen=True, slots=True)
class Container:
    """What a file is, found from its bytes: kind, compression, text encoding and how its JSON or CSV is split."""

    kind: Kind
    comp: str | None = None
    encoding: str | None = None  # None = UTF-8; "utf-16" / "utf-32" (by BOM) or "utf-16-le"/"-be" (no BOM)
    json_mode: JsonMode | None = None
    delimiter: str | None = None
    members: int | None = None  # Hugging Face folders: data files

    def describe(self) -> str:
        """One line for `mira inspect` and the raw_records metadata."""
        what = {
            "jsonl": "JSON Lines (one value per line; a line holding a list is one unit)",
            "json": {
                "values": "JSON values one after another (each top-level value one unit)",
                "elements": "JSON array of records (each element one unit)",
                "trajectory": "JSON array of turns (the whole array one conversation / trajectory)",
                "lines": "JSON Lines",
                None: "JSON",
            }[self.json_mode],
            "csv": f"{'TSV' if self.delimiter == chr(9) else 'CSV'} with a header (each row one unit)",
            "parquet": "Parquet (each row one unit)",
            "arrow": "Arrow IPC (each row one unit)",
            "hf_dataset": f"Hugging Face datasets folder (save_to_disk, {self.members} Arrow file(s); each row a unit)",
            "tar": "tar archive (read member by member)",
            "zip": "zip archive (read member by member)",
        }[self.kind]
        extra = [f"{self.comp}-compressed"] if self.comp else []
        if self.encoding:
            extra.append(f"{self.encoding.upper()} text, transcoded to UTF-8")
        return what + (f", {', '.join(extra)}" if extra else "")


def split_name(name: str) -> tuple[str, str | None, str | None]:
    """(stem, data suffix, compression suffix) of a file name: `a.jsonl.gz` -> ('a', '.jsonl', '.gz')."""
    lower = name.lower()
    comp = next((c for c in COMPRESSION_SUFFIXES if lower.endswith(c)), None)
    if comp:
        lower, name = lower[: -len(comp)], name[: -len(comp)]
    data = next((d for d in DATA_SUFFIXES if lower.endswith(d)), None)
    if data:
        name = name[: -len(data)]
    return name, data, comp


def is_supported(path: Path) -> bool:
    """A file whose name says it is one of the accepted formats."""
    _, data, comp = split_name(path.name)
    return data is not None and not (data in (".parquet", ".arrow", ".zip", ".tgz") and comp)


def _hidden_name(path: str) -> bool:
    return Path(path).name.startswith((".", "_"))


def _literal_prefix(pattern: Path) -> str:
    """The pattern with its leading folders that exist as written escaped (`runs[1]/*.jsonl` with a folder named
    `runs[1]`), so that only the rest is read as a glob."""
    parts = pattern.parts
    for i in range(len(parts) - 1, 0, -1):
        head = Path(*parts[:i])
        if head.is_dir():
            return str(Path(glob.escape(str(head)), *parts[i:]))
    return str(pattern)


def _glob_base(pattern: Path) -> Path:
    """The deepest folder of a glob pattern that has no glob character: where its matches are looked for."""
    parts = pattern.parts
    i = next((i for i, part in enumerate(parts) if _GLOB_CHARS & set(part)), len(parts))
    return Path(*parts[:i]) if i else Path(".")


def _within(path: Path, roots: Sequence[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def _hf_cache_repo(path: Path) -> Path | None:
    """The Hugging Face cache repository folder (`datasets--org--name`, holding `snapshots/` and `blobs/`) a path
    lies in, if any: its snapshot files are links into its `blobs/`, which is where they may point."""
    for parent in path.parents:
        if parent.name == "snapshots" and (parent.parent / "blobs").is_dir():
            return parent.parent
    return None


def regular_file_problem(
    path: Path, roots: Sequence[Path] = (), where: str = "the allowed roots", base: Path | None = None
) -> str | None:
    """Why `path` must not be read, or None: it is not a regular file (a folder, FIFO, socket, device, a broken
    or looping link), it lies in /proc, /sys or /dev, or a link takes it outside every allowed root. The allowed
    roots are `roots`, the folder the path was found under (`base`: a folder or glob entry; for a file named
    directly, its own folder) and, for a Hugging Face cache snapshot, its repository (whose blobs its links name).
    A file found under `base` is checked whatever link on its way led there; a file named directly only when it
    is itself a link."""
    try:
        real = Path(os.path.realpath(path, strict=True))
        st = os.stat(real)
    except (OSError, RuntimeError) as exc:  # dangling, a loop, no permission
        return f"cannot be read: {getattr(exc, 'strerror', None) or exc}"
    if _within(real, _SPECIAL_ROOTS):
        return f"leads to {Path(*real.parts[:2])}, a system pseudo-file, not data (not read)"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file (a folder, FIFO, socket or device: not read)"
    absolute = Path(os.path.abspath(path))
    if base is not None or os.path.islink(absolute):
        allowed = [Path(os.path.realpath(r)) for r in roots]
        allowed.append(Path(os.path.realpath(base if base is not None else absolute.parent)))
        if (repo := _hf_cache_repo(absolute)) is not None:
            allowed.append(Path(os.path.realpath(repo)))
        if not _within(real, allowed):
            return f"is a symlink to a file outside {where} (not followed; list its folder in allowed_roots)"
    return None


def check_regular(path: Path, source: str, roots: Sequence[Path] = (), base: Path | None = None) -> None:
    """Raise SourceFileError naming `path` when regular_file_problem finds one."""
    if problem := regular_file_problem(path, roots, base=base):
        raise SourceFileError(f"source {source!r}: {path} {problem}")


def is_hf_dataset(folder: Path) -> bool:
    """A folder written by `datasets.Dataset.save_to_disk`: a state.json naming its Arrow files."""
    state = folder / "state.json"
    if not state.is_file() or state.stat().st_size > 1 << 20:
        return False
    try:
        return isinstance(json.loads(state.read_bytes()).get("_data_files"), list)
    except (ValueError, AttributeError, OSError):
        return False


def hf_data_files(folder: Path) -> list[Path]:
    """The Arrow files of a save_to_disk folder, in state.json's order; each must be a plain name of a regular
    file inside the folder (a state.json naming `../x` or a link out is refused)."""
    entries = json.loads((folder / "state.json").read_bytes())["_data_files"]
    out = []
    for entry in entries:
        name = entry.get("filename") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
            raise SourceFileError(f"{folder}/state.json: _data_files entry {entry!r} is not a file name in the folder")
        if problem := regular_file_problem(folder / name, (), "the dataset folder", base=folder):
            raise SourceFileError(f"{folder / name} {problem}")
        out.append(folder / name)
    return out


def _folder_files(path: Path) -> list[Path]:
    """Supported files under a folder, recursively, a Hugging Face save_to_disk folder standing for its data."""
    if is_hf_dataset(path):
        return [path]
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(path):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "_")))
        if linked := [d for d in dirnames if os.path.islink(here / d)]:
            raise SourceFileError(f"{here / linked[0]} is a symlink to a folder inside {path} (not followed)")
        if here != path and is_hf_dataset(here):
            found.append(here)
            dirnames[:] = []
            continue
        for name in filenames:
            f = here / name
            if name == "dataset_dict.json" and any(is_hf_dataset(here / d) for d in dirnames):
                continue  # a DatasetDict's list of its splits: metadata, the splits are read
            if not name.startswith((".", "_")) and is_supported(f):  # FIFOs, devices, links: refused by the check
                found.append(f)
    return sorted(found)


def expand_files(patterns: Sequence[Path], source: str, roots: Sequence[Path] = ()) -> list[Path]:
    """The files a source's `files:` entries stand for, in a stable order; raises SourceFileError for an entry that
    stands for nothing (missing file, glob with no match, folder without a supported file), for one that is not a
    regular file, and for a symlink leaving the allowed roots (`roots`: the registry's folder and allowed_roots)."""
    out: list[Path] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            real = Path(os.path.realpath(path))
            if _within(real, _SPECIAL_ROOTS):
                raise SourceFileError(f"source {source!r}: {path} leads to a system pseudo-file folder, not data")
            absolute = Path(os.path.abspath(path))
            if os.path.islink(absolute):  # a link to a folder: as a link to a file, it must stay inside a root
                allowed = [Path(os.path.realpath(r)) for r in (*roots, absolute.parent)]
                if not _within(real, allowed):
                    raise SourceFileError(
                        f"source {source!r}: {path} is a symlink to a folder outside the allowed roots (not followed; "
                        "list its folder in allowed_roots)"
                    )
            try:
                found = _folder_files(path)
            except SourceFileError as exc:
                raise SourceFileError(f"source {source!r}: {exc}") from None
            if not found:
                raise SourceFileError(
                    f"source {source!r}: folder {path} holds no supported file ({', '.join(DATA_SUFFIXES)}, "
                    f"compressed with {', '.join(COMPRESSION_SUFFIXES)})"
                )
            for f in found:
                if not f.is_dir():  # a Hugging Face folder's files are checked when read (hf_data_files)
                    check_regular(f, source, roots, base=path)
            out.extend(found)
        elif path.exists() or path.is_symlink():
            check_regular(path, source, roots)
            out.append(path)
        elif _GLOB_CHARS & set(str(path)):
            found = sorted(Path(p) for p in glob.glob(_literal_prefix(path), recursive=True) if not _hidden_name(p))
            found = [f for f in found if not f.is_dir() or is_hf_dataset(f)]
            if not found:
                raise SourceFileError(f"source {source!r}: no file matches {path}")
            for f in found:
                if not f.is_dir():
                    check_regular(f, source, roots, base=_glob_base(path))
            out.extend(found)
        else:
            raise SourceFileError(f"source {source!r}: file not found: {path}")
    return list(dict.fromkeys(out))  # a file named twice (a path and a glob) is read once


def describe_container(path: Path) -> str:
    """What the file (or Hugging Face folder) is, in one line: `mira inspect` and raw_records metadata print it."""
    return detect(path).describe()


def table_schema(path: Path, c: Container) -> pa.Schema | None:
    """The Arrow schema of a Parquet / Arrow file or Hugging Face folder whose container is `c` (None for other
    containers): the column types the export gives a table's rows back with (its rows' originals are JSON, which
    has no date or decimal)."""
    if c.kind == "parquet":
        schema = pq.read_schema(path)
    elif c.kind in ("arrow", "hf_dataset"):
        first = hf_data_files(path)[0] if c.kind == "hf_dataset" else path
        with pa.memory_map(str(first), "r") as source:
            schema = _arrow_reader(first, source).schema
    else:
        return None
    return schema.remove_metadata()


def sniff(path: Path) -> tuple[Kind, str | None]:
    """(kind, compression) from the content (see detect)."""
    c = detect(path)
    return c.kind, c.comp


def _head(path: Path, n: int = 512) -> bytes:
    with path.open("rb") as fh:
        return fh.read(n)


def _is_tar(head: bytes) -> bool:
    return len(head) >= 262 and head[257:262] == b"ustar"


def detect(path: Path) -> Container:
    """The container of a file, from its bytes (the name only breaks ties: see the module docstring). Raises
    SourceFileError naming what the file is when it is a format we do not read."""
    if path.is_dir():
        if is_hf_dataset(path):
            return Container("hf_dataset", members=len(hf_data_files(path)))
        raise SourceFileError(f"{path} is a folder, not a Hugging Face save_to_disk folder (no state.json)")
    head = _head(path)
    _, data, _ = split_name(path.name)
    if head.startswith(_PARQUET_MAGIC):
        return Container("parquet")
    if head.startswith((_ARROW_FILE_MAGIC, _ARROW_STREAM_MAGIC)):
        return Container("arrow")
    if head.startswith(_ZIP_MAGIC):
        return Container("zip")
    _refuse_by_magic(path, head)
    comp = next((c for magic, c in _MAGIC.items() if head.startswith(magic)), None)
    if data == ".parquet":  # an empty or a half-downloaded file
        raise SourceFileError(f"{path} is named .parquet but is not a Parquet file (no PAR1 magic bytes)")
    if comp:
        with _open(path, comp) as fh:
            inner = fh.read(512)
        if _is_tar(inner):
            return Container("tar", comp)
        if inner.startswith((_PARQUET_MAGIC, _ARROW_FILE_MAGIC, _ZIP_MAGIC[0])):
            raise SourceFileError(f"{path} is a compressed Parquet, Arrow or zip file: decompress it first")
        _refuse_by_magic(path, inner)
    elif _is_tar(head):
        return Container("tar")
    encoding = _encoding(path, comp)
    return _text_container(path, comp, encoding, data)


def _refuse_by_magic(path: Path, head: bytes) -> None:
    if head.startswith(_LFS_POINTER):
        raise SourceFileError(f"{path} is a git-LFS pointer, not the data: run git lfs pull")
    for magic, what in _REFUSED_MAGIC.items():
        if head.startswith(magic):
            raise SourceFileError(f"{path} is {what}, not JSON, CSV, Parquet or Arrow")


def _encoding(path: Path, comp: str | None) -> str | None:
    """None for UTF-8 (with or without its BOM); "utf-16" / "utf-32" by their BOM; "utf-16-le" / "utf-16-be" for
    UTF-16 without a BOM (JSON or CSV text whose every other byte is NUL)."""
    with _open(path, comp) as fh:
        head = fh.read(64)
    for bom, enc in _BOMS:
        if head.startswith(bom):
            return enc
    if len(head) >= 4 and head[1] == head[3] == 0 and head[0] and head[2]:
        return "utf-16-le"
    if len(head) >= 4 and head[0] == head[2] == 0 and head[1] and head[3]:
        return "utf-16-be"
    return None


def _parses(line: bytes) -> bool:
    try:
        json.loads(line)
        return True
    except Exception:  # not JSON, or too deep to say
        return False


def _text_container(path: Path, comp: str | None, encoding: str | None, data: str | None) -> Container:
    """JSON Lines, JSON values, a JSON array (of records or of turns), or CSV/TSV: see the module docstring."""
    cr_only = _line_end(path, Container("jsonl", comp, encoding)) == b"\r"
    with _open(path, comp, encoding) as raw:
        fh = io.BufferedReader(_CRAsLF(raw), 1 << 20) if cr_only else raw
        lines = []
        for _ in range(64):
            line = fh.readline(1 << 24)
            if not line:
                break
            if line.strip(b"\xef\xbb\xbf \t\r\n"):
                lines.append(line.lstrip(b"\xef\xbb\xbf").strip())
            if len(lines) >= 6:
                break
    if not lines:
        return Container("jsonl", comp, encoding, "lines")  # empty or blank: no unit beyond blank lines
    first = lines[0]
    if first[:1] not in (b"{", b"[") and data not in (".jsonl", ".ndjson", ".json"):
        csv_dialect = _csv_delimiter(path, comp, encoding, data)
        if csv_dialect is not None:
            return Container("csv", comp, encoding, delimiter=csv_dialect)
        return Container("jsonl", comp, encoding, "lines")  # each line quarantined with what it is
    if first[:1] not in (b"{", b"["):
        return Container("jsonl", comp, encoding, "lines")
    if _parses(first):
        if len(lines) >= 2 or data in (".jsonl", ".ndjson") or first[:1] == b"{":
            return Container("jsonl", comp, encoding, "lines")
        return Container("json", comp, encoding, _array_mode(path, comp, encoding))
    if _first_value_spans_lines(path, comp, encoding):  # pretty-printed: values (or an array) however lines look
        return Container("json", comp, encoding, _array_mode(path, comp, encoding) if first[:1] == b"[" else "values")
    if _values_on_one_line(first):  # `{...}{...}`: values written one after another without a newline
        return Container("json", comp, encoding, "values")
    if any(line[:1] in (b"{", b"[") and _parses(line) for line in lines[1:5]):
        return Container("jsonl", comp, encoding, "lines")  # JSON Lines with a broken first line
    if first == b"{" or (first[:1] == b"[" and data not in (".jsonl", ".ndjson")):
        # a document or an array cut or broken further on: read up to the break, the rest named unreadable
        return Container("json", comp, encoding, _array_mode(path, comp, encoding) if first[:1] == b"[" else "values")
    return Container("jsonl", comp, encoding, "lines")  # nothing parses: each line quarantined with why


def _first_value_spans_lines(path: Path, comp: str | None, encoding: str | None, head: int = 1 << 24) -> bool:
    """The text's first JSON value is whole within its first 16 MiB and runs over more than one line."""
    with _open(path, comp, encoding) as fh:
        text = fh.read(head).decode("utf-8", "replace").lstrip("\ufeff \t\r\n")
    try:
        _, end = json.JSONDecoder().raw_decode(text)
    except (ValueError, RecursionError):
        return False
    return "\n" in text[:end] or "\r" in text[:end]


def _values_on_one_line(line: bytes) -> bool:
    """The line is two or more whole JSON values one after another, and nothing else."""
    text, pos, n = line.decode("utf-8", "replace"), 0, 0
    decoder = json.JSONDecoder()
    while pos < len(text):
        try:
            _, pos = decoder.raw_decode(text, pos)
        except (ValueError, RecursionError):
            return False
        n += 1
        while pos < len(text) and text[pos] in " \t\r":
            pos += 1
    return n >= 2


def _is_turn(value: Any) -> bool:
    """A chat turn (a role and its text) or an agent step (SWE-agent / OpenHands: an action or observation with
    its thought, response or message)."""
    if not isinstance(value, dict):
        return False
    keys = value.keys()
    if _ROLE_KEYS & keys and _TURN_TEXT_KEYS & keys:
        return True
    if str(value.get("type", "")).endswith(("_call", "_call_output")):  # OpenAI Responses / Agents SDK items
        return True
    return bool({"action", "observation"} & keys) and len(_STEP_KEYS & keys) >= 2


def _array_mode(path: Path, comp: str | None, encoding: str | None, probe: int = 3) -> JsonMode:
    """ "trajectory" when the array's first elements are all turns (the array is one conversation), else
    "elements" (each element a record)."""
    first: list[Any] = []
    try:
        with _open(path, comp, encoding) as fh:
            _skip_bom(fh)
            for value in ijson.items(fh, "item", use_float=True):
                first.append(value)
                if len(first) >= probe:
                    break
    except Exception:  # a broken array: read element by element, its error said where it is
        pass
    return "trajectory" if first and all(map(_is_turn, first)) else "elements"


def _csv_delimiter(path: Path, comp: str | None, encoding: str | None, data: str | None) -> str | None:
    """The delimiter of CSV/TSV text with a header, or None when the text is not such a table: csv.Sniffer's
    guess first, then tab, comma, semicolon and bar, the first that reads the header and the next rows (quoted
    newlines included) as one width of at least two columns. A `.csv` / `.tsv` name settles a tie-less doubt."""
    with _open(path, comp, encoding) as fh:
        sample = fh.read(1 << 16).decode("utf-8", "replace")
    if data == ".tsv":
        return "\t"
    try:
        guess = [csv.Sniffer().sniff(sample, delimiters=",\t;|").delimiter]
    except csv.Error:
        guess = []
    for delimiter in dict.fromkeys([*guess, "\t", ",", ";", "|"]):
        try:
            rows = list(csv.reader(io.StringIO(sample), delimiter=delimiter))
        except csv.Error:
            continue
        if len(sample) == 1 << 16:
            rows = rows[:-1]  # the last row may be cut by the sample
        widths = {len(r) for r in rows[:50] if r}
        if len(rows) >= 2 and len(widths) == 1 and widths.pop() >= 2:
            return delimiter
    return "," if data == ".csv" else None


def _skip_bom(fh: IO[bytes]) -> None:
    if fh.peek(3)[:3] == b"\xef\xbb\xbf":  # type: ignore[attr-defined]  # ijson does not skip a BOM
        fh.read(3)


def _open(path: Path, comp: str | None, encoding: str | None = None) -> IO[bytes]:
    """The file's decompressed bytes as a buffered binary stream, as UTF-8 when the text is UTF-16/32."""
    fh = _decompressed(path, comp)
    return fh if encoding is None else io.BufferedReader(_Utf8Of(fh, encoding), 1 << 20)


def _decompressed(path: Path, comp: str | None) -> IO[bytes]:
    if comp == "gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if comp == "zst":
        return io.BufferedReader(_ZstdStream(path), 1 << 20)
    if comp == "bz2":
        return bz2.open(path, "rb")  # type: ignore[return-value]
    if comp == "xz":
        return lzma.open(path, "rb")  # type: ignore[return-value]
    return path.open("rb", buffering=1 << 20)


class _Utf8Of(io.RawIOBase):
    """UTF-16/32 text read as UTF-8 bytes (the BOM consumed), so that every reader sees UTF-8."""

    def __init__(self, inner: IO[bytes], encoding: str) -> None:
        self._text = io.TextIOWrapper(inner, encoding=encoding, errors="strict", newline="")  # type: ignore[arg-type]
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            chunk = self._text.read(1 << 18)
            if not chunk:
                return 0
            self._buf = chunk.encode("utf-8", "surrogatepass")
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def close(self) -> None:
        self._text.close()
        super().close()


class _ZstdStream(io.RawIOBase):
    """zstd frames decompressed in order; unlike zstandard's stream_reader, a file cut inside a frame raises
    EOFError (as gzip, bz2 and lzma do) instead of ending early without a word."""

    def __init__(self, path: Path) -> None:
        self._fh = path.open("rb")
        self._d = zstandard.ZstdDecompressor().decompressobj()
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            chunk = self._fh.read(1 << 20)
            if not chunk:
                if not self._d.eof:
                    raise EOFError("compressed file ended before the end of its zstd frame (truncated)")
                return 0
            self._buf = self._decompress(chunk)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def _decompress(self, chunk: bytes) -> bytes:
        out = self._d.decompress(chunk)
        while self._d.eof and self._d.unused_data:  # the next frame of a multi-frame file
            rest = self._d.unused_data
            self._d = zstandard.ZstdDecompressor().decompressobj()
            out += self._d.decompress(rest)
        return out

    def close(self) -> None:
        self._fh.close()
        super().close()


def _file_version(st: os.stat_result) -> tuple[int, int, int]:
    """What tells two versions of a file apart without reading it: inode, size, modification time."""
    return st.st_ino, st.st_size, st.st_mtime_ns


def _version(path: Path) -> tuple[int, int, int]:
    """_file_version of a file; for a Hugging Face folder, of its state.json and data files together."""
    if not path.is_dir():
        return _file_version(path.stat())
    try:
        stats = [f.stat() for f in (path / "state.json", *hf_data_files(path))]
    except (OSError, SourceFileError, ValueError):
        stats = [path.stat()]
    return path.stat().st_ino, sum(s.st_size for s in stats), max(s.st_mtime_ns for s in stats)


def iter_units(
    path: Path,
    source: str,
    max_bytes: int,
    batch_size: int = 1024,
    start: int = 0,
    first: int = 1,
    scratch: Path | None = None,
    lazy_tables: bool = False,
) -> Iterator[list[Unit]]:
    """Every unit of one file, in batches (a batch never mixes two archive members). Raises SourceFileError if the
    file cannot be read, or was replaced or changed while being read (what was read would then match no version
    of it). `start` (bytes) and `first` (the number of the first unit read) resume an appendable file (see
    file_state) where an earlier read ended. `scratch`: where archive members are unpacked while read (a folder
    under MIRA_HOME; default_scratch() when not given). `lazy_tables`: a Parquet / Arrow file's rows come as
    units holding their record batch and row (`Unit.table`), converted to Python values only by `materialise`
    (the columnar ingest reads most of them without)."""
    try:
        before = _version(path)
        if start:
            units: Iterator[Unit] = _jsonl_tail(path, start, first, max_bytes)
        else:
            units = _units(path, detect(path), max_bytes, scratch=scratch, lazy=lazy_tables)
        batch: list[Unit] = []
        for unit in units:
            if batch and (len(batch) >= batch_size or unit.member != batch[-1].member):
                yield batch
                batch = []
            batch.append(unit)
        if batch:
            yield batch
        after = _version(path)
    except SourceFileError as exc:
        if f"source {source!r}" in str(exc):
            raise
        raise SourceFileError(f"source {source!r}: {exc}") from exc
    except Exception as exc:  # a truncated archive, a corrupt Parquet file: the file as a whole is unreadable
        raise SourceFileError(f"source {source!r}: cannot read {path}: {type(exc).__name__}: {exc}") from exc
    if before != after:
        raise SourceFileError(
            f"source {source!r}: {path} was replaced or changed while being read; nothing was written, run the "
            "partition again once the file is complete"
        )


def _units(
    path: Path,
    c: Container,
    max_bytes: int,
    in_archive: bool = False,
    scratch: Path | None = None,
    lazy: bool = False,
) -> Iterator[Unit]:
    """The units of a file whose container is `c` (`lazy`: table rows left unconverted, see iter_units)."""
    if c.kind == "jsonl":
        return _jsonl_units(path, c, max_bytes)
    if c.kind == "json":
        return _json_units(path, c)
    if c.kind == "csv":
        return _csv_units(path, c, max_bytes)
    if c.kind == "parquet":
        return _table_units(_unique_columns(pq.ParquetFile(path).iter_batches(batch_size=1024), path), lazy)
    if c.kind == "arrow":
        return _table_units(_unique_columns(_arrow_batches(path), path), lazy)
    if c.kind == "hf_dataset":
        return _table_units((b for f in hf_data_files(path) for b in _unique_columns(_arrow_batches(f), f)), lazy)
    if in_archive:
        raise _NestedArchive(c.kind)
    return _archive_units(path, c, max_bytes, scratch=scratch, lazy=lazy)


def _jsonl_units(path: Path, c: Container, max_bytes: int) -> Iterator[Unit]:
    with _open(path, c.comp, c.encoding) as fh:
        lines = fh if _line_end(path, c) == b"\n" else io.BufferedReader(_CRAsLF(fh), 1 << 20)
        for lineno, (raw, oversize) in enumerate(_capped_lines(lines, max_bytes), 1):
            yield Unit(lineno, raw=raw, oversize=oversize)


def _jsonl_tail(path: Path, start: int, first: int, max_bytes: int) -> Iterator[Unit]:
    """The lines of a plain JSON Lines file from byte `start` (a line start), numbered from `first`."""
    with path.open("rb") as fh:
        fh.seek(start)
        for lineno, (raw, oversize) in enumerate(_capped_lines(fh, max_bytes), first):
            yield Unit(lineno, raw=raw, oversize=oversize)


def file_state(path: Path) -> dict[str, Any]:
    """What a later read needs to tell whether the file only grew: its size, inode and, for a plain UTF-8 JSON
    Lines file with LF line ends that ends with a complete line (`appendable`), the sha256 of its bytes."""
    inode, size, mtime = _version(path)
    state: dict[str, Any] = {"size": size, "inode": inode, "mtime_ns": mtime, "appendable": False, "sha256": None}
    c = detect(path)
    if c.kind != "jsonl" or c.comp is not None or c.encoding is not None or _line_end(path, c) != b"\n":
        return state
    digest, last = hashlib.sha256(), b""
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
            last = chunk[-1:]
    state.update(appendable=last in (b"", b"\n"), sha256=digest.hexdigest())
    return state


def grew_from(path: Path, before: dict[str, Any]) -> bool:
    """True when the file is the one `before` (file_state) describes with lines appended: same inode, larger, and
    its first `before["size"]` bytes unchanged."""
    if not before.get("appendable") or not path.is_file():
        return False
    st = path.stat()
    if st.st_ino != before.get("inode") or st.st_size <= before.get("size", 0):
        return False
    digest, left = hashlib.sha256(), int(before["size"])
    with path.open("rb") as fh:
        while left and (chunk := fh.read(min(left, 1 << 22))):
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest() == before.get("sha256")


def _line_end(path: Path, c: Container) -> bytes:
    """b"\r" for a file whose lines end in CR alone (classic Mac tools), else b"\n". A raw CR cannot occur inside
    JSON text, so a start with CRs and no LF at all says so."""
    with _open(path, c.comp, c.encoding) as fh:
        head = fh.read(1 << 16)
    return b"\r" if b"\r" in head and b"\n" not in head else b"\n"


class _CRAsLF(io.RawIOBase):
    """A stream with every CR read as LF, for files whose lines end in CR alone."""

    def __init__(self, inner: IO[bytes]) -> None:
        self._inner = inner

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self._inner.read(len(b)).replace(b"\r", b"\n")
        b[: len(data)] = data
        return len(data)


def _capped_lines(fh: IO[bytes], max_bytes: int) -> Iterator[tuple[bytes, int | None]]:
    """(line without its end-of-line bytes, None); a line over max_bytes comes back as (its first 200 bytes, its
    size), so that it is never held whole in memory."""
    while True:
        line = fh.readline(max_bytes + 1)
        if not line:
            return
        if len(line) > max_bytes and not line.endswith(b"\n"):
            size = len(line)
            head = line[:200]
            while line and not line.endswith(b"\n"):  # skip to the end of the line, a chunk at a time
                line = fh.readline(1 << 20)
                size += len(line)
            yield head, size - line.endswith(b"\n")
            continue
        yield line.rstrip(b"\r\n"), None


def _json_units(path: Path, c: Container) -> Iterator[Unit]:
    """JSON values one after another (each one unit), a JSON array element by element, or an array of turns as
    one unit; through ijson, so that no more than one unit is held at a time."""
    position = 0
    elements = c.json_mode == "elements"
    with _open(path, c.comp, c.encoding) as fh:
        _skip_bom(fh)
        if not fh.peek(1):  # type: ignore[attr-defined]
            return  # an empty file: no unit (reported as an empty file by the caller)
        twice: list[_Object] = []  # the objects of the file that were given a key twice
        try:
            values = ijson.items(
                fh,
                "item" if elements else "",
                use_float=True,
                multiple_values=not elements,
                map_type=lambda: _Object(twice),
            )
            for value in values:
                position += 1
                key = _key_twice(value, twice) if twice else None
                if key is not None:
                    error = f"invalid JSON: key {key!r} appears twice in one object"
                    yield Unit(position, obj=value, error=error)  # the value for the quarantine row's excerpt
                else:
                    yield Unit(position, obj=value)
        except (ijson.JSONError, UnicodeDecodeError) as exc:  # a broken tail, or bytes that are not UTF-8
            what = f"after element {position}" if elements else f"after value {position}"
            yield Unit(position + 1, error=f"invalid JSON {what}, the rest of the file is unreadable: {exc}"[:500])


class _Object(dict):
    """A JSON object as ijson builds it, noting a key given twice (the last value would silently win)."""

    __slots__ = ("_twice", "key")

    def __init__(self, twice: list[_Object]) -> None:
        super().__init__()
        self._twice = twice
        self.key: str | None = None

    def __setitem__(self, key: str, value: Any) -> None:
        if self.key is None and key in self:
            self.key = key
            self._twice.append(self)
        super().__setitem__(key, value)


def _key_twice(value: Any, twice: list[_Object]) -> str | None:
    """The key given twice in an object inside `value`, if one of `twice` is there (ijson builds a few values ahead,
    so a later value's objects may be in `twice` already)."""
    marked = {id(obj): obj for obj in twice}
    todo = [value]
    while todo:
        item = todo.pop()
        if isinstance(item, dict):
            if id(item) in marked:
                twice[:] = [obj for obj in twice if obj is not item]
                return item.key
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)
    return None


def _csv_units(path: Path, c: Container, max_bytes: int) -> Iterator[Unit]:
    """CSV/TSV rows as dicts of the header's columns, values as written (strings); a row whose width differs from
    the header's is that row's error. Quoted fields may hold newlines; no value is converted."""
    csv.field_size_limit(max_bytes + 1)  # a field is never held past the record limit
    with _open(path, c.comp, c.encoding) as fh:
        text = io.TextIOWrapper(fh, encoding="utf-8-sig", errors="strict", newline="")  # type: ignore[arg-type]
        # strict: a quote never closed (which would swallow every later row into one field) or text after a closing
        # quote (`"ab"c`, read as abc) fails the file naming the row, rather than re-shaping the rows
        reader = csv.reader(text, delimiter=c.delimiter or ",", strict=True)
        header = next(reader, None)
        if header is None:
            return
        if len(set(header)) != len(header):
            dup = next(h for h in header if header.count(h) > 1)
            raise SourceFileError(f"{path}: the CSV header names column {dup!r} twice (its values would be lost)")
        position = 0
        for position, row in enumerate(_csv_rows(reader, path), 1):
            size = sum(len(v) for v in row)
            if size > max_bytes:
                yield Unit(position, raw=c.delimiter.join(row)[:200].encode() if c.delimiter else b"", oversize=size)
            elif len(row) != len(header):
                what = "a blank line" if not row else f"{len(row)} fields"
                yield Unit(position, error=f"CSV row {position} has {what}, the header has {len(header)} columns")
            else:
                yield Unit(position, obj=dict(zip(header, row, strict=True)))


def _csv_rows(reader: Any, path: Path) -> Iterator[list[str]]:
    """The reader's rows; a field the csv module refuses (over its size limit: max_record_bytes) fails the file
    naming the row, as the rest of the file cannot be told apart from it."""
    row_number = 0
    try:
        for row in reader:
            row_number += 1
            yield row
    except csv.Error as exc:
        raise SourceFileError(
            f"{path}: CSV row {row_number + 1} cannot be read: {exc} (a field over max_record_bytes, a quote "
            "never closed, or text after a closing quote)"
        ) from None


def _arrow_batches(path: Path) -> Iterator[pa.RecordBatch]:
    """Record batches of an Arrow IPC file (`ARROW1`) or stream (as `datasets` writes its `.arrow` files)."""
    with pa.memory_map(str(path), "r") as source:
        reader = _arrow_reader(path, source)
        if isinstance(reader, ipc.RecordBatchFileReader):
            for i in range(reader.num_record_batches):
                yield reader.get_batch(i)
        else:
            yield from reader


def _arrow_reader(path: Path, source: pa.MemoryMappedFile) -> ipc.RecordBatchFileReader | ipc.RecordBatchStreamReader:
    """The reader of an Arrow IPC file (`ARROW1` magic) or stream mapped from `path`."""
    return ipc.open_file(source) if _head(path, 6) == _ARROW_FILE_MAGIC else ipc.open_stream(source)


def _unique_columns(batches: Iterator[pa.RecordBatch], path: Path) -> Iterator[pa.RecordBatch]:
    """The batches of a table whose schema names no column (or struct field) twice; else the file is refused, as a
    CSV header is: one of the two columns' values would be lost in every row."""
    checked = False
    for batch in batches:
        if not checked:
            if (dup := _field_twice(batch.schema)) is not None:
                raise SourceFileError(
                    f"{path}: the table's schema names column {dup!r} twice (its values would be lost)"
                )
            checked = True
        yield batch


def _field_twice(fields: Any, prefix: str = "") -> str | None:
    """The first field name given twice among `fields` (a schema or a struct type) or in a nested struct."""
    names = [f.name for f in fields]
    for name in names:
        if names.count(name) > 1:
            return prefix + name
    for field in fields:
        kind = field.type
        while pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
            kind = kind.value_type
        if pa.types.is_struct(kind) and (dup := _field_twice(kind, f"{prefix}{field.name}.")) is not None:
            return dup
    return None


def _table_units(batches: Iterator[Any], lazy: bool = False) -> Iterator[Unit]:
    """Parquet / Arrow rows as dicts, one record batch at a time, columns of bytes decoded as UTF-8 text; `lazy`:
    as units holding (record batch, row), for `materialise`."""
    position = 0
    for batch in batches:
        if lazy:
            for i in range(batch.num_rows):
                position += 1
                yield Unit(position, table=(batch, i))
            continue
        for row in _rows(batch):
            position += 1
            yield Unit(position, error=row.message) if isinstance(row, _BadRow) else Unit(position, obj=row)


def _rows(batch: Any) -> list[dict[str, Any] | _BadRow]:
    """A record batch's rows as dicts (bytes columns as text), or why a row cannot be read."""
    try:
        rows: list[Any] = batch.to_pylist()
    except Exception:  # one value Python cannot hold (a timestamp out of range): find it row by row
        rows = [_row_or_error(batch, i) for i in range(batch.num_rows)]
    binary = [f.name for f in batch.schema if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)]
    if binary:
        rows = [row if isinstance(row, _BadRow) else _decode_binary(row, binary) for row in rows]
    return rows


def materialise(units: list[Unit]) -> None:
    """Give the lazy table units among `units` (iter_units' `lazy_tables`) their values, as the eager read does:
    a dict, or the error of a row that cannot be read."""
    by_batch: dict[int, tuple[Any, list[Unit]]] = {}
    for unit in units:
        if unit.table is not None:
            by_batch.setdefault(id(unit.table[0]), (unit.table[0], []))[1].append(unit)
    for batch, group in by_batch.values():
        rows = _rows(batch.take(pa.array([u.table[1] for u in group], type=pa.int64())))
        for unit, row in zip(group, rows, strict=True):
            unit.table = None
            if isinstance(row, _BadRow):
                unit.error = row.message
            else:
                unit.obj = row


def _decode_binary(row: dict[str, Any], columns: list[str]) -> dict[str, Any] | _BadRow:
    """The row with its bytes columns as text; a value that is not UTF-8 makes the row an error naming the column."""
    for name in columns:
        value = row.get(name)
        if isinstance(value, bytes):
            try:
                row[name] = value.decode("utf-8")
            except UnicodeDecodeError as exc:
                return _BadRow(
                    f"column {name!r} holds bytes that are not UTF-8 text ({exc.reason} at byte {exc.start})"
                )
    return row


@dataclass(slots=True)
class _BadRow:
    message: str


def _row_or_error(batch: Any, i: int) -> dict[str, Any] | _BadRow:
    try:
        return batch.slice(i, 1).to_pylist()[0]
    except Exception as exc:
        return _BadRow(f"row cannot be read: {type(exc).__name__}: {str(exc)[:200]}")


class _NestedArchive(Exception):
    """An archive inside an archive: not unpacked (one level only)."""


class _ArchiveLimit(SourceFileError):
    """An archive over ARCHIVE_LIMITS: refused as a whole, before more is unpacked."""


def _archive_members(path: Path, c: Container) -> Iterator[tuple[str, Callable[[], IO[bytes]] | str]]:
    """(member name, a way to open its bytes, or why it is not read) for each member that is a file, in archive
    order. Folders, hidden members (`.x`, `_x`, `__MACOSX/`) and names of other formats are passed over, as in a
    folder."""
    if c.kind == "zip":
        if c.comp:
            raise SourceFileError(f"{path} is a compressed zip archive: decompress it first")
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if info.is_dir() or _skipped_member(info.filename):
                    continue
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    yield info.filename, "is a symbolic link inside the archive (not followed)"
                elif info.flag_bits & 0x1:
                    yield info.filename, "is encrypted (not read)"
                else:
                    yield info.filename, lambda info=info: zf.open(info)  # type: ignore[misc]
        return
    with _open(path, c.comp) as fh, tarfile.open(fileobj=fh, mode="r|") as tf:
        for member in tf:
            if member.isdir() or _skipped_member(member.name):
                continue
            if not member.isreg():
                what = "a link" if member.issym() or member.islnk() else "a device, FIFO or other special member"
                yield member.name, f"is {what} inside the archive (not read)"
                continue
            yield member.name, lambda member=member: tf.extractfile(member)  # type: ignore[misc, return-value]


def _skipped_member(name: str) -> bool:
    parts = Path(name).parts
    return any(p.startswith((".", "_")) for p in parts) or not is_supported(Path(name))


def default_scratch() -> Path:
    """Where archive members are unpacked when the caller names no folder: `scratch/` under MIRA_HOME (the
    project writes nothing outside it; `.mira` when MIRA_HOME is unset, as the CLI and settings default)."""
    from mira_dagster.settings import mira_home  # settings reads the environment; imported here: no import cycle

    return mira_home() / "scratch"


def _archive_units(
    path: Path,
    c: Container,
    max_bytes: int,
    limits: ArchiveLimits | None = None,
    scratch: Path | None = None,
    lazy: bool = False,
) -> Iterator[Unit]:
    """Each member unpacked (capped) to a private file under `scratch` (MIRA_HOME), deleted once read, and read
    like a file: the readers detect a container from its bytes and reopen it (CSV dialect, array shape, Parquet
    footers), which a tar stream read once cannot give. A member that cannot be read is one unit whose error says
    why. Over a limit, the whole archive is refused."""
    limits = limits or ARCHIVE_LIMITS
    budget = min(limits.max_total_bytes, max(limits.ratio_floor_bytes, limits.max_ratio * path.stat().st_size))
    total = count = 0
    scratch = scratch or default_scratch()
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="archive-", dir=scratch) as tmp:
        for name, opener in _archive_members(path, c):
            count += 1
            if count > limits.max_members:
                raise _ArchiveLimit(f"{path}: archive holds more than {limits.max_members:,} members (refused)")
            if isinstance(opener, str):
                yield Unit(1, error=f"archive member {name} {opener}", member=name)
                continue
            target = Path(tmp) / f"{count}-{Path(name).name}"
            with opener() as src, target.open("wb") as out:
                total += _copy_capped(src, out, path, name, limits, total, budget)
            try:
                inner = detect(target)
                units = _units(target, inner, max_bytes, in_archive=True, lazy=lazy)
                yield from (_with_member(u, name) for u in units)
            except _NestedArchive as exc:
                yield Unit(1, error=f"archive member {name} is itself a {exc} archive (not unpacked)", member=name)
            except SourceFileError as exc:  # a member we do not read: one unit naming it, the others are read
                reason = str(exc).replace(str(target), f"archive member {name}")
                yield Unit(1, error=reason[:500], member=name)
            finally:
                target.unlink()


def _with_member(unit: Unit, name: str) -> Unit:
    unit.member = name
    return unit


def _copy_capped(
    src: IO[bytes], out: IO[bytes], path: Path, name: str, limits: ArchiveLimits, total: int, budget: int
) -> int:
    """Copy a member's decompressed bytes, counting what is actually produced (not what headers claim)."""
    size = 0
    while chunk := src.read(1 << 20):
        size += len(chunk)
        if size > limits.max_member_bytes:
            raise _ArchiveLimit(
                f"{path}: archive member {name} unpacks to more than {limits.max_member_bytes:,} bytes (refused)"
            )
        if total + size > budget:
            why = "" if budget == limits.max_total_bytes else f", {limits.max_ratio} times its size: a zip bomb?"
            raise _ArchiveLimit(f"{path}: archive unpacks to more than {budget:,} bytes{why} (refused)")
        out.write(chunk)
    return size


def count_units(path: Path, scratch: Path | None = None) -> int:
    """Units in a file, counted independently of iter_units where the container allows (for the reconciliation
    check): newline-separated lines, CSV records, Parquet rows from the footer, Arrow rows by batch; JSON values
    and archive members are counted by reading them (plus one for an unreadable tail)."""
    return _count(path, detect(path), scratch)


def _count(path: Path, c: Container, scratch: Path | None = None) -> int:
    if c.kind == "parquet":
        return pq.ParquetFile(path).metadata.num_rows
    if c.kind == "arrow":
        return sum(b.num_rows for b in _arrow_batches(path))
    if c.kind == "hf_dataset":
        return sum(b.num_rows for f in hf_data_files(path) for b in _arrow_batches(f))
    if c.kind == "json":
        return sum(1 for _ in _json_units(path, c))
    if c.kind == "csv":
        csv.field_size_limit(1 << 30)  # counting only: no field is kept
        with _open(path, c.comp, c.encoding) as fh:
            text = io.TextIOWrapper(fh, encoding="utf-8-sig", newline="")  # type: ignore[arg-type]
            return max(sum(1 for _ in csv.reader(text, delimiter=c.delimiter or ",")) - 1, 0)
    if c.kind in ("tar", "zip"):
        return sum(1 for _ in _archive_units(path, c, 1 << 62, scratch=scratch))
    end = _line_end(path, c)
    lines, last = 0, b""
    with _open(path, c.comp, c.encoding) as fh:
        while chunk := fh.read(1 << 22):
            lines += chunk.count(end)
            last = chunk[-1:]
    return lines + (1 if last and last != end else 0)


def file_versions(files: Sequence[Path]) -> list[str]:
    """Path and (inode, size, mtime) of each file: what the input fingerprint is made of."""
    return [f"{path}:{_version(path) if path.exists() else 'missing'}" for path in files]


def append_offsets(
    files: Sequence[Path], states: dict[str, dict[str, Any]], units: dict[str, int]
) -> dict[Path, tuple[int, int]] | None:
    """Where to resume each file when the source only grew since an earlier read (`states`: file_state per file,
    `units`: units read per file then): (byte offset, units read) per earlier file, (0, 0) for a new one. None when
    a whole read is needed: a file gone, replaced, edited or shrunk, or nothing appended at all."""
    if any(str(f) not in states for f in files) and not any(str(f) in states for f in files):
        return None
    if set(states) - {str(f) for f in files}:
        return None  # a file was removed: its records must go
    plan: dict[Path, tuple[int, int]] = {}
    grew = False
    for f in files:
        before = states.get(str(f))
        if before is None:
            plan[f], grew = (0, 0), True
            continue
        if str(f) not in units:
            return None
        version = _version(f)
        if version == (before.get("inode"), before.get("size"), before.get("mtime_ns")):
            plan[f] = (version[1], units[str(f)])  # unchanged (same identity and size): nothing to read
        elif grew_from(f, before):
            plan[f], grew = (int(before["size"]), units[str(f)]), True
        else:
            return None
    return plan if grew else None
