"""Privacy canary (reliability.md section 6): header identity never reaches any output, log or checkpoint.

A synthetic chest DICOM carrying unique PatientName / PatientID / dates / institution / accession
strings is added to a tiny synthetic dataset three times: a site-B grounding training study, a site-B
held-out study with expert boxes, and a site-C (COVID layout) image with a severity score, each with
report text that also names the patient, the id and the dates. The pipeline stages run on it
(attributes -> prepare -> word vectors -> train-detector -> extract-rois -> train) and then the
commands themselves: evaluate, severity-cv, predict, tune and bench ingest. Then every file under the
run folder (Parquet decoded, zip members of checkpoints read, PNG text chunks decoded), Ray's session
logs, the captured log records and the test's stdout/stderr are searched for those strings: exact,
case-insensitive, the name parts, and the dates in the usual spellings. Any hit fails the test.

The inputs are not searched: the canary DICOMs, the site-C metadata.csv and the manifests' free-text
columns (``report_text`` is the manifest schema's input column, carried unchanged by the attributes
stage); every other column of those manifests is.
"""

from __future__ import annotations

import json
import logging
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
    if data[:8] == b"\x89PNG\r\n\x1a\n":  # zTXt/iTXt text chunks are deflated: decode them
        from PIL import Image

        with Image.open(path) as img:
            out.append(json.dumps({str(k): str(v) for k, v in img.info.items()}).encode())
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            out += [z.read(n) for n in z.namelist()]
    return out


