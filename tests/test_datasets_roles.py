"""Real datasets by role (config ``datasets``, grounding.data.dataset_roles): config rules, root checks that
fail in one line before Ray, the MIMIC JPG tree + MS-CXR-style boxes, the joined manifest, the corpus,
and the pipeline-real RayJob. Fake trees only (file names matter here, not pixels)."""

from __future__ import annotations

import importlib.util
import shlex
import sys
from pathlib import Path

import pandas as pd
import pytest

from grounding.data.adapters.mimic import load_box_table, mimic_manifest
from grounding.config import ConfigError, GroundingConfig, load_config
from grounding.data.dataset_roles import check_roots, corpus_texts, role_manifest, severity_manifest

ROOT = Path(__file__).resolve().parents[1]
RSNA_IDS = ["aaaa-1", "aaaa-2", "aaaa-3"]


# -- fake trees -------------------------------------------------------------------------------------
def make_rsna(base: Path) -> Path:
    root = base / "rsna"
    (root / "stage_1_train_images").mkdir(parents=True)
    for pid in RSNA_IDS:
        (root / "stage_1_train_images" / f"{pid}.dcm").write_bytes(b"x")
    pd.DataFrame({"patientId": RSNA_IDS, "x": [10.0, None, None], "y": [20.0, None, None],
                  "width": [30.0, None, None], "height": [40.0, None, None], "Target": [1, 0, 0]}) \
        .to_csv(root / "stage_2_train_labels.csv", index=False)
    return root


def make_mimic(base: Path, studies: dict[tuple[str, str], tuple[str, str]]) -> Path:
    """``{(patient, study): (dicom_id + suffix, report)}`` -> a MIMIC-CXR-JPG-like tree."""
    root = base / "mimic"
    for (patient, study), (image, report) in studies.items():
        folder = root / "files" / patient[:3] / patient / study
        folder.mkdir(parents=True, exist_ok=True)
        (folder / image).write_bytes(b"x")
        (folder.parent / f"{study}.txt").write_text(report)
    return root


MIMIC = {
    ("p10000001", "s50000001"): ("d1.jpg", "FINDINGS: Right lower lobe consolidation."),
    ("p10000002", "s50000002"): ("d2.jpg", "IMPRESSION: Patchy left basilar opacity."),
    ("p10000003", "s50000003"): ("d3.dcm", "FINDINGS: No focal consolidation."),
    ("p10000003", "s50000004"): ("d4.png", "FINDINGS: Mild bilateral opacities."),
}


def make_boxes(path: Path, rows: list[tuple]) -> Path:
    pd.DataFrame(rows, columns=["dicom_id", "category_name", "x", "y", "w", "h"]).to_csv(path, index=False)
    return path


def make_covid(base: Path) -> tuple[Path, Path]:
    root = base / "covid"
    (root / "images").mkdir(parents=True)
    for name in ("a.jpg", "b.png"):
        (root / "images" / name).write_bytes(b"x")
    pd.DataFrame({"patientid": [1, 2], "offset": [0, 3], "view": ["PA", "AP"], "modality": ["X-ray"] * 2,
                  "folder": ["images"] * 2, "filename": ["a.jpg", "b.png"], "finding": ["Pneumonia"] * 2,
                  "clinical_notes": ["note a", "note b"]}).to_csv(root / "metadata.csv", index=False)
    table = root / "brixia.csv"
    pd.DataFrame({"filename": ["a.jpg", "b.png"], "S-Global": [9, 18]}).to_csv(table, index=False)
    return root, table


def make_chestxray8(base: Path) -> Path:
    root = base / "nih"
    (root / "images").mkdir(parents=True)
    (root / "images" / "00000001_000.png").write_bytes(b"x")
    (root / "BBox_List_2017.csv").write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
                                              "00000001_000.png,Pneumonia,10,20,30,40\n")
    return root


def _xml(n: int, findings: str) -> bytes:
    return (f'<eCitation><uId id="CXR{n}"/><Abstract><AbstractText Label="FINDINGS">{findings}</AbstractText>'
            '</Abstract></eCitation>').encode()


