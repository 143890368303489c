"""Checks of a job's input and output paths, run before any Ray start.

Each check raises :class:`InputError` with one line, ``"<flag> <path>: <problem>"``, which the CLI
prints to stderr before exiting with status 2 (no traceback, no Ray log noise). Checks are cheap:
they look at file kinds, Parquet schemas and YAML, never at the data itself (that is the jobs'
work, and bad rows are quarantined there). No Ray, no torch import.
"""

from __future__ import annotations

import json
import os
import tarfile
import zipfile
from pathlib import Path
from typing import Iterable

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import yaml

from grounding.data import storage


class InputError(ValueError):
    """A path given to a job is missing, empty, of the wrong kind or not writable (one-line message)."""


def fail(flag: str, path: str, problem: str) -> InputError:
    return InputError(f"{flag} {path}: {problem}")


def _info(path: str) -> pafs.FileInfo:
    fs, p = storage.resolve(path)
    return fs.get_file_info(p)


def require_exists(flag: str, path: str) -> pafs.FileInfo:
    info = _info(path)
    if info.type == pafs.FileType.NotFound:
        raise fail(flag, path, "no such file or folder")
    return info


def require_file(flag: str, path: str) -> None:
    """A regular, non-empty file."""
    info = require_exists(flag, path)
    if info.type == pafs.FileType.Directory:
        raise fail(flag, path, "is a folder, expected a file")
    if info.size == 0:
        raise fail(flag, path, "empty file")


def require_folder(flag: str, path: str) -> None:
    """A folder with something in it."""
    info = require_exists(flag, path)
    if info.type != pafs.FileType.Directory:
        raise fail(flag, path, "is a file, expected a folder")
    fs, p = storage.resolve(path)
    if not fs.get_file_info(pafs.FileSelector(p)):
        raise fail(flag, path, "empty folder")


