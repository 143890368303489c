"""Privacy canary (reliability.md section 6): header identity never reaches any output, log or checkpoint.

A synthetic chest DICOM carrying unique PatientName / PatientID / dates / institution / accession
strings is added to site B of a tiny synthetic dataset (with a report), and the pipeline stages run
on it: attributes -> prepare -> word vectors -> train-detector -> extract-rois -> train. Then every
file under the run folder (Parquet decoded, zip members of checkpoints read), Ray's session logs and
the test's captured stdout/stderr are searched for those strings: exact, case-insensitive, the name
parts, and the dates in the usual spellings. Any hit fails the test.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import pytest

PHI = {
    "PatientName": "Vexlorith^Quazimundo",
    "PatientID": "PIDCANARY8841207",
    "PatientBirthDate": "19370512",
    "StudyDate": "20190823",
    "InstitutionName": "Zephyrine Canary Infirmary",
    "AccessionNumber": "ACCX55309127",
}


def needles() -> list[re.Pattern]:
    """Case-insensitive patterns for every PHI value and the forms it could take in an output."""
    words = set()
    for key, value in PHI.items():
        if key.endswith("Date"):
            continue
        words.add(value)
        words.add(value.replace("^", " "))
        if key == "PatientName":  # family / given name on their own (common words like "Canary" are not)
            words.update(part for part in value.split("^") if part)
    pats = [re.compile(re.escape(w).encode(), re.IGNORECASE) for w in sorted(words)]
    for key in ("PatientBirthDate", "StudyDate"):
        d = PHI[key]
        y, m, day = d[:4], d[4:6], d[6:]
        for form in (d, f"{y}-{m}-{day}", f"{y}/{m}/{day}", f"{day}.{m}.{y}", f"{m}/{day}/{y}", f"{day}/{m}/{y}"):
            # digit boundaries: a float or a long number that merely contains the digits is not a date
            pats.append(re.compile(rb"(?<![0-9.])" + re.escape(form.encode()) + rb"(?![0-9])"))
    return pats


def file_texts(path: Path) -> list[bytes]:
    """What a reader of ``path`` can see: Parquet values decoded (pages may be compressed), zip members."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
            return [json.dumps(table.to_pylist(), default=repr).encode(), str(table.schema.metadata).encode()]
        except Exception:  # noqa: BLE001 - not readable as Parquet: search the raw bytes
            pass
    data = path.read_bytes()
    out = [data]
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            out += [z.read(n) for n in z.namelist()]
    return out


def find_phi(roots: list[Path], skip: set[Path], extra: dict[str, bytes] | None = None) -> list[str]:
    pats = needles()
    hits = []
    for root in roots:
        for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
            if path.resolve() in skip:
                continue
            try:
                texts = file_texts(path)
            except OSError:
                continue
            for text in texts:
                for pat in pats:
                    m = pat.search(text)
                    if m:
                        hits.append(f"{path}: {m.group(0)!r}")
    for name, text in (extra or {}).items():
        hits += [f"{name}: {p.pattern!r}" for p in pats if p.search(text)]
    return hits


