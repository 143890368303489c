"""Indiana University / Open-i chest X-ray reports: reader, MeSH -> attribute mapping, scorer.

The archive ``NLMCXR_reports.tgz`` holds one XML file per report with FINDINGS and IMPRESSION text
and human-coded MeSH terms such as ``Opacity/lung/base/left/mild``: a head, then qualifiers
(anatomy, location, pattern, severity). We use them as a silver standard for the extractor.

Which MeSH terms count (``OPACITY_HEADS``): Opacity, Airspace Disease, Consolidation, Infiltrate
and Pneumonia, the five pneumonia-like findings of design.md 1.1. Not counted: Density, Lung/
hypoinflation, Pulmonary Atelectasis, Markings, Nodule (other findings), and any counted head whose
first qualifier is non-lung anatomy (``Opacity/ribs``, ``Opacity/adipose tissue``, ...).
Qualifiers map to attributes by ``MESH_TO_ATTRIBUTES``; unmapped qualifiers (lung, interstitial,
round, posterior, ...) are ignored. A report's gold set is the union over its counted terms.

Splits: report ``CXR<n>`` is dev when n is even, held out when n is odd (shared/data README).
Reports without FINDINGS and IMPRESSION text are skipped (counted in ``skipped``).
"""

from __future__ import annotations

import enum
import logging
import re
import time
import tarfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Iterable, Iterator

from grounding.text.vocabulary import ATTRIBUTES, LOCATION, SEVERITY

log = logging.getLogger(__name__)

OPACITY_HEADS = ("opacity", "airspace disease", "consolidation", "infiltrate", "pneumonia")
NON_LUNG_ANATOMY = frozenset({
    "ribs", "adipose tissue", "thoracic vertebrae", "mediastinum", "heart", "shoulder", "thorax",
    "pleura", "costophrenic angle", "sulcus", "pleural sinus", "spine", "diaphragm", "clavicle",
    "soft tissue", "breast", "abdomen", "trachea", "aorta", "paratracheal", "supracardiac",
})
MESH_TO_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "left": ("left",), "right": ("right",), "bilateral": ("bilateral",),
    "upper lobe": ("upper",), "middle lobe": ("middle",), "lower lobe": ("lower",),
    "base": ("basal",), "apex": ("apical",), "hilum": ("perihilar",),
    "retrocardiac": ("retrocardiac",), "lingula": ("lingular",), "peripheral": ("peripheral",),
    "diffuse": ("diffuse",), "focal": ("focal",), "patchy": ("patchy",),
    "multiple": ("multifocal",), "scattered": ("multifocal",), "multilobar": ("multifocal",),
    "streaky": ("streaky",), "hazy": ("hazy",),
    "mild": ("mild",), "small": ("mild",), "moderate": ("moderate",), "severe": ("severe",),
    "large": ("extensive",), "extensive": ("extensive",),
}
SPLITS = ("even", "odd", "all")


class Engine(str, enum.Enum):
    """Which extractor reads the reports."""

    RULES = "rules"  # grounding.text.report_rules (the project's)
    MEDSPACY = "medspacy"  # grounding.text.report_context: medspaCy TargetMatcher + ConText (optional extra)


@dataclass(frozen=True)
class IndianaReport:
    number: int  # n of CXR<n>
    text: str  # "FINDINGS: ...\n\nIMPRESSION: ..." (only the sections that exist)
    mesh: tuple[str, ...]  # major and minor MeSH terms as written


def in_split(number: int, split: str) -> bool:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split == "all" or (number % 2 == 0) == (split == "even")


