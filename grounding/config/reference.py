"""The documented fields of the typed config: key, type, default and the comment beside it.

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
from dataclasses import MISSING, dataclass, fields, is_dataclass
from typing import Any

from grounding.config import GroundingConfig


@dataclass(frozen=True)
class FieldDoc:
    key: str  # dotted, e.g. "optim.lr"
    type: str
    default: Any
    doc: str


def _comments_by_field(cls: type) -> dict[str, str]:
    """``{field name: comment text}`` read from the class body's source (fields without one left out)."""
    names = {f.name for f in fields(cls)}
    docs: dict[str, str] = {}
    above: list[str] = []
    line_field: dict[int, str] = {}
    source = inspect.getsource(cls)
    for line_no, line in enumerate(source.splitlines(), start=1):
        stripped = line.strip()
        name = stripped.split(":", 1)[0].strip() if ":" in stripped else ""
        if name in names and not stripped.startswith("#"):
            line_field[line_no] = name
    trailing: dict[int, str] = {}
    own_line: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip()
            (own_line if tok.line.strip().startswith("#") else trailing)[tok.start[0]] = text
    for line_no in range(1, len(source.splitlines()) + 1):
        if line_no in own_line:
            above.append(own_line[line_no])
            continue
        name = line_field.get(line_no)
        if name is not None:
            parts = above + ([trailing[line_no]] if line_no in trailing else [])
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


def _default(f: Any) -> Any:
    if f.default is not MISSING:
        value = f.default
    elif f.default_factory is not MISSING:
        value = f.default_factory()
    else:
        return None
    return value.value if isinstance(value, enum.Enum) else value


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
            out.append(FieldDoc(f"{prefix}{f.name}", _type_name(tp), _default(f), comments.get(f.name, "")))
    return out


def section_docs(cls: type = GroundingConfig) -> dict[str, str]:
    """``{section: first line of its class docstring}``."""
    hints = typing.get_type_hints(cls)
    return {f.name: (inspect.getdoc(hints[f.name]) or "").splitlines()[0]
            for f in fields(cls) if is_dataclass(hints[f.name])}
