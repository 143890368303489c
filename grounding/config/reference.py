"""The documented fields of the typed config: key, type and the comment beside it.

The comments in ``grounding/config/__init__.py`` are the field documentation; this reads them back
(``tokenize``, no import-time cost) so ``grounding config --fields`` and the tests use one source.
A field's text is its trailing comment plus any comment lines directly above it.
"""

from __future__ import annotations

import enum
import inspect
import io
import tokenize
import typing
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

from grounding.config import GroundingConfig


@dataclass(frozen=True)
class FieldDoc:
    key: str  # dotted, e.g. "optim.lr"
    type: str
    doc: str


def _comments_by_field(cls: type) -> dict[str, str]:
    """``{field name: comment text}`` read from the class body's source (fields without one left out)."""
    names = {f.name for f in fields(cls)}
    source = inspect.getsource(cls)
    comments = {tok.start[0]: tok.string.lstrip("#").strip()
                for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
    docs: dict[str, str] = {}
    above: list[str] = []  # own-line comments directly above the current line
    for line_no, line in enumerate(source.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("#") and line_no in comments:
            above.append(comments[line_no])
            continue
        name = stripped.split(":", 1)[0].strip() if ":" in stripped else ""
        if name in names:
            parts = above + ([comments[line_no]] if line_no in comments else [])
            if parts:
                docs[name] = " ".join(parts)
        above = []
    return docs


def _type_name(tp: Any) -> str:
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return " | ".join(m.value for m in tp)
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def field_docs(cls: type = GroundingConfig, prefix: str = "") -> list[FieldDoc]:
    """Every leaf key of the config, in declaration order."""
    hints = typing.get_type_hints(cls)
    comments = _comments_by_field(cls)
    out: list[FieldDoc] = []
    for f in fields(cls):
        tp = hints[f.name]
        if is_dataclass(tp):
            out += field_docs(tp, f"{prefix}{f.name}.")
        else:
            out.append(FieldDoc(f"{prefix}{f.name}", _type_name(tp), comments.get(f.name, "")))
    return out


def section_docs(cls: type = GroundingConfig) -> dict[str, str]:
    """``{section: first line of its class docstring}``."""
    hints = typing.get_type_hints(cls)
    return {f.name: (inspect.getdoc(hints[f.name]) or "").splitlines()[0]
            for f in fields(cls) if is_dataclass(hints[f.name])}
