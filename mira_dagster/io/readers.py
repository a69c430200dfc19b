"""Reading source files as a stream of units (a JSONL line, a JSON-array element, a Parquet row), in batches.

Accepted, whatever the producer named them (compression and Parquet are recognised by their magic bytes, so a
misnamed file still reads):
- JSON Lines (`.jsonl`, `.ndjson`, or any other name), plain or compressed with gzip, zstd, bzip2 or xz;
- JSON (`.json`, compressed too): an array of objects, streamed element by element, or one document;
- Parquet: one file, a glob, or a folder of shards as dataset hubs and Spark write them.

A `files:` entry is a path, a glob (`data/*.jsonl.gz`, `**` for subfolders) or a folder (every supported file
inside, recursively, skipping hidden `.x` / `_x` entries such as `_SUCCESS`). A path that exists is taken
literally, so paths with `[`, `*` or `?` in their names work.

Memory stays bounded by the batch: lines are read with a size cap (a longer line is skipped to its end without
being held), JSON arrays through ijson, Parquet by record batches. Errors in a unit are the caller's to
quarantine; what makes a whole file unusable (missing, unreadable, a corrupt Parquet file, changed while read)
raises SourceFileError naming the file.
"""

from __future__ import annotations

import bz2
import glob
import gzip
import hashlib
import io
import json
import lzma
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import ijson
import pyarrow.parquet as pq
import zstandard

from mira_dagster.core.records import Unit

Kind = Literal["jsonl", "json", "parquet"]

# name endings we recognise, longest first where one is the end of another
DATA_SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet")
COMPRESSION_SUFFIXES = (".gz", ".zst", ".zstd", ".bz2", ".xz")
_MAGIC = {
    b"\x1f\x8b": "gz",
    b"\x28\xb5\x2f\xfd": "zst",
    b"BZh": "bz2",
    b"\xfd7zXZ\x00": "xz",
}
_PARQUET_MAGIC = b"PAR1"
_GLOB_CHARS = set("*?[")


class SourceFileError(OSError):
    """A source file that cannot be read as a whole: the message names the source and the file."""


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
    return data is not None and not (data == ".parquet" and comp)


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


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith((".", "_")) for part in path.relative_to(root).parts)


def expand_files(patterns: Sequence[Path], source: str) -> list[Path]:
    """The files a source's `files:` entries stand for, in a stable order; raises SourceFileError for an entry that
    stands for nothing (missing file, glob with no match, folder without a supported file) or is not a file."""
    out: list[Path] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            found = sorted(f for f in path.rglob("*") if f.is_file() and is_supported(f) and not _hidden(f, path))
            if not found:
                raise SourceFileError(
                    f"source {source!r}: folder {path} holds no supported file ({', '.join(DATA_SUFFIXES)}, "
                    f"compressed with {', '.join(COMPRESSION_SUFFIXES)})"
                )
            out.extend(found)
        elif path.exists() or path.is_symlink():
            if not path.is_file():
                raise SourceFileError(f"source {source!r}: {path} is not a regular file")
            out.append(path)
        elif _GLOB_CHARS & set(str(path)):
            found = sorted(
                Path(p)
                for p in glob.glob(_literal_prefix(path), recursive=True)
                if Path(p).is_file() and not _hidden_name(p)
            )
            if not found:
                raise SourceFileError(f"source {source!r}: no file matches {path}")
            out.extend(found)
        else:
            raise SourceFileError(f"source {source!r}: file not found: {path}")
    return list(dict.fromkeys(out))  # a file named twice (a path and a glob) is read once


def sniff(path: Path) -> tuple[Kind, str | None]:
    """(kind, compression) from the first bytes, falling back on the name for JSON vs JSONL."""
    with path.open("rb") as fh:
        head = fh.read(8)
    if head.startswith(_PARQUET_MAGIC):
        return "parquet", None
    comp = next((c for magic, c in _MAGIC.items() if head.startswith(magic)), None)
    _, data, _ = split_name(path.name)
    if data == ".parquet":  # a git-LFS pointer, an empty or a half-downloaded file
        raise SourceFileError(f"{path} is named .parquet but is not a Parquet file (no PAR1 magic bytes)")
    if data == ".json":
        # many hubs name JSON Lines `.json`: a first line that is a whole object, with more after it, says so
        return ("jsonl" if _looks_like_jsonl(path, comp) else "json"), comp
    if data in (".jsonl", ".ndjson"):
        return "jsonl", comp
    return ("json" if _first_char(path, comp) == b"[" else "jsonl"), comp


