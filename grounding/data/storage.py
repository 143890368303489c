"""Paths, URIs and atomic writes. Local paths and pyarrow URIs (s3://, gs://) are both accepted."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


def is_uri(path: str) -> bool:
    return "://" in str(path)


def resolve(path: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a URI pyarrow understands."""
    if is_uri(path):
        return pafs.FileSystem.from_uri(str(path))
    return pafs.LocalFileSystem(), str(Path(path).absolute())


def join(base: str, *parts: str) -> str:
    if is_uri(base):
        return "/".join([str(base).rstrip("/"), *parts])
    return str(Path(base, *parts))


def makedirs(path: str) -> None:
    fs, p = resolve(path)
    fs.create_dir(p, recursive=True)


def exists(path: str) -> bool:
    fs, p = resolve(path)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path next to ``path``; rename it over ``path`` only if the block succeeds.

    Same directory, so the rename is atomic on POSIX; the file is fsynced first, so a crash leaves
    either the old file or the new one, never half of it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; outputs get the usual mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def disk_full_error(err: BaseException | str) -> BaseException | str | None:
    """The "no space left on device" error inside ``err`` (its cause chain, Ray's wrapped causes), if any."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(err):
            return err
        err = (getattr(err, "__cause__", None) or getattr(err, "cause", None)
               or getattr(err, "__context__", None))
    return None


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    if is_uri(str(path)):
        fs, p = resolve(str(path))
        with fs.open_output_stream(p) as out:  # object stores publish a key only on close
            out.write(data)
        return
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_table(table: pa.Table, path: str, compression: str = "snappy") -> None:
    """Write a Parquet file atomically (local) or as one object (URI)."""
    if is_uri(path):
        fs, p = resolve(path)
        pq.write_table(table, p, filesystem=fs, compression=compression)
        return
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression=compression)


def read_table(path: str, columns: list[str] | None = None) -> pa.Table:
    """Read one Parquet file or a directory of them."""
    fs, p = resolve(path)
    return pq.read_table(p, filesystem=fs, columns=columns)
