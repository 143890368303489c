"""Report text -> the 22 attribute words of design.md 1.1 (pure Python; rules in ``report_rules``).

Rules, in short (tables in :mod:`grounding.text.vocabulary`, version ``VOCABULARY_VERSION``):

* Findings: pneumonia, opacity, consolidation, infiltrate, airspace disease and their variants
  (opacities, opacification, infiltrates, airspace opacity, haziness, shadows, pneumonitis, ...).
* An attribute word counts only when it is attached to such a finding: the nearest finding or
  *other* finding (effusion, atelectasis, heart, hemidiaphragm, ...) in the same clause, at most 8
  tokens away, the following one on a tie. "small left effusion and right opacity" -> right only.
  A run of attribute words ("the left lung base") attaches as one phrase; a comma before the
  following finding counts against it ("opacity in the left base, XXXX scarring" -> the opacity);
  "most notably / most prominent / predominantly in" hands a location back to the finding before;
  findings coordinated with the anchor ("consolidation and atelectasis ... in the right lower
  lobe") share its attributes.
* Synonyms: "lower lobe" -> lower, "base(s)/basilar" -> basal, "bibasilar"/"both bases" -> basal +
  bilateral, "lingula" -> lingular, "both lungs" -> bilateral, "apex/apices" -> apical,
  "midlung/mid" -> middle, "hilar/parahilar" -> perihilar, "subpleural" -> peripheral,
  "multiple/scattered/multilobar" -> multifocal, "ground glass/ill-defined/vague" -> hazy,
  "linear/strandy" -> streaky, "marked" -> severe, "large/massive" -> extensive, and
  **minimal/small/slight/subtle/faint/trace -> mild** (the Indiana MeSH coders write "mild" for
  them). A finding with both left and right gets bilateral as well; a plural zone ("lower lobes")
  gives bilateral only when no single side is named ("right middle and lower lobes" -> right).
* States: negated ("no", "without", "negative for", "free of", "clear of", "resolved", "not seen",
  ...), uncertain ("may represent", "cannot exclude", "possible", "questionable", "could be",
  "?", ...), differential ("versus", "vs", "or", "/" between two findings: the finding counts as
  uncertain, its attributes as present, since the opacity is seen there), history ("history of",
  "status post", and any INDICATION/HISTORY/COMPARISON section) and positive. "likely",
  "probable", "consistent with" are positive. Comparison wording ("compared to prior",
  "previously seen", "unchanged", "improved") does not change the state; "resolved"/"cleared" negate.
* Output: ``attributes`` = attributes attached to a positive or differential finding (vocabulary
  order);
  ``uncertain_attributes`` = attached only to uncertain findings; ``negated_findings`` = findings
  only ever negated; ``findings`` = positive findings; ``pneumonia_positive`` = any positive
  finding of the five.

Bad input never raises: ``None``, a non-string, an empty or whitespace report, a report in
another language, binary garbage or non-UTF-8 bytes (decoded with U+FFFD replacement) all give
the empty result ``ReportAttributes()`` unless English finding words are in them. A report longer
than ``MAX_REPORT_CHARS`` (2 MB) is read up to that length; a 1 MB report takes well under 2 s.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable

import pyarrow as pa

from grounding.text import report_rules as rules
from grounding.text.vocabulary import ATTRIBUTES, FINDINGS

MAX_REPORT_CHARS = 2_000_000


@dataclass(frozen=True)
class ReportAttributes:
    """What one report says about pneumonia-like findings. Tuples are in vocabulary order."""

    attributes: tuple[str, ...] = ()
    uncertain_attributes: tuple[str, ...] = ()
    negated_findings: tuple[str, ...] = ()
    findings: tuple[str, ...] = ()
    pneumonia_positive: bool = False
    uncertain_findings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


def _as_text(report: Any) -> str:
    if isinstance(report, (bytes, bytearray, memoryview)):
        return bytes(report[:MAX_REPORT_CHARS * 4]).decode("utf-8", errors="replace")
    if not isinstance(report, str):
        return ""  # None, NaN from pandas, numbers: no report
    return report


def _ordered(names: set[str], order: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(n for n in order if n in names)


def extract_attributes(text: str | bytes | None) -> ReportAttributes:
    """Attributes of one report.

    Args:
        text: the report (str, or bytes decoded as UTF-8 with replacement). Anything else is
            read as no report.

    Returns:
        A :class:`ReportAttributes`; the empty one when there is no pneumonia-like finding.
    """
    text = _as_text(text)[:MAX_REPORT_CHARS]
    if not text.strip():
        return ReportAttributes()
    return assemble((m.payload[0], m.state, m.attached) for m in rules.analyse(text))


def assemble(mentions: Iterable[tuple[str, rules.State, Iterable[str]]]) -> ReportAttributes:
    """(finding name, state, attached attributes) per finding mention -> :class:`ReportAttributes`.

    Shared by every engine (the rules here, medspaCy ConText in ``report_context``) so that the
    engines differ only in how they find mentions, states and attachments.
    """
    present: set[str] = set()
    uncertain: set[str] = set()
    positive_findings: set[str] = set()
    uncertain_findings: set[str] = set()
    negated: set[str] = set()
    for name, state, attached in mentions:
        attrs = set(attached)
        if "left" in attrs and "right" in attrs:
            attrs.add("bilateral")
        if state is rules.State.POSITIVE:
            present |= attrs
            positive_findings.add(name)
        elif state is rules.State.DIFFERENTIAL:
            present |= attrs
            uncertain_findings.add(name)
        elif state is rules.State.UNCERTAIN:
            uncertain |= attrs
            uncertain_findings.add(name)
        elif state is rules.State.NEGATED:
            negated.add(name)
    return ReportAttributes(
        attributes=_ordered(present, ATTRIBUTES),
        uncertain_attributes=_ordered(uncertain - present, ATTRIBUTES),
        negated_findings=_ordered(negated - positive_findings - uncertain_findings, FINDINGS),
        findings=_ordered(positive_findings, FINDINGS),
        pneumonia_positive=bool(positive_findings),
        uncertain_findings=_ordered(uncertain_findings - positive_findings, FINDINGS),
    )


ANNOTATED_COLUMNS = ("attributes", "uncertain_attributes", "negated_findings", "pneumonia_positive")


def annotate_columns(texts: list[Any]) -> dict[str, list]:
    """Report texts -> the four manifest columns as Python lists (one entry per text)."""
    results = [extract_attributes(t) for t in texts]
    return {
        "attributes": [list(r.attributes) for r in results],
        "uncertain_attributes": [list(r.uncertain_attributes) for r in results],
        "negated_findings": [list(r.negated_findings) for r in results],
        "pneumonia_positive": [r.pneumonia_positive for r in results],
    }


def annotate_manifest(table: pa.Table) -> pa.Table:
    """Fill ``attributes``, ``uncertain_attributes``, ``negated_findings``, ``pneumonia_positive``.

    Args:
        table: a manifest (``grounding.data.schema.MANIFEST_SCHEMA``) or any table with ``report_text``.
            Columns it lacks are appended; the ones it has are replaced, in place of order.

    Returns:
        The table with the four columns computed from ``report_text`` (null text = no report).
    """
    if "report_text" not in table.column_names:
        raise KeyError("annotate_manifest: the table has no 'report_text' column")
    columns = annotate_columns(table.column("report_text").to_pylist())
    types = {"attributes": pa.list_(pa.string()), "uncertain_attributes": pa.list_(pa.string()),
             "negated_findings": pa.list_(pa.string()), "pneumonia_positive": pa.bool_()}
    for name in ANNOTATED_COLUMNS:
        array = pa.array(columns[name], type=types[name])
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, array)
        else:
            table = table.append_column(name, array)
    return table


def attribute_counts(texts: list[Any]) -> dict[str, dict[str, int]]:
    """Counts over many reports: per attribute (present / uncertain) and per finding state."""
    counts: dict[str, dict[str, int]] = {
        "present": {a: 0 for a in ATTRIBUTES}, "uncertain": {a: 0 for a in ATTRIBUTES},
        "findings": {f: 0 for f in FINDINGS}, "negated_findings": {f: 0 for f in FINDINGS},
        "reports": {"total": 0, "pneumonia_positive": 0, "with_attributes": 0},
    }
    for text in texts:
        r = extract_attributes(text)
        counts["reports"]["total"] += 1
        counts["reports"]["pneumonia_positive"] += int(r.pneumonia_positive)
        counts["reports"]["with_attributes"] += int(bool(r.attributes))
        for a in r.attributes:
            counts["present"][a] += 1
        for a in r.uncertain_attributes:
            counts["uncertain"][a] += 1
        for f in r.findings:
            counts["findings"][f] += 1
        for f in r.negated_findings:
            counts["negated_findings"][f] += 1
    return counts


def read_covid_notes(path: str) -> list[str]:
    """``clinical_notes`` of the COVID-19 image collection ``metadata.csv`` (empty ones skipped)."""
    import csv

    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
        return [row["clinical_notes"] for row in csv.DictReader(handle) if row.get("clinical_notes")]
