"""The medspaCy ConText comparison engine (grounding.text.report_context) and the --engine switch.

The engine tests skip without medspaCy (an optional extra, not in CI); the missing-extra path is
tested everywhere by hiding the module.
"""

from __future__ import annotations

import sys

import pytest

from grounding.text import indiana
from grounding.text.report_context import MedspacyMissing, build_pipeline
from grounding.text.reports import ReportAttributes


def test_missing_medspacy_is_one_line_and_exit_2(monkeypatch, tmp_path, capsys):
    from rayjobs.score_attributes import main

    monkeypatch.setitem(sys.modules, "medspacy", None)  # import medspacy -> ImportError
    with pytest.raises(MedspacyMissing, match="optional extra"):
        build_pipeline()
    (tmp_path / "2.xml").write_text("<eCitation/>")
    assert main(["--indiana", str(tmp_path), "--engine", "medspacy"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("score-attributes: --engine medspacy:") and "\n" not in err


def test_missing_archive_is_one_line_and_exit_2(tmp_path, capsys):
    from rayjobs.score_attributes import main

    assert main(["--indiana", str(tmp_path / "nope.tgz")]) == 2
    assert "--indiana" in capsys.readouterr().err


def test_unknown_engine_is_rejected():
    with pytest.raises(ValueError):
        indiana.extractor("negex")


@pytest.fixture(scope="module")
def context_extractor():
    pytest.importorskip("medspacy", reason="medspaCy is an optional extra (pip install '.[nlp]')")
    from grounding.text.report_context import ContextExtractor

    return ContextExtractor()


@pytest.mark.parametrize("text,present,negated,uncertain", [
    # Indiana CXR104: attributes attached to the opacity, "or" hedges nothing for ConText
    ("There are minimal XXXX left basilar opacities, XXXX subsegmental atelectasis or scarring.",
     ("left", "basal", "mild"), (), ()),
    # Indiana CXR450: a section header must not swallow the negation (": no" is a backward trigger)
    ("FINDINGS: No focal consolidation.", (), ("consolidation",), ()),
    # Indiana CXR278: a negation list
    ("No pneumothorax, pleural effusion, or focal airspace disease.", (), ("airspace disease",), ()),
    # COVID-19 note: ground-glass with a hyphen, both lungs
    ("ground-glass opacities in both lungs", ("bilateral", "hazy"), (), ()),
    ("Possible right upper lobe infiltrate.", (), (), ("right", "upper")),
])
def test_context_engine_real_sentences(context_extractor, text, present, negated, uncertain):
    r = context_extractor.extract(text)
    assert r.attributes == present
    assert r.negated_findings == negated
    assert r.uncertain_attributes == uncertain


@pytest.mark.parametrize("bad", [
    "", None, 3.5, b"\xff\xfe\x00\x81garbage\xc3", bytes(range(256)) * 40,
    "Neumonía en el lóbulo inferior derecho, sin derrame pleural.",
    # past spaCy's max_length: cut, not an exception (about 100 s of spaCy: slow)
    pytest.param("x" * 1_100_000, marks=pytest.mark.slow),
])
def test_context_engine_bad_input_gives_the_empty_result(context_extractor, bad):
    assert context_extractor.extract(bad) == ReportAttributes()


def test_context_engine_scores_a_tiny_folder(context_extractor, tmp_path):
    from test_indiana import _xml  # tests/ is on sys.path (rootdir import mode)

    (tmp_path / "2.xml").write_bytes(_xml(2, "Right lower lobe consolidation.", "Pneumonia.",
                                           "Consolidation/lung/lower lobe/right"))
    result = indiana.score_extractor(str(tmp_path), "even", engine="medspacy")
    assert result["engine"] == "medspacy" and result["reports"] == 1
    assert result["micro"]["f1"] == pytest.approx(1.0) and result["reports_per_second"] > 0
