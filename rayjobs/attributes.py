"""``grounding attributes``: report text -> attribute JSON; fill a manifest; COVID note counts.

    grounding attributes report.txt                 # one report per file, one JSON line
    grounding attributes - --lines < reports.txt    # one report per input line
    grounding attributes --manifest IN.parquet --out OUT.parquet
    grounding attributes --covid-metadata ../shared/data/covid/metadata.csv --counts
"""

from __future__ import annotations

import argparse
import json
import sys

from grounding.text.reports import (annotate_manifest, attribute_counts, extract_attributes,
                               read_covid_notes)
from grounding.data import input_checks as ic
from grounding.data.storage import read_table, write_table
from rayjobs._cli import check_inputs, clean_exit

INPUTS = {"manifest": ic.require_manifest_text, "out": ic.require_writable_file,
          "covid_metadata": ic.require_csv}


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="extract the 22 attributes from report text",
                                     add_help=add_help)
    parser.add_argument("files", nargs="*", help="report files ('-' = standard input)")
    parser.add_argument("--lines", action="store_true", help="one report per line")
    parser.add_argument("--manifest", default=None, help="manifest Parquet to fill (report_text)")
    parser.add_argument("--out", default=None, help="output Parquet for --manifest")
    parser.add_argument("--covid-metadata", default=None, help="COVID-19 collection metadata.csv")
    parser.add_argument("--counts", action="store_true", help="print attribute counts, not rows")
    return parser


def _reports(files: list[str], lines: bool):
    for name in files:
        try:
            data = sys.stdin.buffer.read() if name == "-" else open(name, "rb").read()
        except OSError as err:
            print(f"{name}: cannot read ({err.strerror}); skipped", file=sys.stderr)
            continue
        text = data.decode("utf-8", errors="replace")
        for i, part in enumerate(text.splitlines() if lines else [text]):
            yield (f"{name}:{i + 1}" if lines else name), part


@clean_exit
def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    check_inputs(args, INPUTS)
    for name in args.files:
        if name != "-":
            ic.require_text("FILE", name)
    if args.manifest:
        if not args.out:
            print("--manifest needs --out", file=sys.stderr)
            return 2
        table = annotate_manifest(read_table(args.manifest))
        write_table(table, args.out)
        positive = sum(table.column("pneumonia_positive").to_pylist())
        print(json.dumps({"rows": table.num_rows, "pneumonia_positive": positive, "out": args.out}))
        return 0
    if args.covid_metadata:
        notes = read_covid_notes(args.covid_metadata)
        if args.counts:
            print(json.dumps(attribute_counts(notes), indent=2))
        else:
            for i, note in enumerate(notes):
                print(json.dumps({"row": i, **extract_attributes(note).to_dict()}))
        return 0
    if not args.files:
        print("give report files, '-', --manifest or --covid-metadata", file=sys.stderr)
        return 2
    texts = list(_reports(args.files, args.lines))
    if args.counts:
        print(json.dumps(attribute_counts([t for _, t in texts]), indent=2))
        return 0
    for source, text in texts:
        print(json.dumps({"source": source, **extract_attributes(text).to_dict()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
