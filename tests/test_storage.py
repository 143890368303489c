import os

import pyarrow as pa
import pytest

from grounding.data import storage


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "out.json"
    storage.atomic_write_text(path, "old")
    with pytest.raises(RuntimeError):
        with storage.atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temp file left behind


def test_atomic_write_gives_normal_permissions(tmp_path):
    path = tmp_path / "a.txt"
    storage.atomic_write_text(path, "x")
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~storage._UMASK


def test_write_and_read_table_roundtrip(tmp_path):
    table = pa.table({"a": [1, 2]})
    storage.write_table(table, str(tmp_path / "t.parquet"))
    assert storage.read_table(str(tmp_path / "t.parquet")).equals(table)
    assert storage.join("s3://bucket/x", "y") == "s3://bucket/x/y"
    assert storage.is_uri("gs://b/p") and not storage.is_uri("/mnt/cluster_storage")
