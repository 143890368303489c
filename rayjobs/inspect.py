"""``grounding inspect FILE... [--png DIR]``: decode files with the prepare job's decoder, one JSON line each.

Quarantined files are reported, not fatal: the exit code is 0 unless the arguments are wrong.
No Ray. No header identifier is ever printed (only transfer syntax, modality, photometric, bits,
shape and statistics of the normalised image).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

from grounding.data import input_checks as ic
from grounding.data import storage
from grounding.data.imaging import inspect_file
from rayjobs import _cli
from rayjobs._cli import clean_exit

# FILEs are not checked here: a missing, empty or undecodable file is reported as quarantined (exit 0)
INPUTS = {"png": ic.require_writable_folder}


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = _cli.get_args_parser(__doc__.splitlines()[0], add_help=add_help, ray=False)
    parser.add_argument("files", nargs="+", metavar="FILE", help="DICOM/PNG/JPEG paths or URIs")
    parser.add_argument(
        "--png", metavar="DIR", default=None, help="also write each normalised image as PNG here"
    )
    parser.add_argument(
        "--prepared", action="store_true",
        help="write the PNG at data.image_size (what the model sees) instead of the original size",
    )
    return parser


def _png_names(files: list[str]) -> list[str]:
    """One PNG name per input: the file stem, made unique with a counter when stems repeat."""
    seen: collections.Counter[str] = collections.Counter()
    names = []
    for f in files:
        stem = Path(f.rstrip("/").split("/")[-1]).stem or "image"
        seen[stem] += 1
        names.append(f"{stem}.png" if seen[stem] == 1 else f"{stem}_{seen[stem]}.png")
    return names


@clean_exit
def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    cfg = _cli.build_config(args)
    _cli.check_inputs(args, INPUTS)
    if args.png:
        storage.makedirs(args.png)
    counts: collections.Counter[str] = collections.Counter()
    for file, png_name in zip(args.files, _png_names(args.files)):
        record = inspect_file(
            file,
            max_pixels=cfg.data.max_pixels,
            low_percentile=cfg.data.low_percentile,
            high_percentile=cfg.data.high_percentile,
            png_path=storage.join(args.png, png_name) if args.png else None,
            png_size=cfg.data.image_size if args.prepared else None,
        )
        counts[record.get("reason", "decoded")] += 1
        print(json.dumps(record), flush=True)
    quarantined = sum(n for k, n in counts.items() if k != "decoded")
    detail = ", ".join(f"{k}: {n}" for k, n in sorted(counts.items()) if k != "decoded")
    summary = f"inspect: {counts['decoded']} decoded, {quarantined} quarantined"
    print(summary + (f" ({detail})" if detail else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
