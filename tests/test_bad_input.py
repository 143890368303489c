"""Every command x {missing input, empty file, wrong kind of file, unwritable output folder} (issue 17.4).

Each case runs the job as ``python -m rayjobs.<command>`` in a subprocess and asserts: exit status 2,
exactly one stderr line, which names the flag and the path, and no traceback. No Ray log line is
tolerated: the checks must run before Ray starts (``grounding.data.input_checks``, ``rayjobs._cli``).

"Unwritable output folder" is a path under a regular *file* (``<file>/sub``): ``chmod`` cannot make a
folder unwritable for root (root ignores permissions), and the tests may run as root; a path under
a file cannot be created by anyone.

A representative set runs by default; the full table is marked ``slow``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayjobs import COMMANDS

ROOT = Path(__file__).resolve().parents[1]


# -- valid inputs (the smallest thing each check accepts) ----------------------------------------
def _parquet(path: Path, columns: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


def make_manifest(tmp: Path) -> Path:
    return _parquet(tmp / "manifest.parquet", {"image_id": ["a"], "image_uri": ["a.dcm"], "report_text": ["x"]})


def make_prepared(tmp: Path) -> Path:
    folder = tmp / "prepared"
    _parquet(folder / "images" / "part-0.parquet", {"image_id": ["a"], "pixels": [b"\0" * 4], "image_size": [2]})
    (folder / "summary.json").write_text("{}")
    return folder


def make_rois(tmp: Path) -> Path:
    return _parquet(tmp / "rois" / "part-0.parquet",
                    {"image_id": ["a"], "roi_features": [b"\0\0"], "feature_dim": [1]}).parent


def make_word_vectors(tmp: Path) -> Path:
    from grounding.text.vocabulary import ATTRIBUTES
    from grounding.text.word_vectors import write_attribute_vectors

    folder = tmp / "word_vectors"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    n = len(ATTRIBUTES)
    write_attribute_vectors(folder, rng.normal(size=(n, 4)).astype(np.float32),
                            rng.normal(size=(n, 4)).astype(np.float32), [f"w{i}" for i in range(n)])
    return folder


def make_checkpoint(tmp: Path, name: str = "model.pt") -> Path:
    path = tmp / name
    with zipfile.ZipFile(path, "w") as z:  # torch.save's container; its content is the loader's business
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    return path


def make_severity(tmp: Path) -> Path:
    return _parquet(tmp / "severity.parquet", {"image_id": ["a"], "patient_id": ["p"], "p_severe": [0.5],
                                               "p_mild": [0.5], "score": [0.1]})


def make_csv(tmp: Path) -> Path:
    (tmp / "scores.csv").write_text("filename,score\na.png,1\n")
    return tmp / "scores.csv"


def make_text(tmp: Path) -> Path:
    (tmp / "report.txt").write_text("Right lower lobe opacity.\n")
    return tmp / "report.txt"


def make_history(tmp: Path) -> Path:
    (tmp / "metrics.jsonl").write_text(json.dumps({"epoch": 0}) + "\n")
    return tmp / "metrics.jsonl"


def make_folder_with(tmp: Path, name: str, child: str) -> Path:
    folder = tmp / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / child).write_text("Normal chest.\n")
    return folder


def make_indiana(tmp: Path) -> Path:
    return make_folder_with(tmp, "indiana", "1.xml")


def make_texts(tmp: Path) -> Path:
    return make_folder_with(tmp, "texts", "1.txt")


def make_root(tmp: Path) -> Path:
    return make_folder_with(tmp, "dataset_root", "README")


def make_space(tmp: Path) -> Path:
    return ROOT / "tune_spaces" / "smoke.yaml"


# kind -> (maker, is_folder, wrong kind of file: "text" | "binary" | "file")
KINDS = {
    "manifest": (make_manifest, False, "text"),
    "prepared": (make_prepared, True, "file"),
    "rois": (make_rois, False, "text"),
    "word_vectors": (make_word_vectors, True, "file"),
    "checkpoint": (make_checkpoint, False, "text"),
    "severity": (make_severity, False, "text"),
    "csv": (make_csv, False, "binary"),
    "text": (make_text, False, "binary"),
    "history": (make_history, False, "binary"),
    "indiana": (make_indiana, True, "text"),
    "texts": (make_texts, True, "file"),
    "root": (make_root, True, "file"),
    "space": (make_space, False, "binary"),
    "config": (None, False, "binary"),
}


@dataclass
class Job:
    """A command, the flags that reach its checks, its inputs (flag -> kind) and its output flag."""

    command: str
    inputs: dict[str, str]
    out: str
    extra: list[str] = field(default_factory=list)
    out_is_file: bool = False
    given: dict[str, str] = field(default_factory=dict)  # flag (or FILE) -> kind: always valid, not in the table


JOBS = [
    Job("synth", {"--config": "config"}, "--out"),
    Job("inspect", {"--config": "config"}, "--png", given={"FILE": "texts"}),  # a bad FILE is quarantined, not refused
    Job("prepare", {"--manifest": "manifest"}, "--out"),
    Job("prepare", {"--root": "root"}, "--out", ["--dataset", "rsna"]),
    Job("attributes", {"--manifest": "manifest"}, "--out", out_is_file=True),
    Job("attributes", {"--covid-metadata": "csv"}, "", ["--counts"]),
    Job("attributes", {"FILE": "text"}, ""),
    Job("word-vectors", {"--manifest": "manifest", "--indiana": "indiana", "--texts": "texts"}, "--out"),
    Job("score-attributes", {"--indiana": "indiana"}, "--out", out_is_file=True),
    Job("train-detector", {"--prepared": "prepared"}, "--out"),
    Job("extract-rois", {"--prepared": "prepared", "--detector": "checkpoint"}, "--out"),
    Job("train", {"--rois": "rois", "--word-vectors": "word_vectors"}, "--work-dir"),
    Job("train", {"--prepared": "prepared", "--detector": "checkpoint", "--word-vectors": "word_vectors"},
        "--work-dir", ["--set", "train.mode=streaming"]),
    Job("tune", {"--space": "space", "--rois": "rois", "--word-vectors": "word_vectors"}, "--work-dir",
        ["--name", "t1"]),
    Job("predict", {"--checkpoint": "checkpoint", "--detector": "checkpoint"}, "--out", given={"FILE": "texts"}),
    Job("evaluate", {"--rois": "rois", "--checkpoint": "checkpoint", "--checkpoint-no-cls": "checkpoint",
                     "--prepared": "prepared", "--history": "history", "--manifest": "manifest"}, "--out"),
    Job("severity-cv", {"--predictions": "severity"}, "--out"),
    Job("severity-cv", {"--root": "root", "--severity-csv": "csv", "--checkpoint": "checkpoint",
                        "--detector": "checkpoint"}, "--out", ["--dataset", "covid"]),
    Job("pipeline", {"--config": "config"}, "--work-dir"),
    Job("config", {"--config": "config"}, "", ["--show"]),
    Job("bench", {"--manifest": "manifest"}, "--out", ["ingest"]),
    Job("bench", {"--rois": "rois", "--word-vectors": "word_vectors", "--prepared": "prepared",
                  "--detector": "checkpoint"}, "--out", ["train"]),
]


def _bad(tmp: Path, kind: str, case: str) -> Path:
    maker, is_folder, wrong = KINDS[kind]
    bad = tmp / "bad"
    bad.mkdir(exist_ok=True)
    if case == "missing":
        return bad / f"missing-{kind}"
    if case == "empty":
        path = bad / f"empty-{kind}"
        path.mkdir() if is_folder else path.write_bytes(b"")
        return path
    path = bad / f"wrong-{kind}"  # wrong kind
    if wrong == "text" or wrong == "file":
        path.write_text("this is not the right kind of file\n")
    else:  # binary where text/YAML is expected: a Parquet file
        pq.write_table(pa.table({"x": [1]}), path)
    return path


def _argv(job: Job, tmp: Path, bad_flag: str | None, bad_path: Path | None, out: Path | None) -> list[str]:
    args: list[str] = []
    positional: list[str] = []
    for flag, kind in {**job.given, **job.inputs}.items():
        if flag == bad_flag:
            value = str(bad_path)
        elif kind == "config":
            continue  # optional: only given when it is the bad input
        else:
            value = str(KINDS[kind][0](tmp))
        if flag == "FILE":
            positional.append(value)
        else:
            args += [flag, value]
    if job.out:
        default_out = tmp / ("out.parquet" if job.out_is_file else "out")
        args += [job.out, str(out or default_out)]
    return [*job.extra, *positional, *args]


@dataclass(frozen=True)
class Case:
    id: str
    job: Job
    case: str
    flag: str
    kind: str = ""


def _cases() -> list[Case]:
    cases = []
    for job in JOBS:
        for flag, kind in job.inputs.items():
            for case in ("missing", "empty", "wrong_kind"):
                cases.append(Case(f"{job.command}:{flag}:{case}", job, case, flag, kind))
        if job.out:
            cases.append(Case(f"{job.command}:{job.out}:unwritable", job, "unwritable", job.out))
    seen: dict[str, int] = {}
    unique = []
    for c in cases:
        seen[c.id] = seen.get(c.id, 0) + 1
        unique.append(c if seen[c.id] == 1 else Case(f"{c.id}#{seen[c.id]}", c.job, c.case, c.flag, c.kind))
    return unique


CASES = _cases()
FAST = {  # one or two per kind of check and per command family; the rest run in the slow suite
    "prepare:--manifest:missing", "prepare:--manifest:empty", "prepare:--manifest:wrong_kind",
    "prepare:--out:unwritable", "synth:--config:wrong_kind", "synth:--out:unwritable", "inspect:--png:unwritable",
    "attributes:FILE:empty", "word-vectors:--indiana:wrong_kind", "score-attributes:--out:unwritable",
    "train-detector:--prepared:empty", "extract-rois:--detector:wrong_kind", "train:--word-vectors:wrong_kind",
    "train:--work-dir:unwritable", "tune:--space:wrong_kind", "predict:--checkpoint:empty",
    "evaluate:--rois:missing", "severity-cv:--predictions:wrong_kind", "pipeline:--work-dir:unwritable",
    "bench:--rois:missing",
}


def run_job(command: str, argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "RAY_ADDRESS": ""}
    module = "rayjobs." + command.replace("-", "_")
    return subprocess.run([sys.executable, "-m", module, *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def assert_one_line(result: subprocess.CompletedProcess, *names: str) -> str:
    assert result.returncode == 2, f"rc {result.returncode}; stderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{result.stderr}"
    for name in names:
        assert name in lines[0], f"{name!r} not in {lines[0]!r}"
    return lines[0]


def _check(case: Case, tmp_path: Path) -> None:
    tmp = tmp_path / "inputs"
    tmp.mkdir()
    if case.case == "unwritable":
        blocker = tmp / "a_file"
        blocker.write_text("a regular file: nothing can be created under it\n")
        out = blocker / "sub"
        argv = _argv(case.job, tmp, None, None, out)
        line = assert_one_line(run_job(case.job.command, argv, tmp_path), case.flag, str(out))
        assert "a_file is a file" in line  # the guard for this case, not the later write-access test
        return
    bad = _bad(tmp, case.kind, case.case)
    argv = _argv(case.job, tmp, case.flag, bad, None)
    line = assert_one_line(run_job(case.job.command, argv, tmp_path), case.flag, str(bad))
    problem = line.split(f"{bad}: ", 1)[1]
    if case.case == "missing":  # each case is caught by its own guard, not by a later one
        assert problem.startswith("no such file"), line
    elif case.case == "empty":
        assert problem.startswith("empty"), line
    else:
        assert not problem.startswith(("no such file", "empty")), line


@pytest.mark.parametrize("case", [c for c in CASES if c.id in FAST], ids=lambda c: c.id)
def test_bad_input_fast(case, tmp_path):
    _check(case, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in CASES if c.id not in FAST], ids=lambda c: c.id)
def test_bad_input_full_table(case, tmp_path):
    _check(case, tmp_path)


def test_table_covers_every_command():
    assert {j.command for j in JOBS} == set(COMMANDS)
    assert FAST <= {c.id for c in CASES}


@pytest.mark.parametrize("overrides,key", [(["--set", "data.imagesize=256"], "data.imagesize"),
                                           (["--set", "data.image_size=-3"], "data.image_size"),
                                           (["--set", "noequals"], "noequals")])
def test_config_errors_are_one_line(overrides, key, tmp_path):
    result = run_job("prepare", ["--manifest", str(make_manifest(tmp_path)), *overrides], tmp_path)
    assert_one_line(result, key)


def test_grounding_entry_point_prepare_missing_manifest(tmp_path):
    """The command of issue 15: `grounding prepare --manifest missing.parquet` used to end in a traceback."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "rayjobs", "prepare", "--manifest", "missing.parquet"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert_one_line(result, "--manifest", "missing.parquet", "no such file")


def test_wrong_columns_are_named(tmp_path):
    """A Parquet file of the wrong kind (a manifest given as the ROI cache) names the missing columns."""
    from grounding.data.input_checks import InputError, require_rois

    with pytest.raises(InputError, match=r"--rois .*manifest.parquet: .*roi_features, feature_dim"):
        require_rois("--rois", str(make_manifest(tmp_path)))
