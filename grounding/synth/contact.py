"""A PNG contact sheet: the first images of each site, decoded back from the written files, with the
truth boxes drawn, so a person can check that they look like chest radiographs."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pydicom
from PIL import Image, ImageDraw

from grounding.data import storage


def load_display(path: Path) -> np.ndarray:
    """Decode a written file to uint8, air dark (MONOCHROME1 inverted, window from the bit depth)."""
    path = Path(path)
    if path.suffix == ".dcm":
        ds = pydicom.dcmread(path)
        arr = ds.pixel_array.astype(np.float32)
        top = float((1 << int(ds.BitsStored)) - 1)
        if ds.PhotometricInterpretation == "MONOCHROME1":
            arr = top - arr
        return (arr / top * 255).round().astype(np.uint8)
    return np.asarray(Image.open(path).convert("L"))


def contact_sheet(root: str | Path, per_site: int = 24, thumb: int = 160, columns: int = 8) -> Path:
    """Write ``<root>/contact_sheet.png``: ``per_site`` images per site, red truth boxes, site/score labels."""
    root = Path(root)
    index = pq.read_table(root / "index.parquet").to_pylist()
    tiles = []
    for site in ("A", "B", "C"):
        for rec in [r for r in index if r["site"] == site][:per_site]:
            img = load_display(root / rec["file"])
            h, w = img.shape
            tile = Image.fromarray(img).resize((thumb, thumb), Image.BILINEAR).convert("RGB")
            d = ImageDraw.Draw(tile)
            b = np.asarray(rec["boxes"], dtype=float).reshape(-1, 4) * np.array([thumb / w, thumb / h] * 2)
            for x0, y0, x1, y1 in b:
                d.rectangle([x0, y0, x1, y1], outline=(255, 40, 40), width=2)
            label = f"{site} s{rec['severity']} {rec['photometric'][-1]}"
            d.text((3, 2), label, fill=(255, 255, 0))
            tiles.append(tile)
    rows = max(1, -(-len(tiles) // columns))
    sheet = Image.new("RGB", (columns * thumb, rows * thumb), (0, 0, 0))
    for k, tile in enumerate(tiles):
        sheet.paste(tile, ((k % columns) * thumb, (k // columns) * thumb))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    path = root / "contact_sheet.png"
    storage.atomic_write_bytes(path, buf.getvalue())
    return path
