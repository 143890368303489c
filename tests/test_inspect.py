"""``grounding inspect``: one JSON line per file, quarantine is not fatal, no identifiers, PNG output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import badfiles
from rayjobs import inspect as inspect_job
from rayjobs.cli import main as cli_main


def _files(tmp_path: Path) -> list[tuple[Path, object]]:
    return [
        badfiles.make_canary(tmp_path),
        badfiles.make_monochrome1(tmp_path),
        badfiles.make_seg(tmp_path),
        badfiles.make_truncated(tmp_path),
        badfiles.make_empty(tmp_path),
    ]


def test_one_json_line_per_file_and_exit_zero(tmp_path: Path, capsys) -> None:
    made = _files(tmp_path)
    paths = [str(p) for p, _ in made] + [str(tmp_path / "missing.dcm")]
    assert inspect_job.main(paths) == 0
    out, err = capsys.readouterr()
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["file"] for r in records] == paths
    for record, (_, reason) in zip(records, made):
        if reason is None:
            assert record["status"] == "decoded"
            assert record["shape"] == [badfiles.HEIGHT, badfiles.WIDTH]
            assert record["min"] == 0.0 and record["max"] == 1.0 and 0 < record["mean"] < 1
            assert record["transfer_syntax"] == "1.2.840.10008.1.2.1" and record["modality"] == "CR"
            assert record["bits_allocated"] == 16 and record["photometric"] in ("MONOCHROME1", "MONOCHROME2")
        else:
            assert record == {"file": record["file"], "status": "quarantined", "reason": reason.value,
                              "message": record["message"]}
    assert records[-1]["reason"] == "unreadable"
    assert "2 decoded, 4 quarantined" in err


def test_output_holds_no_header_identifiers(tmp_path: Path, capsys) -> None:
    canary, _ = badfiles.make_canary(tmp_path)
    bad = badfiles.radiograph_dataset(
        badfiles.chest_like(), modality="CT",
        patient_name=badfiles.FAKE_PATIENT_NAME, patient_id=badfiles.FAKE_PATIENT_ID,
    )
    bad.save_as(tmp_path / "bad.dcm", enforce_file_format=True)
    assert badfiles.FAKE_PATIENT_ID.encode() in canary.read_bytes()  # the canary really carries it
    inspect_job.main([str(canary), str(tmp_path / "bad.dcm"), "--png", str(tmp_path / "png")])
    out, err = capsys.readouterr()
    for secret in (badfiles.FAKE_PATIENT_ID, "Zyxwvut", "Canaryname", "Canary General", "19010101"):
        assert secret not in out and secret not in err
    assert [json.loads(line)["status"] for line in out.splitlines()] == ["decoded", "quarantined"]


def test_png_output_is_the_normalised_image(tmp_path: Path, capsys) -> None:
    m1, _ = badfiles.make_monochrome1(tmp_path / "a")
    m1b, _ = badfiles.make_monochrome1(tmp_path / "b")  # same stem: must not overwrite
    png_dir = tmp_path / "png"
    assert inspect_job.main([str(m1), str(m1b), "--png", str(png_dir)]) == 0
    records = [json.loads(line) for line in capsys.readouterr()[0].splitlines()]
    assert sorted(p.name for p in png_dir.iterdir()) == ["monochrome1.png", "monochrome1_2.png"]
    image = np.asarray(Image.open(records[0]["png"]))
    assert image.shape == (badfiles.HEIGHT, badfiles.WIDTH) and image.dtype == np.uint8
    assert image[:5, :5].mean() < 50 and image[40:60, 38:42].mean() > 200  # MONOCHROME1: air dark

    inspect_job.main([str(m1), "--png", str(tmp_path / "prep"), "--prepared", "--set", "data.image_size=64"])
    capsys.readouterr()
    assert np.asarray(Image.open(tmp_path / "prep" / "monochrome1.png")).shape == (64, 64)


def test_config_overrides_reach_the_decoder(tmp_path: Path, capsys) -> None:
    good, _ = badfiles.make_good_16bit(tmp_path)
    assert cli_main(["inspect", str(good), "--set", "data.max_pixels=100"]) == 0
    record = json.loads(capsys.readouterr()[0])
    assert record["reason"] == "too_large"


def test_runs_as_module_without_ray(tmp_path: Path) -> None:
    good, _ = badfiles.make_good_8bit_jpeg(tmp_path)
    code = (
        "import sys; from rayjobs.inspect import main; rc = main(sys.argv[1:]); "
        "assert 'ray' not in sys.modules, 'inspect imported ray'; sys.exit(rc)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(good)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["transfer_syntax"] == "1.2.840.10008.1.2.4.50"
    assert "1 decoded, 0 quarantined" in proc.stderr


def test_bad_arguments_exit_nonzero() -> None:
    with pytest.raises(SystemExit) as err:
        inspect_job.main([])
    assert err.value.code == 2