def parse_report_xml(data: bytes, name: str = "<xml>") -> IndianaReport | None:
    """One report XML -> :class:`IndianaReport`; None (with a warning naming ``name``) if unusable."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as err:
        log.warning("%s: not well-formed XML (%s); skipped", name, err)
        return None
    uid = root.find("uId")
    match = re.fullmatch(r"CXR(\d+)", uid.get("id", "")) if uid is not None else None
    if match is None:
        match = re.search(r"(\d+)\.xml$", name)
    if match is None:
        log.warning("%s: no CXR<n> id; skipped", name)
        return None
    sections = {e.get("Label"): (e.text or "").strip() for e in root.iter("AbstractText")}
    parts = [f"{label}: {sections[label]}" for label in ("FINDINGS", "IMPRESSION") if sections.get(label)]
    mesh = tuple((e.text or "").strip() for e in root.iter() if e.tag in ("major", "minor") and e.text)
    return IndianaReport(int(match.group(1)), "\n\n".join(parts), mesh)


def iter_reports(path: str, split: str = "all") -> Iterator[IndianaReport]:
    """Reports of ``NLMCXR_reports.tgz`` (or a folder of XML files) in ``split``, by number."""
    from pathlib import Path

    reports = []
    if Path(path).is_dir():
        items: Iterable[tuple[str, bytes]] = ((str(p), p.read_bytes()) for p in Path(path).rglob("*.xml"))
    else:
        items = _tar_items(path)
    for name, data in items:
        report = parse_report_xml(data, name)
        if report is not None and in_split(report.number, split):
            reports.append(report)
    yield from sorted(reports, key=lambda r: r.number)


def _tar_items(path: str) -> Iterator[tuple[str, bytes]]:
    with tarfile.open(path, "r:*") as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".xml"):
                handle = tar.extractfile(member)
                if handle is not None:
                    yield member.name, handle.read()


def mesh_attributes(terms: Iterable[str]) -> set[str]:
    """Gold attributes from MeSH terms: union over counted heads of the mapped qualifiers."""
    out: set[str] = set()
    for term in terms:
        parts = [p.strip().lower() for p in term.split("/")]
        if parts[0] not in OPACITY_HEADS:
            continue
        if len(parts) > 1 and parts[1] in NON_LUNG_ANATOMY:
            continue
        for qualifier in parts[1:]:
            out.update(MESH_TO_ATTRIBUTES.get(qualifier, ()))
    return out


def mesh_has_finding(terms: Iterable[str]) -> bool:
    """Whether any counted (lung) opacity-like head is coded."""
    return any(
        (p := [x.strip().lower() for x in t.split("/")])[0] in OPACITY_HEADS
        and not (len(p) > 1 and p[1] in NON_LUNG_ANATOMY)
        for t in terms
    )


def _prf(tp: int, fp: int, fn: int) -> dict[str, float | int]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f, "tp": tp, "fp": fp, "fn": fn, "support": tp + fn}


def score_sets(predicted: list[set[str]], gold: list[set[str]]) -> dict:
    """Per-attribute and micro-averaged P/R/F1 of predicted vs gold attribute sets (one per report).

    Returns:
        ``{"per_attribute": {name: prf}, "micro": prf, "micro_location_severity": prf,
        "micro_location": prf, "micro_severity": prf, "reports": n}``; prf has precision, recall,
        f1, tp, fp, fn, support. Empty denominators give 0.0.
    """
    if len(predicted) != len(gold):
        raise ValueError(f"{len(predicted)} predictions for {len(gold)} gold sets")
    counts = {a: [0, 0, 0] for a in ATTRIBUTES}
    for pred, true in zip(predicted, gold):
        for a in ATTRIBUTES:
            if a in pred and a in true:
                counts[a][0] += 1
            elif a in pred:
                counts[a][1] += 1
            elif a in true:
                counts[a][2] += 1

    def micro(names: Iterable[str]) -> dict:
        return _prf(*(sum(counts[a][k] for a in names) for k in range(3)))

    return {
        "per_attribute": {a: _prf(*counts[a]) for a in ATTRIBUTES},
        "micro": micro(ATTRIBUTES),
        "micro_location_severity": micro(LOCATION + SEVERITY),
        "micro_location": micro(LOCATION),
        "micro_severity": micro(SEVERITY),
        "reports": len(gold),
    }


def format_table(result: dict) -> str:
    """A fixed-width table of :func:`score_sets` output."""
    lines = [f"{'attribute':<26}{'P':>7}{'R':>7}{'F1':>7}{'TP':>6}{'FP':>6}{'FN':>6}"]
    rows = list(result["per_attribute"].items()) + [
        ("micro (all 22)", result["micro"]),
        ("micro location+severity", result["micro_location_severity"]),
        ("micro location", result["micro_location"]),
        ("micro severity", result["micro_severity"]),
    ]
    for name, m in rows:
        lines.append(f"{name:<26}{m['precision']:7.3f}{m['recall']:7.3f}{m['f1']:7.3f}"
                     f"{m['tp']:6d}{m['fp']:6d}{m['fn']:6d}")
    return "\n".join(lines)


def extractor(engine: Engine | str):
    """``text -> ReportAttributes`` for ``engine``.

    Raises:
        ValueError: unknown engine name.
        grounding.text.report_context.MedspacyMissing: ``medspacy`` without medspaCy installed.
    """
    engine = Engine(engine)
    if engine is Engine.MEDSPACY:
        from grounding.text.report_context import ContextExtractor

        return ContextExtractor().extract
    from grounding.text.reports import extract_attributes

    return extract_attributes


def score_extractor(path: str, split: str, include_uncertain: bool = False,
                    engine: Engine | str = Engine.RULES) -> dict:
    """Run an extractor on every report of ``split`` and score it against MeSH.

    Args:
        path: ``NLMCXR_reports.tgz`` or a folder of its XML files.
        split: even (dev), odd (held out: report once, never tune on it) or all.
        include_uncertain: also count ``uncertain_attributes`` as predicted (the MeSH coders code
            hedged findings such as "atelectasis versus infiltrate").
        engine: ``rules`` (the project's) or ``medspacy`` (the comparison; needs the extra).

    Returns:
        :func:`score_sets` output plus ``split``, ``include_uncertain``, ``engine``, ``finding``
        (report-level P/R/F1 of "a pneumonia-like finding is present" vs a counted MeSH head),
        ``extract_seconds`` / ``extract_cpu_seconds`` (extraction only, not reading the archive) and
        ``reports_per_second`` (per CPU second).
    """
    extract = extractor(engine)
    reports = list(iter_reports(path, split))
    started, cpu_started = time.perf_counter(), time.process_time()
    results = [extract(report.text) for report in reports]
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    predicted, gold, found, coded = [], [], [], []
    for report, result in zip(reports, results):
        pred = set(result.attributes)
        if include_uncertain:
            pred |= set(result.uncertain_attributes)
        predicted.append(pred)
        gold.append(mesh_attributes(report.mesh))
        found.append(bool(result.findings) or (include_uncertain and bool(result.uncertain_findings)))
        coded.append(mesh_has_finding(report.mesh))
    out = score_sets(predicted, gold)
    tp = sum(f and c for f, c in zip(found, coded))
    out["finding"] = _prf(tp, sum(found) - tp, sum(coded) - tp)
    out["split"] = split
    out["include_uncertain"] = include_uncertain
    out["engine"] = Engine(engine).value
    out["extract_seconds"] = seconds
    out["extract_cpu_seconds"] = cpu
    # per CPU second: the figure that survives a shared, busy machine (wall time is kept too)
    out["reports_per_second"] = len(reports) / cpu if cpu > 0 else 0.0
    return out
