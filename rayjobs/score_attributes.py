"""``grounding score-attributes``: the extractor against the Indiana MeSH codes.

    grounding score-attributes --indiana ../shared/data/indiana/NLMCXR_reports.tgz --split even

Develop on ``even`` only; ``odd`` is held out and is run once, to report it.
``--engine medspacy`` scores the medspaCy ConText comparison engine (needs the ``nlp`` extra).
"""

from __future__ import annotations

import argparse
import json
import sys

from grounding.text.indiana import SPLITS, Engine, format_table, score_extractor
from grounding.data import input_checks as ic
from grounding.data.storage import atomic_write_text
from rayjobs._cli import check_inputs, clean_exit

INPUTS = {"indiana": ic.require_indiana, "out": ic.require_writable_file}


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="score attribute extraction vs Indiana MeSH",
                                     add_help=add_help)
    parser.add_argument("--indiana", required=True, help="NLMCXR_reports.tgz or its XML folder")
    parser.add_argument("--split", choices=SPLITS, default="even", help="even = dev, odd = held out")
    parser.add_argument("--include-uncertain", action="store_true",
                        help="count uncertain attributes as predicted too")
    parser.add_argument("--engine", choices=[e.value for e in Engine], default=Engine.RULES.value,
                        help="rules = the project's extractor; medspacy = medspaCy ConText (optional extra)")
    parser.add_argument("--out", default=None, help="write the full result as JSON here")
    return parser


@clean_exit
def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    from grounding.text.report_context import MedspacyMissing

    check_inputs(args, INPUTS)
    try:
        result = score_extractor(args.indiana, args.split, args.include_uncertain, args.engine)
    except MedspacyMissing as err:
        print(f"score-attributes: --engine medspacy: {err}", file=sys.stderr)
        return 2
    print(f"engine={result['engine']} split={args.split} reports={result['reports']} "
          f"include_uncertain={args.include_uncertain} reports/CPU-s={result['reports_per_second']:.0f}")
    print(format_table(result))
    f = result["finding"]
    print(f"finding present (report level): P={f['precision']:.3f} R={f['recall']:.3f} F1={f['f1']:.3f}")
    if args.out:
        atomic_write_text(args.out, json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