def real_config(base: Path, evaluation: str = "mimic", **extra) -> GroundingConfig:
    covid, table = make_covid(base)
    sets = [f"datasets.detector.root={make_rsna(base)}", f"datasets.grounding.root={make_mimic(base, MIMIC)}",
            f"datasets.severity.root={covid}", f"datasets.severity.table={table}",
            "datasets.severity.column=S-Global", "datasets.severity.scale=18",
            "data.split_fractions=[0.5,0.25,0.25]"]
    if evaluation == "mimic":
        boxes = make_boxes(base / "ms_cxr.csv", [("d2", "Pneumonia", 5, 5, 10, 10),
                                                 ("d3", "Cardiomegaly", 1, 1, 2, 2)])
        sets += [f"datasets.evaluation.root={base / 'mimic'}", "datasets.evaluation.adapter=mimic",
                 f"datasets.evaluation.boxes={boxes}"]
    else:
        sets += [f"datasets.evaluation.root={make_chestxray8(base)}"]
    return load_config(None, sets + [f"{k}={v}" for k, v in extra.items()])


# -- config -----------------------------------------------------------------------------------------
def test_default_is_synthetic_and_round_trips():
    cfg = GroundingConfig()
    assert not cfg.datasets.is_real()
    assert GroundingConfig.from_dict(cfg.to_dict()) == cfg


def test_one_root_alone_names_the_missing_roles():
    with pytest.raises(ConfigError, match=r"datasets\.grounding\.root: .*missing: grounding, evaluation, severity"):
        load_config(None, ["datasets.detector.root=/data/rsna"])


@pytest.mark.parametrize("key, value, message", [
    ("datasets.detector.adapter", "mimic", "must be rsna"),
    ("datasets.evaluation.adapter", "covid", "must be chestxray8 or mimic"),
    ("datasets.extra_corpus.split", "odd", "must be even or all"),
    ("datasets.severity.scale", "0", "must be > 0"),
    ("datasets.severity.rootx", "/x", "unknown config key"),
])
def test_config_rejects_bad_role_values(key, value, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [f"{key}={value}"])


def test_mimic_evaluation_needs_a_box_table(tmp_path):
    with pytest.raises(ConfigError, match=r"datasets\.evaluation\.boxes"):
        load_config(None, ["datasets.evaluation.adapter=mimic", "datasets.evaluation.root=/m"])


def test_real_profile_names_every_role():
    cfg = load_config("real")
    assert cfg.datasets.is_real()
    assert all(getattr(cfg.datasets, r).root for r in ("detector", "grounding", "evaluation", "severity"))


# -- root checks ------------------------------------------------------------------------------------
def test_good_roots_pass(tmp_path):
    assert check_roots(real_config(tmp_path).datasets) == []
    assert check_roots(real_config(tmp_path / "b", evaluation="chestxray8").datasets) == []


@pytest.mark.parametrize("role, breaks, problem", [
    ("detector", lambda r: r.rename(r.with_name("gone")), "does not exist"),
    ("detector", lambda r: [p.unlink() for p in r.rglob("*.csv")], "no RSNA label file"),
    ("grounding", lambda r: __import__("shutil").rmtree(r / "files"), "is empty"),
    ("severity", lambda r: (r / "metadata.csv").unlink(), "no metadata.csv"),
])
def test_each_bad_root_gives_one_line_naming_role_path_and_layout(tmp_path, role, breaks, problem):
    cfg = real_config(tmp_path)
    root = Path(getattr(cfg.datasets, role).root)
    breaks(root)
    errors = check_roots(cfg.datasets)
    mine = [e for e in errors if e.startswith(f"datasets.{role}.root: ")]
    assert len(mine) == 1 and "\n" not in mine[0]
    assert str(root) in mine[0] and problem in mine[0] and "expected the" in mine[0]


def test_wrong_layout_for_the_adapter(tmp_path):
    # a COVID collection given as the grounding (MIMIC) root
    cfg = real_config(tmp_path, **{"datasets.grounding.root": str(tmp_path / "covid")})
    [error] = check_roots(cfg.datasets)
    assert error.startswith(f"datasets.grounding.root: {tmp_path / 'covid'}: no image under files/")
    assert "MIMIC-CXR layout" in error


def test_table_columns_are_checked(tmp_path):
    cfg = real_config(tmp_path, **{"datasets.severity.column": "geographic_mean"})
    [error] = check_roots(cfg.datasets)
    assert error.startswith("datasets.severity.table: ") and "geographic_mean" in error
    pd.DataFrame({"dicom_id": ["d2"], "x": [1]}).to_csv(tmp_path / "bad_boxes.csv", index=False)
    cfg = real_config(tmp_path / "b", **{"datasets.evaluation.boxes": str(tmp_path / "bad_boxes.csv")})
    [error] = check_roots(cfg.datasets)
    assert error.startswith("datasets.evaluation.boxes: ") and "y, w, h" in error


