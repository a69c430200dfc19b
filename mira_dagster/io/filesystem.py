"""The one place that tells local disk from object storage: it builds the fsspec filesystem of a store location (a
folder, or an s3:// URL), and every other module goes through that filesystem's interface without asking which one
it is. The local filesystem is given object storage's write semantics, so that one code path is safe on both: a
file is put whole (readers see the old file or the new one, never a part) and a create-only put fails when the
name is taken."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem


class LocalStoreFileSystem(LocalFileSystem):
    """fsspec's local filesystem whose `put_file` and `pipe_file` replace a file whole, as a PUT does: the bytes go
    to a temporary file beside the target (a hard link of the source when it can, so a staged file is not copied),
    which is then renamed over it (or, with mode="create", linked to its name, failing if the name is taken, as
    S3's `If-None-Match: *`). Paths are named as plain paths, as DuckDB and users read them."""

    def put_file(self, path1: Any, path2: Any, callback: Any = None, mode: str = "overwrite", **kwargs: Any) -> None:
        """Put the local file `path1` as `path2` whole (see the class). A hard link when it can: the store's writers
        never rewrite a file in place once put (they stage a new file, or replace theirs by a rename), so the two
        names sharing the bytes is safe, and a staged partition is not copied."""
        src, dst = self._strip_protocol(path1), self._strip_protocol(path2)
        if os.path.exists(dst) and os.path.samefile(src, dst):  # the file is already where it goes
            if mode == "create":
                raise FileExistsError(dst)
            return
        tmp = _beside(dst)
        try:
            os.link(src, tmp)
        except OSError:  # another device, or a filesystem without hard links: a copy
            shutil.copyfile(src, tmp)
        _install(tmp, dst, mode)

    def pipe_file(self, path: Any, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        """Write `value` to `path` whole (see the class)."""
        dst = self._strip_protocol(path)
        tmp = _beside(dst)
        with open(tmp, "xb") as fh:
            fh.write(value)
        _install(tmp, dst, mode)

    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> None:
        """Remove files (folders with `recursive`); a file already gone is no error, as a DELETE on object storage
        (two compactions of one reply version may remove the same inputs)."""
        for p in path if isinstance(path, list) else [path]:
            try:
                super().rm(p, recursive=recursive, maxdepth=maxdepth)
            except FileNotFoundError:
                continue

    def unstrip_protocol(self, name: str) -> str:
        """A plain path (not file://...): what DuckDB, the metadata and users name local files by."""
        return self._strip_protocol(name)


def _beside(path: str) -> str:
    """A temporary name in `path`'s folder (created if missing): readers skip it (a dot name ending in .tmp)."""
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f".{name}.{uuid.uuid4().hex}.tmp")


def _install(tmp: str, dst: str, mode: str) -> None:
    """The whole temporary file `tmp` as `dst`: renamed over it, or with mode="create" linked (FileExistsError if
    `dst` exists)."""
    try:
        if mode == "create":
            os.link(tmp, dst)
        else:
            os.replace(tmp, dst)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def object_store(url: str, endpoint_url: str | None = None) -> AbstractFileSystem:
    """The fsspec filesystem of an s3:// URL (setting `store_url`, MIRA_STORE_URL). `endpoint_url` is an
    S3-compatible server's (setting `s3_endpoint_url`, MIRA_S3_ENDPOINT_URL; None for AWS); credentials are s3fs's
    (botocore's usual chain: AWS_* variables, profile, role), never from the registry."""
    if not url.startswith("s3://"):
        raise ValueError(f"MIRA_STORE_URL must be an s3:// URL or a folder, got {url!r}")
    try:
        import s3fs  # the optional `s3` extra
    except ImportError as exc:
        raise ImportError(f"{url} needs s3fs: install mira-dagster[s3]") from exc

    kwargs = {"endpoint_url": endpoint_url} if endpoint_url else {}
    return s3fs.S3FileSystem(client_kwargs=kwargs, use_listings_cache=False)


def store_filesystem(location: str | Path, endpoint_url: str | None = None) -> tuple[AbstractFileSystem, str]:
    """The filesystem of a store location and the location's path in it (no scheme): an s3:// URL on s3fs, a
    folder (a path or a file:// URL) on the local filesystem. Other schemes are refused, naming the location."""
    text = str(location).rstrip("/") or "/"
    if text.startswith("s3://"):
        return object_store(text, endpoint_url), text.removeprefix("s3://")
    if "://" in text and not text.startswith("file://"):
        raise ValueError(f"store location {text!r}: only s3:// URLs and folders are supported")
    fs = LocalStoreFileSystem()
    return fs, fs._strip_protocol(str(Path(text.removeprefix("file://")).expanduser()))