def _open(path: Path, comp: str | None) -> IO[bytes]:
    """The file's decompressed bytes as a buffered binary stream."""
    if comp == "gz":
        return gzip.open(path, "rb")
    if comp == "zst":
        return io.BufferedReader(_ZstdStream(path), 1 << 20)
    if comp == "bz2":
        return bz2.open(path, "rb")
    if comp == "xz":
        return lzma.open(path, "rb")
    return path.open("rb", buffering=1 << 20)


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


def _first_char(path: Path, comp: str | None) -> bytes:
    with _open(path, comp) as fh:
        head = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head[:1]


def _looks_like_jsonl(path: Path, comp: str | None, probe: int = 5) -> bool:
    """A `.json` file is JSON Lines when one of its first non-blank lines is a whole JSON object and another line
    follows: a pretty-printed document has no such line, and one broken first line does not hide the rest."""
    with _open(path, comp) as fh:
        lines = [line for line in (fh.readline(1 << 24) for _ in range(4 * probe)) if line.strip()][: probe + 1]
    if len(lines) < 2 or not lines[0].lstrip(b"\xef\xbb\xbf \t").startswith(b"{"):
        return False
    for line in lines[:probe]:
        try:
            if isinstance(json.loads(line.lstrip(b"\xef\xbb\xbf")), dict):
                return True
        except Exception:  # not a whole object on this line (or too deep to say): look at the next
            continue
    return False


def _file_version(st: os.stat_result) -> tuple[int, int, int]:
    """What tells two versions of a file apart without reading it: inode, size, modification time."""
    return st.st_ino, st.st_size, st.st_mtime_ns


def iter_units(
    path: Path, source: str, max_bytes: int, batch_size: int = 1024, start: int = 0, first: int = 1
) -> Iterator[list[Unit]]:
    """Every unit of one file, in batches. Raises SourceFileError if the file cannot be read, or was replaced or
    changed while being read (what was read would then match no version of it). `start` (bytes) and `first` (the
    number of the first unit read) resume an appendable file (see file_state) where an earlier read ended."""
    try:
        before = _file_version(path.stat())
        kind, comp = sniff(path)
        if start:
            units: Iterator[Unit] = _jsonl_tail(path, start, first, max_bytes)
        else:
            units = {"jsonl": _jsonl_units, "json": _json_units, "parquet": _parquet_units}[kind](path, comp, max_bytes)
        batch: list[Unit] = []
        for unit in units:
            batch.append(unit)
            if len(batch) >= batch_size:
                yield batch
                batch = []
        if batch:
            yield batch
        after = _file_version(path.stat())
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


def _jsonl_units(path: Path, comp: str | None, max_bytes: int) -> Iterator[Unit]:
    with _open(path, comp) as fh:
        lines = fh if _line_end(path, comp) == b"\n" else io.BufferedReader(_CRAsLF(fh), 1 << 20)
        for lineno, (raw, oversize) in enumerate(_capped_lines(lines, max_bytes), 1):
            yield Unit(lineno, raw=raw, oversize=oversize)


def _jsonl_tail(path: Path, start: int, first: int, max_bytes: int) -> Iterator[Unit]:
    """The lines of a plain JSON Lines file from byte `start` (a line start), numbered from `first`."""
    with path.open("rb") as fh:
        fh.seek(start)
        for lineno, (raw, oversize) in enumerate(_capped_lines(fh, max_bytes), first):
            yield Unit(lineno, raw=raw, oversize=oversize)


