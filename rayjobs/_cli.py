"""Shared argument parsing for every job: ``--config``, repeatable ``--set``, ``--work-dir``, ``--address``."""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import sys
from typing import Callable, Iterator, Mapping

from grounding.config import ConfigError, GroundingConfig, load_config
from grounding.data.input_checks import InputError, require_config, require_writable_folder
from grounding.data.locks import LockHeldError


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
    if getattr(args, "config", None):
        check_or_exit(require_config, "--config", args.config)
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


# -- bad input: one line, exit 2, before any Ray start ------------------------------------------
def _say(err: Exception) -> None:
    print(str(err).splitlines()[0] if str(err) else type(err).__name__, file=sys.stderr)


def check_or_exit(check: Callable[[str, str], None], flag: str, path: str) -> None:
    try:
        check(flag, path)
    except InputError as err:
        _say(err)
        raise SystemExit(2) from None


def _flag(dest: str) -> str:
    return POSITIONAL.get(dest) or "--" + dest.replace("_", "-")


POSITIONAL = {"files": "FILE", "images": "IMAGE"}  # positional arguments, named as in --help


def check_inputs(args: argparse.Namespace, inputs: Mapping[str, Callable[[str, str], None]],
                 work_dir: str | None = None) -> None:
    """Run each ``check(flag, path)`` of ``inputs`` ({args dest: check}) on the given values.

    ``work_dir``: also check that the run folder can be written. Raises :class:`InputError`
    (caught by :func:`clean_exit`), naming the flag and the path.
    """
    for dest, check in inputs.items():
        value = getattr(args, dest, None)
        for path in value if isinstance(value, list) else [value]:
            if path:
                check(_flag(dest), str(path))
    if work_dir:
        require_writable_folder("--work-dir", work_dir)


def clean_exit(main: Callable[..., int]) -> Callable[..., int]:
    """Decorate a job's ``main``: bad input or a held lock -> one stderr line and status 2, no traceback."""

    @functools.wraps(main)
    def wrapper(*a, **kw) -> int:
        try:
            return main(*a, **kw)
        except (InputError, LockHeldError) as err:
            _say(err)
            return 2

    return wrapper


@contextlib.contextmanager
def exclusive(work_dir: str, command: str) -> Iterator[None]:
    """Hold ``<work_dir>/.grounding.lock`` for the block: a second job on the folder is refused."""
    from grounding.data import storage
    from grounding.data.locks import exclusive as lock, work_dir_lock_path

    if storage.is_uri(work_dir):  # object stores have no exclusive create: nothing to lock
        yield
        return
    with lock(work_dir_lock_path(work_dir), f"work dir {work_dir}", f"grounding {command}"):
        yield


@contextlib.contextmanager
def exclusive_run(cfg: GroundingConfig, run_id: str, command: str) -> Iterator[None]:
    """Hold the lock of Ray run ``run_id`` in the run's storage: one driver per run id."""
    import os

    from grounding.data import storage
    from grounding.data.locks import exclusive as lock, run_lock_path

    # the storage rule of grounding.distributed.runtime.storage_path, without starting Ray
    ray_storage = cfg.run.storage_path or os.path.abspath(storage.join(cfg.run.work_dir, "ray_storage"))
    label = f"run id {run_id} in {ray_storage}"
    with lock(run_lock_path(ray_storage, run_id, cfg.run.work_dir), label, f"grounding {command}"):
        yield