def test_extra_corpus_root_checked(tmp_path):
    (tmp_path / "indiana").mkdir()
    (tmp_path / "indiana" / "notes.txt").write_text("x")
    cfg = real_config(tmp_path, **{"datasets.extra_corpus.root": str(tmp_path / "indiana")})
    [error] = check_roots(cfg.datasets)
    assert error.startswith("datasets.extra_corpus.root: ") and "no *.xml report" in error


def test_pipeline_cli_exits_2_before_ray(tmp_path, monkeypatch, capsys):
    import grounding.distributed.runtime as runtime
    from rayjobs import pipeline

    def no_ray(*_a, **_k):
        raise AssertionError("Ray started despite a bad root")

    monkeypatch.setattr(runtime, "init_ray", no_ray)
    sets = ["datasets.detector.root=" + str(tmp_path / "nope"), "datasets.grounding.root=" + str(tmp_path),
            "datasets.evaluation.root=" + str(tmp_path / "nih"), "datasets.severity.root=" + str(tmp_path / "c"),
            "datasets.severity.table=" + str(tmp_path / "t.csv")]
    argv = ["--work-dir", str(tmp_path / "run")] + [a for s in sets for a in ("--set", s)]
    assert pipeline.main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "datasets.detector.root", "datasets.grounding.root", "datasets.evaluation.root", "datasets.severity.root"]
    assert "is empty" in lines[1] and "Traceback" not in "\n".join(lines)
    assert not (tmp_path / "run").exists()


# -- MIMIC JPG tree and box table -------------------------------------------------------------------
def test_mimic_reads_jpg_dcm_png_and_boxes(tmp_path):
    root = make_mimic(tmp_path, MIMIC)
    boxes = make_boxes(tmp_path / "b.csv", [("d2", "Pneumonia", 5, 5, 10, 10), ("d2", "Lung Opacity", 0, 0, 4, 4),
                                           ("d3", "Cardiomegaly", 1, 1, 2, 2), ("zz", "Pneumonia", 1, 1, 2, 2)])
    table, stats = mimic_manifest(str(root), boxes=str(boxes))
    rows = {Path(r["image_uri"]).stem: r for r in table.to_pylist()}
    assert set(rows) == {"d1", "d2", "d3", "d4"}
    assert rows["d2"]["purpose"] == "eval" and rows["d2"]["has_boxes"]
    assert rows["d2"]["boxes"] == [5.0, 5.0, 15.0, 15.0, 0.0, 0.0, 4.0, 4.0]  # xywh -> xyxy
    assert rows["d3"]["purpose"] == "grounding" and not rows["d3"]["has_boxes"]  # cardiomegaly: not counted
    assert stats["with_boxes"] == 1 and stats["box_images_not_found"] == 1
    boxed, stats = mimic_manifest(str(root), boxes=str(boxes), boxed_only=True)
    assert boxed.num_rows == 1 and stats["images_without_boxes_skipped"] == 3


def test_box_table_without_columns_is_an_error(tmp_path):
    pd.DataFrame({"dicom_id": ["d"], "x": [1]}).to_csv(tmp_path / "b.csv", index=False)
    with pytest.raises(ValueError, match="missing y, w, h"):
        load_box_table(str(tmp_path / "b.csv"))


# -- the joined manifest, severity and corpus ---------------------------------------------------------
def test_role_manifest_holds_out_evaluation_patients(tmp_path):
    cfg = real_config(tmp_path)
    table, counts = role_manifest(cfg)
    rows = table.to_pylist()
    by_purpose = {p: [r for r in rows if r["purpose"] == p] for p in ("detector", "grounding", "eval")}
    assert len(by_purpose["detector"]) == 3 and sum(bool(r["boxes"]) for r in by_purpose["detector"]) == 1
    assert len(by_purpose["eval"]) == 1 and by_purpose["eval"][0]["has_boxes"]
    eval_patients = {r["patient_id"] for r in by_purpose["eval"]}
    assert not eval_patients & {r["patient_id"] for r in by_purpose["grounding"]}
    assert len(by_purpose["grounding"]) == 3  # d1, d3, d4 (d2's patient held out)
    assert counts["grounding"]["rows_of_evaluation_patients_dropped"] == 1


def test_role_manifest_with_chestxray8(tmp_path):
    table, counts = role_manifest(real_config(tmp_path, evaluation="chestxray8"))
    evaluation = [r for r in table.to_pylist() if r["purpose"] == "eval"]
    assert [r["dataset"] for r in evaluation] == ["chestxray8"] and evaluation[0]["boxes"] == [10, 20, 40, 60]
    assert counts["grounding"]["rows_of_evaluation_patients_dropped"] == 0


