"""One manifest row -> one prepared row (or one quarantine row). Pure: no Ray here.

Boxes arrive xyxy in original pixels; they are clipped to the decoded size (a box outside the image
is dropped and counted) and scaled to the prepared square with the same factors as the pixels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from grounding.data import boxes as box_ops
from grounding.data.prepared import pixels_to_bytes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrepareOptions:
    image_size: int
    max_pixels: int
    low_percentile: float
    high_percentile: float


def prepare_row(row: dict, options: PrepareOptions) -> tuple[dict | None, dict | None]:
    """(prepared row, None) on success, (None, quarantine row) when the image cannot be used."""
    from grounding.data.imaging import QuarantineError, decode_file, resize_uint8

    try:
        decoded = decode_file(row["image_uri"], max_pixels=options.max_pixels,
                              low_percentile=options.low_percentile, high_percentile=options.high_percentile)
    except QuarantineError as err:
        return None, quarantine_row(row, str(err.reason.value), err.message)
    except Exception as err:  # noqa: BLE001 - one bad file must never stop the dataset
        # The exception text may quote header values: keep only its type.
        return None, quarantine_row(row, "decode_error", f"unexpected {type(err).__name__} while decoding")
    height, width = decoded.pixels.shape
    original = box_ops.unflatten(row.get("boxes"))
    clipped = box_ops.clip_boxes(original, width, height)
    prepared_boxes = box_ops.scale_boxes(clipped, (height, width), (options.image_size, options.image_size))
    out = {k: v for k, v in row.items() if k != "report_text"}
    out.update(
        width=int(width), height=int(height), boxes=box_ops.flatten(clipped),
        pixels=pixels_to_bytes(resize_uint8(decoded.pixels, options.image_size)),
        image_size=int(options.image_size), boxes_prepared=box_ops.flatten(prepared_boxes),
    )
    if len(clipped) != len(original):
        log.info("image %s: %d box(es) outside the image dropped", row["image_id"], len(original) - len(clipped))
    return out, None


def quarantine_row(row: dict, reason: str, message: str, stage: str = "prepare") -> dict:
    return {"image_id": row.get("image_id", ""), "image_uri": row.get("image_uri", ""), "stage": stage,
            "reason": reason, "message": message}


def summarise(read: int, written: int, quarantine_reasons: list[str]) -> dict:
    reasons, counts = np.unique(np.asarray(quarantine_reasons, dtype=object).astype(str), return_counts=True) \
        if quarantine_reasons else ([], [])
    return {"read": int(read), "written": int(written), "quarantined": int(len(quarantine_reasons)),
            "by_reason": {str(r): int(c) for r, c in zip(reasons, counts)}}