def test_the_search_finds_what_it_must(tmp_path):
    """The scanner itself: plain, case-changed, Parquet-compressed, date-reformatted and zip hits."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    (tmp_path / "a.log").write_text("worker saw quazimundo\n")
    (tmp_path / "b.log").write_text("born 1937-05-12\n")
    (tmp_path / "ok.log").write_text("loss 0.193705121 step 2019082311\n")
    pq.write_table(pa.table({"x": ["zephyrine canary infirmary" * 50]}), tmp_path / "c.parquet", compression="zstd")
    torch.save({"s": "PIDCANARY8841207"}, tmp_path / "d.pt")
    hits = find_phi([tmp_path], set())
    assert {Path(h.split(":")[0]).name for h in hits} == {"a.log", "b.log", "c.parquet", "d.pt"}


def _add_canary(synth: Path) -> str:
    """Write the canary DICOM into site B and its manifest row (a grounding-train study with a report)."""
    import pyarrow as pa

    from grounding.schema import pseudonym
    from grounding.storage import read_table, write_table
    from grounding.synth.dicom_writer import write_canary_dicom

    path = synth / "site_B" / "canary" / "image.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_canary_dicom(str(path), PHI, size=256)
    table = read_table(str(synth / "manifest.parquet"))
    rows = table.to_pylist()
    template = next(r for r in rows if r["site"] == "B" and r["purpose"] == "grounding" and r["split"] == "train")
    row = dict(template, image_uri=str(path), image_id=pseudonym("image", "canary-img", "synthetic"),
               study_id=pseudonym("study", "canary-study", "synthetic"),
               patient_id=pseudonym("patient", "canary-patient", "synthetic"), width=0, height=0,
               report_text="Dense consolidation in the right lower lobe, consistent with pneumonia. "
                           "Small right pleural effusion.")
    write_table(pa.Table.from_pylist(rows + [row], schema=table.schema), str(synth / "manifest.parquet"))
    return row["image_id"]


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(900)
def test_canary_identity_reaches_no_output_log_or_checkpoint(tmp_path, ray_local, capfd):
    from grounding import ray_pipeline as rp
    from grounding.config import load_config
    from grounding.storage import read_table

    work = tmp_path / "work"
    cfg = load_config("smoke", [f"run.work_dir={work}", "run.run_id=canary", "train.num_workers=1",
                                "train.cpus_per_worker=0.5", "optim.max_epochs=2", "synth.n_site_a=16",
                                "synth.n_site_b=24", "synth.contact_per_site=0",
                                # >128 px: the detector's P7 level must be larger than 1x1 (GroupNorm head)
                                "data.image_size=160"])
    synth = work / "synth"
    synth.mkdir(parents=True)
    info = rp._synth(cfg, synth)
    canary_id = _add_canary(synth)
    (synth / rp.DONE).write_text(json.dumps(info))  # run_pipeline would skip regenerating it
    state = rp.PipelineState(cfg=cfg, work=work)

    rp._stage(state, "synth", lambda out: rp._synth(cfg, out), False)  # skipped: the marker is there
    rp._stage(state, "attributes", lambda out: rp._attributes(synth / "manifest.parquet", out), False)
    manifest = state.dir("attributes") / "manifest.parquet"
    rp._stage(state, "prepared", lambda out: rp._prepare(cfg, manifest, out), False)
    rp._stage(state, "word_vectors", lambda out: rp._word_vectors(cfg, manifest, out), False)
    rp._stage(state, "detector", lambda out: rp._train_detector(cfg, state.dir("prepared"), out, "canary-det"),
              False)
    rp._stage(state, "rois", lambda out: rp._extract_rois(cfg, state.dir("prepared"), state.dir("detector"), out),
              False)
    rp._stage(state, "grounding", lambda out: rp._train_grounding(cfg, state.dir("rois"), state.dir("word_vectors"),
                                                                   out, "canary-train"), False)

    # the canary really went through: prepared, in the ROI cache, and trained on
    from grounding.prepared import read_prepared

    assert canary_id in read_prepared(str(state.dir("prepared"))).column("image_id").to_pylist()
    roi_ids = [i for f in sorted(state.dir("rois").rglob("rois-*.parquet"))
               for i in read_table(str(f), columns=["image_id"]).column("image_id").to_pylist()]
    assert canary_id in roi_ids
    assert (state.dir("grounding") / "model.pt").exists()

    import ray

    session = Path(ray._private.worker._global_node.get_session_dir_path())
    out, err = capfd.readouterr()
    roots = [work, session / "logs"]
    hits = find_phi(roots, skip={(synth / "site_B" / "canary" / "image.dcm").resolve()},
                    extra={"stdout": out.encode(), "stderr": err.encode()})
    assert hits == [], "\n".join(hits[:20])
    # Ray Train/Tune state is inside work/ray_storage (snapshot, checkpoints): make sure it was searched
    assert list((work / "ray_storage").rglob("checkpoint_manager_snapshot.json"))
