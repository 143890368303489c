"""A full disk ends any job with one line saying what to do, not a traceback (reliability item 6)."""

from __future__ import annotations

import sys


def message(err: BaseException, prog: str = "") -> str | None:
    """One line for a disk-full ``err`` (anywhere in its cause chain), else None."""
    from pathlib import Path

    from grounding.data.storage import disk_full_error

    full = disk_full_error(err)
    if full is None:
        return None
    where = getattr(full, "filename", None)
    prog = prog or Path(sys.argv[0]).stem or "grounding"
    return (f"{prog}: disk full{f' writing {where}' if where else ''} (no space left on device); finished "
            "checkpoints and shards are intact: free space, then rerun the same command to resume")


def install() -> None:
    """Chain a ``sys.excepthook`` that turns an uncaught "no space left on device" into one line.

    Every write the jobs make is atomic (temp file + rename) and every job resumes, so the advice is
    always the same: free space and rerun. Other errors go to the previous hook unchanged.
    """
    previous = sys.excepthook
    if getattr(previous, "_disk_full_hook", False):
        return

    def hook(kind, err, tb):
        text = message(err) if isinstance(err, BaseException) else None
        if text is None:
            previous(kind, err, tb)
            return
        print(text, file=sys.stderr)

    hook._disk_full_hook = True
    sys.excepthook = hook