def _parquet_files(path: str) -> list[str]:
    fs, p = storage.resolve(path)
    infos = fs.get_file_info(pafs.FileSelector(p, recursive=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet"))


def require_parquet(flag: str, path: str, columns: Iterable[str] = (), read: str = "") -> None:
    """A Parquet file, or a folder of Parquet files, whose schema has ``columns``.

    ``read``: the path actually read when it differs from the one named in the message.
    """
    require_exists(flag, path)
    info = _info(read or path)
    fs, p = storage.resolve(read or path)
    if info.type == pafs.FileType.Directory:
        files = _parquet_files(read or path)
        if not files:
            raise fail(flag, path, "no Parquet files in this folder")
        p = files[0]
    elif info.size == 0:
        raise fail(flag, path, "empty file")
    try:
        schema = pq.read_schema(p, filesystem=fs)
    except Exception:  # noqa: BLE001 - pyarrow raises ArrowInvalid/OSError; the kind is what matters
        raise fail(flag, path, "not a Parquet file") from None
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise fail(flag, path, f"Parquet without the column(s) {', '.join(missing)}")


def require_manifest(flag: str, path: str, columns: Iterable[str] = ("image_id", "image_uri")) -> None:
    require_parquet(flag, path, columns)


def require_prepared(flag: str, path: str) -> None:
    """The output folder of ``grounding prepare`` (or its ``images/`` shards folder)."""
    require_folder(flag, path)
    images = storage.join(path, "images")
    shards = images if storage.exists(images) else path
    if not _parquet_files(shards):
        raise fail(flag, path, "not a prepared folder (no images/ Parquet shards; run `grounding prepare`)")
    require_parquet(flag, path, ("image_id", "pixels", "image_size"), read=shards)


def require_rois(flag: str, path: str) -> None:
    """The ROI cache written by ``grounding extract-rois``."""
    require_parquet(flag, path, ("image_id", "roi_features", "feature_dim"))


def require_checkpoint(flag: str, path: str) -> None:
    """A PyTorch checkpoint file (torch.save's zip format); loading it (weights_only) is the job's."""
    require_file(flag, path)
    if storage.is_uri(path):
        return
    if not zipfile.is_zipfile(path):
        raise fail(flag, path, "not a PyTorch checkpoint (torch.save zip format)")


def require_yaml_mapping(flag: str, path: str) -> None:
    """A YAML file whose top level is a mapping (a config or a search space)."""
    require_file(flag, path)
    try:
        loaded = yaml.safe_load(Path(path).read_bytes())
    except (yaml.YAMLError, UnicodeDecodeError, ValueError):
        raise fail(flag, path, "not a YAML file") from None
    if not isinstance(loaded, dict):
        raise fail(flag, path, "YAML top level must be a mapping of sections")


def require_config(flag: str, path: str) -> None:
    """``--config``: a YAML file, or the name of a built-in profile."""
    from grounding.config import PROFILES_DIR

    if not Path(path).exists() and (PROFILES_DIR / f"{path}.yaml").exists():
        return
    if not Path(path).exists():
        raise fail(flag, path, "no such file (nor a profile in grounding/profiles)")
    require_yaml_mapping(flag, path)


def require_word_vectors(flag: str, path: str) -> None:
    """The folder written by ``grounding word-vectors``."""
    from grounding.text.word_vectors import META_FILE, VECTORS_FILE

    require_folder(flag, path)
    for name in (META_FILE, VECTORS_FILE):
        file = Path(path, name)
        if not file.is_file():
            raise fail(flag, path, f"no {name} (not a word-vectors folder; run `grounding word-vectors`)")
        if file.stat().st_size == 0:
            raise fail(flag, path, f"{name} is empty")
    try:
        json.loads(Path(path, META_FILE).read_text())
    except (ValueError, UnicodeDecodeError):
        raise fail(flag, path, f"{META_FILE} is not JSON") from None


def require_text(flag: str, path: str) -> None:
    """A non-empty UTF-8 text file (CSV, JSON lines, report text)."""
    require_file(flag, path)
    if storage.is_uri(path):
        return
    with open(path, "rb") as f:
        head = f.read(4096)
    if b"\0" in head:
        raise fail(flag, path, "binary file, expected text")


def require_csv(flag: str, path: str) -> None:
    require_text(flag, path)
    if not storage.is_uri(path):
        # the header is the first line that is not blank or a '#' comment (the adapters skip those too)
        lines = (ln for ln in Path(path).read_bytes().splitlines() if ln.strip() and not ln.lstrip().startswith(b"#"))
        first = next(lines, b"")
        if b"," not in first:
            raise fail(flag, path, "not a CSV file (no comma-separated header)")


def require_indiana(flag: str, path: str) -> None:
    """The Indiana archive ``NLMCXR_reports.tgz`` or its extracted XML folder."""
    info = require_exists(flag, path)
    if info.type == pafs.FileType.Directory:
        require_folder(flag, path)  # an empty folder is reported as such, not as "no reports"
        if not any(Path(path).rglob("*.xml")):
            raise fail(flag, path, "no *.xml reports in this folder")
        return
    require_file(flag, path)
    if not tarfile.is_tarfile(path):
        raise fail(flag, path, "not a tar archive (expected NLMCXR_reports.tgz)")


def require_text_folder(flag: str, path: str) -> None:
    require_folder(flag, path)
    if not any(Path(path).rglob("*.txt")):
        raise fail(flag, path, "no *.txt files in this folder")


def require_dataset_root(flag: str, path: str) -> None:
    require_folder(flag, path)


def require_image_file(flag: str, path: str) -> None:
    """An image path: only existence is checked; a bad image is quarantined by the job itself."""
    require_exists(flag, path)


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def require_writable_folder(flag: str, path: str) -> None:
    """An output folder that exists and is writable, or can be created (URIs are not checked)."""
    if storage.is_uri(path):
        return
    target = Path(path).absolute()
    if target.exists() and not target.is_dir():
        raise fail(flag, path, "is a file, expected an output folder")
    base = _nearest_existing(target)
    if not base.is_dir():
        raise fail(flag, path, f"cannot create the folder: {base} is a file")
    if not os.access(base, os.W_OK | os.X_OK):
        raise fail(flag, path, f"not writable ({base} denies write access)")


def require_writable_file(flag: str, path: str) -> None:
    """An output file whose folder is writable (or can be created)."""
    if storage.is_uri(path):
        return
    target = Path(path).absolute()
    if target.is_dir():
        raise fail(flag, path, "is a folder, expected an output file")
    base = _nearest_existing(target.parent)
    if not base.is_dir():
        raise fail(flag, path, f"cannot create the file: {base} is a file")
    try:
        require_writable_folder(flag, str(target.parent))
    except InputError as err:
        raise fail(flag, path, str(err).split(": ", 1)[1]) from None


def require_manifest_text(flag: str, path: str) -> None:
    require_manifest(flag, path, ("report_text",))


def require_severity_table(flag: str, path: str) -> None:
    from grounding.evaluation.severity import SEVERITY_COLUMNS

    require_parquet(flag, path, SEVERITY_COLUMNS)
