"""The prepared-image cache: manifest rows + fixed-size uint8 pixels, as Parquet shards.

A prepared row holds every manifest column except ``report_text`` (reports stay out of the image
cache), plus ``pixels`` (uint8, ``image_size`` x ``image_size``, row-major, air dark) and
``boxes_prepared`` (flat xyxy in prepared pixels). ``width``/``height`` are the original size, so
``boxes`` (original pixels) and ``boxes_prepared`` map onto each other by ``grounding.data.boxes.scale_boxes``.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pyarrow as pa

from grounding.data import storage
from grounding.data.schema import MANIFEST_SCHEMA, PREPARED_EXTRA

PREPARED_SCHEMA = pa.schema(
    [f for f in MANIFEST_SCHEMA if f.name != "report_text"] + [pa.field(n, t) for n, t in PREPARED_EXTRA]
)


def pixels_to_bytes(image: np.ndarray) -> bytes:
    if image.dtype != np.uint8 or image.ndim != 2 or image.shape[0] != image.shape[1]:
        raise ValueError(f"prepared pixels must be square 2-D uint8, got {image.dtype} {image.shape}")
    return np.ascontiguousarray(image).tobytes()


def bytes_to_pixels(data: bytes, image_size: int) -> np.ndarray:
    """(image_size, image_size) uint8 view of a ``pixels`` cell."""
    return np.frombuffer(data, dtype=np.uint8).reshape(image_size, image_size)


def prepared_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=PREPARED_SCHEMA)


def read_prepared(path: str, columns: list[str] | None = None) -> pa.Table:
    """Read a prepared cache (the ``images/`` folder of a prepare output, or the shards folder itself)."""
    images = storage.join(path, "images")
    table = storage.read_table(images if storage.exists(images) else path, columns=columns)
    if "image_id" in table.column_names:
        table = table.sort_by("image_id")
    return table


def iter_images(table: pa.Table) -> Iterator[tuple[dict, np.ndarray]]:
    """(row without pixels, uint8 image) for each row of a prepared table."""
    for row in table.to_pylist():
        pixels = bytes_to_pixels(row.pop("pixels"), row["image_size"])
        yield row, pixels
