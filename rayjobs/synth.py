"""``grounding synth --out DIR``: write the built-in synthetic dataset, its manifest and a contact sheet."""

from __future__ import annotations

import sys
import time

from grounding.data import input_checks as ic
from rayjobs._cli import (build_config, check_inputs, clean_exit, get_args_parser as _base_parser,
                          setup_logging)

INPUTS = {"out": ic.require_writable_folder}


def get_args_parser(add_help: bool = True):
    parser = _base_parser("Generate the synthetic dataset (sites A, B, C) and its manifest.", add_help, ray=False)
    parser.add_argument("--out", required=True, help="output folder (local)")
    return parser


@clean_exit
def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    setup_logging()
    cfg = build_config(args)
    check_inputs(args, INPUTS)
    from grounding.data import storage
    from grounding.data.adapters.synthetic import synthetic_manifest
    from grounding.config import write_resolved
    from grounding.synth import generate
    from grounding.synth.contact import contact_sheet

    start = time.perf_counter()
    summary = generate(cfg.synth, args.out)
    elapsed = time.perf_counter() - start
    manifest = synthetic_manifest(args.out, cfg.data.split_fractions, cfg.data.split_seed)
    storage.write_table(manifest, storage.join(args.out, "manifest.parquet"))
    write_resolved(cfg, args.out)
    if cfg.synth.contact_per_site > 0:
        contact_sheet(args.out, cfg.synth.contact_per_site)
    for site, s in summary["sites"].items():
        print(f"site {site}: {s['images']} images, {s['positive']} positive, {s['patients']} patients, "
              f"purpose {s['purpose']}, photometric {s['photometric']}, transfer {s['transfer_syntax']}")
    print(f"{summary['images']} images in {elapsed:.1f} s -> {args.out} (manifest.parquet: {manifest.num_rows} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
