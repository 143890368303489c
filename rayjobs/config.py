"""``grounding config``: print the resolved config, or every documented field.

    grounding config --show                              # defaults as YAML (what a job writes to config.yaml)
    grounding config --show --config claim --set optim.lr=3e-4
    grounding config --fields                            # key, type, default and meaning of every field
    grounding config --fields --config claim             # ... with the profile's value where it differs

No Ray. A bad key or value is the same one-line error (exit 2) every job gives.
"""

from __future__ import annotations

import argparse

from grounding.config import GroundingConfig
from grounding.config.reference import field_docs, section_docs
from rayjobs import _cli
from rayjobs._cli import clean_exit


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = _cli.get_args_parser(__doc__.splitlines()[0], add_help=add_help, ray=False)
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--show", action="store_true", help="the resolved config as YAML (the default)")
    what.add_argument("--fields", action="store_true", help="every field: key, type, default, meaning")
    return parser


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def fields_text(cfg: GroundingConfig) -> str:
    """One block per section: ``key (type) = default  meaning``, plus ``now: value`` where cfg differs."""
    resolved = _flat(cfg.to_dict())
    defaults = _flat(GroundingConfig().to_dict())
    sections = section_docs()
    lines: list[str] = []
    current = None
    for doc in field_docs():
        section = doc.key.split(".", 1)[0]
        if section != current:
            current = section
            lines += [""] if lines else []
            lines.append(f"[{section}] {sections.get(section, '')}".rstrip())
        now, default = resolved[doc.key], defaults[doc.key]
        changed = f"   now: {now!r}" if now != default else ""
        lines.append(f"  {doc.key} ({doc.type}) = {default!r}{changed}")
        if doc.doc:
            lines.append(f"      {doc.doc}")
    return "\n".join(lines) + "\n"


@clean_exit
def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    cfg = _cli.build_config(args)
    print(fields_text(cfg) if args.fields else cfg.to_yaml(), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