def table_texts(path: Path, drop: tuple[str, ...]) -> list[bytes]:
    """A Parquet input table without its free-text columns (they are the input, not an output)."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    table = table.drop_columns([c for c in drop if c in table.column_names])
    return [json.dumps(table.to_pylist(), default=repr).encode(), str(table.schema.metadata).encode()]


def find_phi(roots: list[Path], skip: set[Path], extra: dict[str, bytes] | None = None,
             inputs: dict[Path, tuple[str, ...]] | None = None) -> list[str]:
    """Hits of any PHI pattern under ``roots`` (``skip``: input files; ``inputs``: tables searched
    without the named free-text columns) and in the ``extra`` texts."""
    pats = needles()
    inputs = {p.resolve(): cols for p, cols in (inputs or {}).items()}
    hits = []
    for root in roots:
        for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
            if path.resolve() in skip:
                continue
            try:
                texts = table_texts(path, inputs[path.resolve()]) if path.resolve() in inputs else file_texts(path)
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
    from PIL import Image, PngImagePlugin

    (tmp_path / "a.log").write_text("worker saw quazimundo\n")
    (tmp_path / "b.log").write_text("born 1937-05-12\n")
    (tmp_path / "ok.log").write_text("loss 0.193705121 step 2019082311\n")
    pq.write_table(pa.table({"x": ["zephyrine canary infirmary" * 50]}), tmp_path / "c.parquet", compression="zstd")
    torch.save({"s": "PIDCANARY8841207"}, tmp_path / "d.pt")
    info = PngImagePlugin.PngInfo()
    info.add_itxt("Comment", "ACCX55309127 " * 20, zip=True)  # deflated: not in the raw bytes
    Image.new("L", (4, 4)).save(tmp_path / "e.png", pnginfo=info)
    assert b"ACCX55309127" not in (tmp_path / "e.png").read_bytes()
    pq.write_table(pa.table({"report_text": ["Vexlorith"], "x": ["clean"]}), tmp_path / "in.parquet")
    pq.write_table(pa.table({"report_text": ["Vexlorith"], "x": ["Vexlorith"]}), tmp_path / "in2.parquet")
    inputs = {tmp_path / "in.parquet": ("report_text",), tmp_path / "in2.parquet": ("report_text",)}
    hits = find_phi([tmp_path], set(), inputs=inputs)
    assert {Path(h.split(":")[0]).name for h in hits} == {"a.log", "b.log", "c.parquet", "d.pt", "e.png",
                                                          "in2.parquet"}


# Report text of every canary study: the identity in free text as a careless report would carry it.
CANARY_REPORT = ("Patient Quazimundo Vexlorith (MRN PIDCANARY8841207, born 05/12/1937), seen at Zephyrine "
                 "Canary Infirmary on 2019-08-23, accession ACCX55309127. Dense consolidation in the right "
                 "lower lobe, consistent with pneumonia. Small right pleural effusion.")


def _add_canary(synth: Path) -> dict[str, str]:
    """The canary DICOM in three places, each with a report naming the patient.

    Site B grounding-train study (trained on), site B held-out study with expert boxes (evaluated),
    site C image with a severity score (severity-cv). Returns {role: image_id or path}.
    """
    import pandas as pd
    import pyarrow as pa

    from grounding.data.schema import pseudonym
    from grounding.data.storage import read_table, write_table
    from grounding.synth.dicom_writer import write_canary_dicom

    table = read_table(str(synth / "manifest.parquet"))
    rows = table.to_pylist()
    out, new = {}, []
    for role, purpose in (("train", "grounding"), ("eval", "eval")):
        path = synth / "site_B" / f"canary_{role}" / "image.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_canary_dicom(str(path), PHI, size=256)
        template = next(r for r in rows if r["site"] == "B" and r["purpose"] == purpose
                        and (purpose == "grounding" and r["split"] == "train" or r["boxes"]))
        row = dict(template, image_uri=str(path), image_id=pseudonym("image", f"canary-img-{role}", "synthetic"),
                   study_id=pseudonym("study", f"canary-study-{role}", "synthetic"),
                   patient_id=pseudonym("patient", "canary-patient", "synthetic"), width=0, height=0,
                   report_text=CANARY_REPORT)
        new.append(row)
        out[role] = row["image_id"]
        out[f"{role}_path"] = str(path)
    write_table(pa.Table.from_pylist(rows + new, schema=table.schema), str(synth / "manifest.parquet"))

    site_c = synth / "site_c"
    write_canary_dicom(str(site_c / "images" / "canary.dcm"), PHI, size=256)
    meta = pd.read_csv(site_c / "metadata.csv")
    extra = dict(meta.iloc[0].to_dict(), patientid=PHI["PatientID"], filename="canary.dcm",
                 clinical_notes=CANARY_REPORT, offset=0)
    pd.concat([meta, pd.DataFrame([extra])]).to_csv(site_c / "metadata.csv", index=False)
    sev = pd.read_csv(site_c / "severity.csv")
    pd.concat([sev, pd.DataFrame([{"filename": "canary.dcm", "score": 5}])]).to_csv(site_c / "severity.csv",
                                                                                    index=False)
    return out


def _tune_space(path: Path) -> Path:
    import yaml

    # val_loss: with this few studies the validation split can hold no attribute with both classes (AUC NaN)
    space = {"metric": "val_loss", "mode": "min", "num_samples": 2, "search_alg": "random", "seed": 0,
             "max_failures": 0, "scheduler": {"grace_period": 1, "reduction_factor": 2},
             "resources": {"driver_cpus": 0.01, "max_concurrent_trials": 1},
             "fixed": {"optim.max_epochs": 1, "train.num_workers": 1, "train.cpus_per_worker": 0.5,
                       "train.tensorboard": True},
             "params": {"optim.lr": {"loguniform": [1e-3, 1e-2]}}}
    path.write_text(yaml.safe_dump(space))
    return path


def _run_command(name: str, argv: list[str]) -> None:
    """One ``grounding <name>`` command in this process (its prints and log records are captured)."""
    import importlib

    rc = importlib.import_module(f"rayjobs.{name.replace('-', '_')}").main(argv)
    assert rc == 0, f"grounding {name} exited {rc}"


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(1800)
def test_canary_identity_reaches_no_output_log_or_checkpoint_of_any_command(tmp_path, ray_local, capfd, caplog):
    import pyarrow.parquet as pq

    from grounding.distributed import pipeline as rp
    from grounding.config import load_config
    from grounding.data.storage import read_table

    caplog.set_level(logging.DEBUG)  # every record any command logs, not only warnings
    work = tmp_path / "work"
    sets = [f"run.work_dir={work}", "train.num_workers=1", "train.cpus_per_worker=0.5", "optim.max_epochs=2",
            "synth.n_site_a=16", "synth.n_site_b=24", "synth.contact_per_site=0",
            # >128 px: the detector's P7 level must be larger than 1x1 (GroupNorm head)
            "data.image_size=160"]
    cfg = load_config("smoke", sets + ["run.run_id=canary"])
    cli = ["--config", "smoke"] + [a for kv in sets for a in ("--set", kv)]
    synth = work / "synth"
    synth.mkdir(parents=True)
    info = rp._synth(cfg, synth)
    canary = _add_canary(synth)
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
    model, detector = state.dir("grounding") / "model.pt", state.dir("detector") / "detector.pt"

    # the commands, as a user runs them, on the same Ray
    _run_command("evaluate", cli + ["--rois", str(state.dir("rois")), "--checkpoint", str(model),
                                    "--prepared", str(state.dir("prepared")), "--manifest", str(manifest),
                                    "--history", str(state.dir("grounding") / "metrics.jsonl"),
                                    "--out", str(work / "eval")])
    site_c = synth / "site_c"
    _run_command("severity-cv", cli + ["--dataset", "covid", "--root", str(site_c), "--severity-csv",
                                       str(site_c / "severity.csv"), "--score-max", "8", "--checkpoint", str(model),
                                       "--detector", str(detector), "--folds", "2", "--out", str(work / "severity")])
    _run_command("predict", [canary["eval_path"], str(site_c / "images" / "canary.dcm"), "--checkpoint", str(model),
                             "--detector", str(detector), "--device", "cpu", "--out", str(work / "predict")])
    _run_command("tune", cli + ["--space", str(_tune_space(tmp_path / "space.yaml")), "--rois",
                                str(state.dir("rois")), "--word-vectors", str(state.dir("word_vectors")),
                                "--name", "canary-tune"])
    _run_command("bench", cli + ["ingest", "--manifest", str(manifest), "--sizes", "1", "--out", str(work / "bench")])

    # the canary really went through every stage and command
    from grounding.data.prepared import read_prepared

    prepared_ids = read_prepared(str(state.dir("prepared"))).column("image_id").to_pylist()
    assert canary["train"] in prepared_ids and canary["eval"] in prepared_ids
    roi_ids = [i for f in sorted(state.dir("rois").rglob("rois-*.parquet"))
               for i in read_table(str(f), columns=["image_id"]).column("image_id").to_pylist()]
    assert canary["train"] in roi_ids and canary["eval"] in roi_ids
    assert model.exists()
    assert canary["eval"] in pq.read_table(work / "eval" / "predictions.parquet").column("image_id").to_pylist()
    oof = pq.read_table(work / "severity" / "severity_oof.parquet").to_pylist()
    assert any(abs(r["score"] - 5 / 8) < 1e-9 for r in oof)  # the canary's score (5) is the only 5/8
    predicted = json.loads((work / "predict" / "predictions.json").read_text())
    assert len(predicted) == 2 and all(p.get("boxes") for p in predicted), predicted
    assert list((work / "predict").glob("*.png"))
    tune_rows = pq.read_table(work / "tune" / "canary-tune" / "results.parquet").to_pylist()
    assert len(tune_rows) == 2
    assert list((work / "tune" / "canary-tune").rglob("events.out.tfevents.*"))  # TensorBoard files searched
    bench = json.loads((work / "bench" / "ingest.json").read_text())
    assert bench["runs"][0]["plain"]["images"] == manifest_rows(manifest)

    import ray

    session = Path(ray._private.worker._global_node.get_session_dir_path())
    out, err = capfd.readouterr()
    roots = [work, session / "logs"]
    inputs = {synth / "manifest.parquet": ("report_text",), manifest: ("report_text",)}
    skip = {Path(canary["train_path"]).resolve(), Path(canary["eval_path"]).resolve(),
            (site_c / "images" / "canary.dcm").resolve(), (site_c / "metadata.csv").resolve()}
    hits = find_phi(roots, skip=skip, inputs=inputs,
                    extra={"stdout": out.encode(), "stderr": err.encode(), "log records": caplog.text.encode()})
    assert hits == [], "\n".join(hits[:20])
    # Ray Train/Tune state is inside work/ray_storage (snapshot, checkpoints): make sure it was searched
    assert list((work / "ray_storage").rglob("checkpoint_manager_snapshot.json"))
    assert list((work / "ray_storage").rglob("experiment_state-*.json"))


def manifest_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.read_metadata(path).num_rows
