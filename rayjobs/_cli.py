"""Shared argument parsing for every job: ``--config``, repeatable ``--set``, ``--work-dir``, ``--address``."""

from __future__ import annotations

import argparse
import logging
import sys

from grounding.config import ConfigError, GroundingConfig, load_config


def common_parser(description: str, add_help: bool = True, ray: bool = True) -> argparse.ArgumentParser:
    """A parser with the common flags; jobs add their own. Reusable as a parent parser."""
    parser = argparse.ArgumentParser(description=description, add_help=add_help)
    parser.add_argument("--config", default=None, help="YAML config file or profile name (e.g. 'paper', 'smoke')")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one config key, e.g. --set optim.lr=3e-4 (repeatable)",
    )
    parser.add_argument("--work-dir", default=None, help="run folder (default: run.work_dir of the config)")
    if ray:
        parser.add_argument(
            "--address", default=None,
            help="Ray cluster address (default: RAY_ADDRESS, else a local Ray started for this job)",
        )
    return parser


def build_config(args: argparse.Namespace) -> GroundingConfig:
    overrides = list(args.overrides)
    if getattr(args, "work_dir", None):
        overrides.append(f"run.work_dir={args.work_dir}")
    try:
        return load_config(args.config, overrides)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def setup_logging(verbose: bool = False) -> None:
    from rayjobs import _disk_full

    _disk_full.install()  # every job calls this first: a full disk then ends it with one clear line
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


get_args_parser = common_parser  # older name, kept for jobs written against it


def absolute(path: str | None) -> str | None:
    """Local paths made absolute (Ray workers run in another folder); URIs unchanged."""
    import os

    if not path or "://" in path:
        return path
    return os.path.abspath(path)
