"""Real datasets in ``grounding pipeline``: which dataset plays which role (config section ``datasets``).

Roles: ``detector`` (RSNA boxes train the detector), ``grounding`` (MIMIC images + reports train the
grounding model), ``evaluation`` (held-out expert boxes: ChestX-ray8, or MIMIC images with an
MS-CXR-style box table), ``severity`` (COVID-19 collection + a severity table, Table 2) and the
optional ``extra_corpus`` (Indiana reports, word vectors only). Every root empty = synthetic data.

``check_roots`` looks at each root's layout without reading it all, so a wrong path fails in one
line before Ray starts. ``role_manifest`` joins the roles into one manifest; a patient with an
evaluation image is dropped from grounding training, so held-out boxes are never trained on.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from grounding.config import DatasetsConfig, GroundingConfig

EXPECTED = {
    "rsna": "the RSNA layout: stage_2_train_labels.csv (or stage_1_/example_train_labels.csv) and "
            "stage_{1,2}_train_images/*.dcm",
    "mimic": "the MIMIC-CXR layout: files/pXX/pXXXXXXXX/sXXXXXXXX/*.dcm or *.jpg (reports sXXXXXXXX.txt)",
    "chestxray8": "the ChestX-ray8 layout: BBox_List_2017.csv and images/*.png",
    "covid": "the COVID-19 collection layout: metadata.csv (filename, patientid) and images/",
    "indiana": "the Indiana reports: NLMCXR_reports.tgz or a folder of report *.xml files",
}


def _first(paths) -> Path | None:
    return next(iter(paths), None)


def _csv_header(path: Path) -> list[str]:
    import csv
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip() and not line.lstrip().startswith("#"):
                return [c.strip() for c in next(csv.reader([line]))]
    return []


def _layout_problem(adapter: str, root: Path) -> str:
    """What is wrong with ``root`` for ``adapter`` ("" = the layout looks right)."""
    from grounding.data.adapters.mimic import IMAGE_SUFFIXES
    from grounding.data.adapters.rsna import IMAGE_DIRS, LABEL_FILES

    if adapter == "rsna":
        if not any((root / n).is_file() for n in LABEL_FILES):
            return "no RSNA label file"
        if _first(p for d in IMAGE_DIRS for p in (root / d).glob("*.dcm")) is None:
            return "no DICOM in stage_1_train_images/ or stage_2_train_images/"
    elif adapter == "mimic":
        files = root / "files" if (root / "files").is_dir() else root
        if _first(p for p in files.glob("p*/p*/s*/*") if p.suffix.lower() in IMAGE_SUFFIXES) is None:
            return "no image under files/p*/p*/s*/"
    elif adapter == "chestxray8":
        if not any((root / n).is_file() for n in ("BBox_List_2017.csv", "BBox_List_2017.csv.gz")):
            return "no BBox_List_2017.csv"
        if _first((root / "images").glob("*.png")) is None:
            return "no PNG in images/"
    elif adapter == "covid":
        if not (root / "metadata.csv").is_file():
            return "no metadata.csv"
        missing = {"filename", "patientid"} - set(_csv_header(root / "metadata.csv"))
        if missing:
            return f"metadata.csv lacks column(s) {', '.join(sorted(missing))}"
        if not (root / "images").is_dir():
            return "no images/ folder"
    elif adapter == "indiana":
        if root.is_file():
            return "" if root.name.endswith((".tgz", ".tar.gz", ".tar")) else "not a .tgz archive"
        if _first(root.rglob("*.xml")) is None:
            return "no *.xml report"
    return ""


def _table_problem(path: str, columns: tuple[str, ...]) -> str:
    if not Path(path).is_file():
        return f"{path}: missing"
    header = _csv_header(Path(path))
    missing = [c for c in columns if c not in header]
    return f"{path}: lacks column(s) {', '.join(missing)}" if missing else ""


def check_roots(datasets: DatasetsConfig) -> list[str]:
    """One line per problem: the role, the path and what was expected. Empty = every set root looks right."""
    from grounding.data.adapters.mimic import BOX_COLUMNS

    errors = []
    for role in ("detector", "grounding", "evaluation", "severity", "extra_corpus"):
        spec = getattr(datasets, role)
        if not spec.root:
            continue
        key, root, expected = f"datasets.{role}", Path(spec.root), EXPECTED[spec.adapter]
        if not root.exists():
            errors.append(f"{key}.root: {root}: does not exist; expected {expected}")
            continue
        if root.is_dir() and _first(root.iterdir()) is None:
            errors.append(f"{key}.root: {root}: is empty; expected {expected}")
            continue
        problem = _layout_problem(spec.adapter, root)
        if problem:
            errors.append(f"{key}.root: {root}: {problem}; expected {expected}")
            continue
        if role == "evaluation" and spec.adapter == "mimic":
            problem = _table_problem(spec.boxes, BOX_COLUMNS)
            if problem:
                columns = ", ".join(BOX_COLUMNS)
                errors.append(f"{key}.boxes: {problem}; expected an MS-CXR-style CSV ({columns})")
        if role == "severity":
            problem = _table_problem(spec.table, ("filename", spec.column))
            if problem:
                errors.append(f"{key}.table: {problem}; expected a CSV with filename and {spec.column}")
    return errors


def role_manifest(cfg: GroundingConfig) -> tuple[pa.Table, dict]:
    """One manifest of the detector, grounding and evaluation roles, and each adapter's counts."""
    from grounding.data.adapters.chestxray8 import chestxray8_manifest
    from grounding.data.adapters.mimic import mimic_manifest
    from grounding.data.adapters.rsna import rsna_manifest

    d, split = cfg.datasets, {"split_fractions": cfg.data.split_fractions, "split_seed": cfg.data.split_seed}
    detector, detector_counts = rsna_manifest(d.detector.root, **split)
    grounding, grounding_counts = mimic_manifest(d.grounding.root, **split)
    if d.evaluation.adapter == "mimic":
        evaluation, eval_counts = mimic_manifest(d.evaluation.root, boxes=d.evaluation.boxes, boxed_only=True,
                                                 **split)
    else:
        evaluation, eval_counts = chestxray8_manifest(d.evaluation.root, **split)
    if evaluation.num_rows == 0:
        raise ValueError(f"datasets.evaluation: {d.evaluation.root}: no image with an expert box")
    held_out = pc.is_in(grounding["patient_id"], value_set=evaluation["patient_id"])
    kept = grounding.filter(pc.invert(held_out))
    if kept.num_rows == 0:
        raise ValueError(f"datasets.grounding: {d.grounding.root}: no image outside the evaluation patients")
    grounding_counts["rows_of_evaluation_patients_dropped"] = grounding.num_rows - kept.num_rows
    counts = {"detector": detector_counts, "grounding": grounding_counts, "evaluation": eval_counts}
    return pa.concat_tables([detector, kept, evaluation]), counts


def severity_manifest(cfg: GroundingConfig) -> tuple[pa.Table, dict]:
    """The severity role's images with their scores (normalised by ``scale``)."""
    from grounding.data.adapters.covid import covid_manifest

    s = cfg.datasets.severity
    return covid_manifest(s.root, s.table, s.column, s.scale, split_fractions=cfg.data.split_fractions,
                          split_seed=cfg.data.split_seed)


def corpus_texts(cfg: GroundingConfig, manifest_path: str) -> list[str]:
    """Word2Vec corpus: every report of the manifest (synthetic), or the grounding role's reports plus
    the extra corpus (real data). Held-out evaluation reports are left out of the real corpus."""
    from grounding.text import word_vectors
    from grounding.data.storage import read_table

    if not cfg.datasets.is_real():
        return word_vectors.corpus_texts(manifest_path, None, None)
    table = read_table(manifest_path, columns=["purpose", "report_text"])
    texts = [t for p, t in zip(table["purpose"].to_pylist(), table["report_text"].to_pylist())
             if p == "grounding" and t]
    extra = cfg.datasets.extra_corpus
    if extra.root:
        from grounding.text.indiana import iter_reports

        texts.extend(r.text for r in iter_reports(extra.root, extra.split) if r.text)
    return texts
