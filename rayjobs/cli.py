"""``grounding <command> ...``: dispatch to ``rayjobs.<command_with_underscores>.main``."""

from __future__ import annotations

import importlib
import sys

from rayjobs import COMMANDS

_SUMMARY = {
    "synth": "generate the built-in synthetic dataset (DICOM/PNG, reports, boxes, severity)",
    "inspect": "decode image files and print one JSON line each (no header identifiers)",
    "prepare": "Ray Data: manifest -> decoded, normalised, resized images + quarantine",
    "attributes": "print the attributes extracted from report text as JSON",
    "word-vectors": "Ray job: Word2Vec on the report corpus, attribute vectors and negatives",
    "score-attributes": "score the attribute extractor against Indiana MeSH codes",
    "train-detector": "Ray Train: supervised RetinaNet (the supervised baseline)",
    "extract-rois": "Ray Data: frozen detector once per image -> ROI cache",
    "train": "Ray Train: the cross-attention grounding model",
    "tune": "Ray Tune: hyperparameter search over the grounding model",
    "predict": "image(s) + checkpoint -> boxes and attribute probabilities",
    "evaluate": "Ray job: IoU@0.25/0.5/0.75 table, attribute metrics, report",
    "severity-cv": "Ray job: P(severe)/P(mild) vs severity scores, K-fold by patient",
    "pipeline": "the whole method end to end on a local Ray or a cluster",
    "bench": "benchmarks: ingest, ROI extraction, training, Tune, end to end",
    "config": "print the resolved config (--show) or every documented field (--fields)",
}


def _usage() -> str:
    lines = ["usage: grounding <command> [options]   (grounding <command> --help)", "", "commands:"]
    lines += [f"  {name:<17} {_SUMMARY[name]}" for name in COMMANDS]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"grounding: unknown command '{command}'\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"rayjobs.{command.replace('-', '_')}")
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
