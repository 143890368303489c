"""``grounding pipeline`` end to end on the real samples in ../shared/data (plumbing, not quality).

- detector: the 16 RSNA challenge DICOMs (real labels, 6 with boxes), a few epochs;
- grounding: a MIMIC-CXR-JPG-layout tree built here from the COVID-19 collection's real images,
  each study's report its real ``clinical_notes``; evaluation: the same tree with an MS-CXR-style
  table made from the collection's real radiologist boxes (those patients leave grounding training);
- severity: the COVID-19 collection with the Brixia table (S-Global, 0-18);
- extra corpus: the Indiana reports, even ids only (odd ids are kept for evaluation).

The same images serve grounding and severity here (the sample is small): the figures mean nothing,
the test checks that every stage reads real files and writes its outputs. Skips without the data.
"""

from __future__ import annotations

import json
import os

import pytest
from real_samples import build_mimic_tree  # tests/ is on sys.path under pytest

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.shared_data]


@pytest.mark.timeout(900)  # ~110 s here; a hang must not eat the CI budget
def test_pipeline_on_real_samples(shared_data, tmp_path, ray_local, capsys):
    from grounding.config import load_config
    from grounding.data.dataset_roles import check_roots
    from grounding.distributed.pipeline import run_pipeline

    covid = shared_data / "covid"
    mimic, boxes, studies = build_mimic_tree(covid, tmp_path / "mimic")
    work = tmp_path / "work"
    sets = [
        f"datasets.detector.root={shared_data / 'rsna'}",
        f"datasets.grounding.root={mimic}",
        "datasets.evaluation.adapter=mimic", f"datasets.evaluation.root={mimic}",
        f"datasets.evaluation.boxes={boxes}",
        f"datasets.severity.root={covid}",
        f"datasets.severity.table={covid / 'annotations' / 'brixia-public-annotations.csv'}",
        "datasets.severity.column=S-Global", "datasets.severity.scale=18",
        f"datasets.extra_corpus.root={shared_data / 'indiana' / 'NLMCXR_reports.tgz'}",
        f"run.work_dir={work}", "run.run_id=real-samples", "run.storage_path=" + str(tmp_path / "ray_storage"),
        "detector.epochs=3", "detector.batch_size=4", "train.num_workers=1", "train.cpus_per_worker=0.5",
        "optim.max_epochs=2", "word_vectors.epochs=2", "word_vectors.min_count=2",
    ]
    cfg = load_config("smoke", sets)
    assert check_roots(cfg.datasets) == []
    os.environ.setdefault("GROUNDING_PSEUDONYM_SALT", "real-samples-test")
    state = run_pipeline(cfg)

    done = {s: json.loads((work / s / "_DONE.json").read_text()) for s in (
        "datasets", "attributes", "prepared", "word_vectors", "detector", "rois", "grounding",
        "grounding_no_cls", "evaluation", "severity")}
    counts = done["datasets"]["counts"]
    assert counts["detector"]["rows"] == 16  # every RSNA DICOM has its real label rows
    assert counts["evaluation"]["with_boxes"] > 0
    assert counts["grounding"]["rows"] == studies  # rows counts every study; the boxed patients' leave after
    assert 0 < counts["grounding"]["rows_of_evaluation_patients_dropped"] < studies
    prepared, rows = done["prepared"], done["datasets"]["rows"]
    assert prepared["written"] + prepared["quarantined"] == rows
    assert prepared["written"] >= 0.9 * rows  # real JPEG, PNG and JPEG-Baseline DICOM decoded
    # reports of the grounding role plus even-numbered Indiana reports (thousands)
    assert done["word_vectors"]["reports"] > 1000
    assert done["grounding"]["epochs"] >= 1 and (work / "grounding" / "model.pt").exists()
    report = (work / "evaluation" / "report.md").read_text()
    assert "IoU" in report
    assert done["severity"]["with_severity"] > 50  # Brixia scores matched to the collection's images
    assert (work / "severity" / "severity.md").exists()
    assert (work / "pipeline.json").exists()

    # a rerun resumes: every stage is skipped
    state = run_pipeline(cfg)
    assert all(v == 0.0 for v in state.timings.values())
    capsys.readouterr()