def test_severity_manifest_uses_table_column_and_scale(tmp_path):
    table, counts = severity_manifest(real_config(tmp_path))
    assert sorted(table.column("severity").to_pylist()) == [0.5, 1.0]
    assert counts["with_severity"] == 2


def test_corpus_is_grounding_reports_plus_even_indiana(tmp_path):
    from grounding.data.storage import write_table

    indiana = tmp_path / "indiana"
    indiana.mkdir()
    (indiana / "2.xml").write_bytes(_xml(2, "Right lower lobe consolidation."))
    (indiana / "3.xml").write_bytes(_xml(3, "Held out left opacity."))
    cfg = real_config(tmp_path, **{"datasets.extra_corpus.root": str(indiana)})
    table, _ = role_manifest(cfg)
    write_table(table, str(tmp_path / "m.parquet"))
    texts = corpus_texts(cfg, str(tmp_path / "m.parquet"))
    assert len(texts) == 4  # 3 grounding reports (the eval study's report left out) + Indiana CXR2
    assert not any("Patchy left basilar" in t for t in texts)  # d2: evaluation study
    assert any(t == "FINDINGS: Right lower lobe consolidation." for t in texts)
    assert not any("Held out" in t for t in texts)


def test_stage_name_follows_the_config(tmp_path):
    from grounding.distributed.pipeline import data_stage

    assert data_stage(GroundingConfig()) == "synth"
    assert data_stage(real_config(tmp_path)) == "datasets"


# -- the RayJob -------------------------------------------------------------------------------------
def _render():
    if "cluster_render" in sys.modules:  # tests/test_manifests.py loads it under this name too
        return sys.modules["cluster_render"]
    spec = importlib.util.spec_from_file_location("cluster_render", ROOT / "cluster" / "render.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["cluster_render"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_pipeline_real_rayjob_runs_the_pipeline_with_the_real_profile():
    render = _render()
    [job] = [j for j in render.JOBS if j.name == "pipeline-real"]
    argv = shlex.split(job.entrypoint())
    assert argv[:5] == ["python", "-m", "rayjobs.pipeline", "--config", "real"]
    assert argv.count("--work-dir") == 1 and "run.run_id=real-v1" in argv


def test_entrypoint_quotes_arguments():
    render = _render()
    job = render.Job("pipeline", ("--work-dir", "/mnt/runs/with space"), run_id="x",
                     sets=("datasets.severity.column=S Global",))
    argv = shlex.split(job.entrypoint())
    assert "/mnt/runs/with space" in argv and "datasets.severity.column=S Global" in argv


# -- the real samples (../shared/data): the datasets stage alone, no Ray ----------------------------
def test_role_manifest_on_real_samples(shared_data, tmp_path):
    from real_samples import build_mimic_tree

    covid = shared_data / "covid"
    mimic, boxes, studies = build_mimic_tree(covid, tmp_path / "mimic")
    cfg = load_config(None, [
        f"datasets.detector.root={shared_data / 'rsna'}", f"datasets.grounding.root={mimic}",
        "datasets.evaluation.adapter=mimic", f"datasets.evaluation.root={mimic}", f"datasets.evaluation.boxes={boxes}",
        f"datasets.severity.root={covid}",
        f"datasets.severity.table={covid / 'annotations' / 'brixia-public-annotations.csv'}",
        "datasets.severity.column=S-Global", "datasets.severity.scale=18",
        f"datasets.extra_corpus.root={shared_data / 'indiana' / 'NLMCXR_reports.tgz'}"])
    assert check_roots(cfg.datasets) == []
    table, counts = role_manifest(cfg)
    purposes = table.column("purpose").to_pylist()
    assert purposes.count("detector") == 16 == counts["detector"]["rows"]
    assert counts["detector"]["labels_without_image"] > 0  # the full label file, 16 images on disk
    assert 0 < purposes.count("eval") == counts["evaluation"]["with_boxes"]
    assert purposes.count("grounding") + counts["grounding"]["rows_of_evaluation_patients_dropped"] == studies
    assert all(Path(u).exists() for u in table.column("image_uri").to_pylist())
    severity, severity_counts = severity_manifest(cfg)
    scores = [s for s in severity.column("severity").to_pylist() if s is not None]
    assert len(scores) == severity_counts["with_severity"] > 50 and 0 <= min(scores) <= max(scores) <= 1
    path = tmp_path / "m.parquet"
    from grounding.data.storage import write_table

    write_table(table, str(path))
    texts = corpus_texts(cfg, str(path))
    assert len(texts) > purposes.count("grounding") + 1000  # + the even Indiana reports
