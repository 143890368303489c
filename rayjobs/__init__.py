"""Thin job entry points: parse arguments, build the config, call ``grounding``.

Every job runs as ``grounding <command>`` or ``python -m rayjobs.<command_with_underscores>``.
"""

COMMANDS = (
    "synth", "inspect", "prepare", "attributes", "word-vectors", "score-attributes",
    "train-detector", "extract-rois", "train", "tune", "predict", "evaluate", "severity-cv",
    "pipeline", "bench", "config",
)