def file_state(path: Path) -> dict[str, Any]:
    """What a later read needs to tell whether the file only grew: its size, inode and, for a plain JSON Lines
    file with LF line ends that ends with a complete line (`appendable`), the sha256 of its bytes."""
    st = path.stat()
    state: dict[str, Any] = {
        "size": st.st_size,
        "inode": st.st_ino,
        "mtime_ns": st.st_mtime_ns,
        "appendable": False,
        "sha256": None,
    }
    kind, comp = sniff(path)
    if kind != "jsonl" or comp is not None or _line_end(path, comp) != b"\n":
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


def _line_end(path: Path, comp: str | None) -> bytes:
    """b"\r" for a file whose lines end in CR alone (classic Mac tools), else b"\n". A raw CR cannot occur inside
    JSON text, so a start with CRs and no LF at all says so."""
    with _open(path, comp) as fh:
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


def _json_units(path: Path, comp: str | None, max_bytes: int) -> Iterator[Unit]:
    """A JSON array, element by element (ijson, so the file is never held whole), or a single document."""
    first = _first_char(path, comp)
    if not first:
        return  # an empty file: no unit (reported as an empty file by the caller)
    array = first == b"["
    position = 0
    with _open(path, comp) as fh:
        if fh.peek(3)[:3] == b"\xef\xbb\xbf":  # a byte-order mark, which ijson does not skip
            fh.read(3)
        try:
            for value in ijson.items(fh, "item" if array else "", use_float=True):
                position += 1
                yield Unit(position, obj=value)
        except (ijson.JSONError, UnicodeDecodeError) as exc:  # a broken tail, or bytes that are not UTF-8
            what = f"after element {position}" if array else "in the document"
            yield Unit(position + 1, error=f"invalid JSON {what}, the rest of the file is unreadable: {exc}"[:500])


def _parquet_units(path: Path, comp: str | None, max_bytes: int) -> Iterator[Unit]:
    """Parquet rows as dicts, one record batch at a time."""
    pf = pq.ParquetFile(path)
    position = 0
    for batch in pf.iter_batches(batch_size=1024):
        try:
            rows = batch.to_pylist()
        except Exception:  # one value Python cannot hold (a timestamp out of range): find it row by row
            rows = [_row_or_error(batch, i) for i in range(batch.num_rows)]
        for row in rows:
            position += 1
            yield Unit(position, error=row.message) if isinstance(row, _BadRow) else Unit(position, obj=row)


@dataclass(slots=True)
class _BadRow:
    message: str


def _row_or_error(batch: Any, i: int) -> dict[str, Any] | _BadRow:
    try:
        return batch.slice(i, 1).to_pylist()[0]
    except Exception as exc:
        return _BadRow(f"row cannot be read: {type(exc).__name__}: {str(exc)[:200]}")


def count_units(path: Path) -> int:
    """Units in a file, counted independently of iter_units (for the reconciliation check): newline-separated
    lines, JSON-array elements (plus one for an unreadable tail), or Parquet rows from the footer."""
    kind, comp = sniff(path)
    if kind == "parquet":
        return pq.ParquetFile(path).metadata.num_rows
    if kind == "json":
        return sum(1 for _ in _json_units(path, comp, 0))
    end = _line_end(path, comp)
    lines, last = 0, b""
    with _open(path, comp) as fh:
        while chunk := fh.read(1 << 22):
            lines += chunk.count(end)
            last = chunk[-1:]
    return lines + (1 if last and last != end else 0)


def file_versions(files: Sequence[Path]) -> list[str]:
    """Path and (inode, size, mtime) of each file: what the input fingerprint is made of."""
    return [f"{path}:{_file_version(path.stat()) if path.exists() else 'missing'}" for path in files]


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
        st = f.stat()
        if (st.st_ino, st.st_size, st.st_mtime_ns) == (before.get("inode"), before.get("size"), before.get("mtime_ns")):
            plan[f] = (st.st_size, units[str(f)])  # unchanged (same identity and size): nothing to read
        elif grew_from(f, before):
            plan[f], grew = (int(before["size"]), units[str(f)]), True
        else:
            return None
    return plan if grew else None
