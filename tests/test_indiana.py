"""Indiana reader, MeSH -> attribute mapping and the scorer."""

from __future__ import annotations

import pytest

from grounding.text import indiana

XML = """<?xml version="1.0" encoding="utf-8"?>
<eCitation><uId id="CXR{n}"/><MedlineCitation><Article><Abstract>
<AbstractText Label="COMPARISON">None.</AbstractText>
<AbstractText Label="FINDINGS">{findings}</AbstractText>
<AbstractText Label="IMPRESSION">{impression}</AbstractText>
</Abstract></Article></MedlineCitation>
<MeSH>{mesh}</MeSH></eCitation>"""


def _xml(n, findings, impression, *terms):
    mesh = "".join(f"<major>{t}</major>" for t in terms)
    return XML.format(n=n, findings=findings, impression=impression, mesh=mesh).encode()


def test_parse_report_xml():
    r = indiana.parse_report_xml(_xml(12, "Left basilar opacity.", "Atelectasis.", "Opacity/lung/base/left"))
    assert r.number == 12
    assert r.text == "FINDINGS: Left basilar opacity.\n\nIMPRESSION: Atelectasis."
    assert r.mesh == ("Opacity/lung/base/left",)


def test_parse_bad_xml_is_skipped_with_the_file_name(caplog):
    assert indiana.parse_report_xml(b"<eCitation><uId", "broken.xml") is None
    assert "broken.xml" in caplog.text


@pytest.mark.parametrize("terms,expected", [
    (["Opacity/lung/base/left/mild"], {"basal", "left", "mild"}),
    (["Airspace Disease/lung/upper lobe/right/patchy"], {"upper", "right", "patchy"}),
    (["Opacity/lung/lingula", "Infiltrate/lung/middle lobe/right/small"], {"lingular", "middle", "right", "mild"}),
    (["Consolidation/lung/hilum/diffuse", "Pneumonia/lower lobe/left"], {"perihilar", "diffuse", "lower", "left"}),
    (["Opacity/retrocardiac/streaky", "Opacity/lung/bilateral/scattered"], {"retrocardiac", "streaky", "bilateral", "multifocal"}),
    (["Opacity/ribs/anterior/left"], set()),  # non-lung anatomy: not counted
    (["Pulmonary Atelectasis/base/left", "Density/lung/right", "normal"], set()),  # other heads
    (["Opacity/lung/interstitial/round"], set()),  # counted head, unmapped qualifiers
])
def test_mesh_attributes(terms, expected):
    assert indiana.mesh_attributes(terms) == expected


def test_mesh_has_finding():
    assert indiana.mesh_has_finding(["Opacity/lung/interstitial"])
    assert not indiana.mesh_has_finding(["Opacity/ribs", "normal"])


def test_splits():
    assert indiana.in_split(4, "even") and not indiana.in_split(5, "even")
    assert indiana.in_split(5, "odd") and indiana.in_split(5, "all")
    with pytest.raises(ValueError):
        indiana.in_split(1, "dev")


def test_score_sets_known_values():
    # left: TP 1, FP 1, FN 0; mild: TP 0, FP 0, FN 1; patchy: TP 1
    predicted = [{"left", "patchy"}, {"left"}, set()]
    gold = [{"left", "patchy"}, set(), {"mild"}]
    s = indiana.score_sets(predicted, gold)
    left = s["per_attribute"]["left"]
    assert (left["tp"], left["fp"], left["fn"]) == (1, 1, 0)
    assert left["precision"] == pytest.approx(0.5) and left["recall"] == pytest.approx(1.0)
    assert left["f1"] == pytest.approx(2 / 3)
    assert s["per_attribute"]["mild"]["f1"] == 0.0
    m = s["micro"]  # TP 2, FP 1, FN 1
    assert (m["precision"], m["recall"], m["f1"]) == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    ls = s["micro_location_severity"]  # left TP1 FP1, mild FN1
    assert (ls["tp"], ls["fp"], ls["fn"]) == (1, 1, 1)
    assert "micro (all 22)" in indiana.format_table(s)
    with pytest.raises(ValueError):
        indiana.score_sets([set()], [])


def test_score_extractor_on_a_tiny_folder(tmp_path):
    (tmp_path / "2.xml").write_bytes(_xml(2, "Right lower lobe consolidation.", "Pneumonia.",
                                           "Consolidation/lung/lower lobe/right", "Pneumonia/lower lobe/right"))
    (tmp_path / "4.xml").write_bytes(_xml(4, "Possible left basilar infiltrate.", "", "Infiltrate/lung/base/left"))
    (tmp_path / "3.xml").write_bytes(_xml(3, "Left opacity.", "", "Opacity/lung/left"))  # odd: held out
    strict = indiana.score_extractor(str(tmp_path), "even")
    assert strict["reports"] == 2
    assert strict["micro"]["tp"] == 2 and strict["micro"]["fn"] == 2 and strict["micro"]["fp"] == 0
    lenient = indiana.score_extractor(str(tmp_path), "even", include_uncertain=True)
    assert lenient["micro"]["f1"] == pytest.approx(1.0)
    assert [r.number for r in indiana.iter_reports(str(tmp_path), "odd")] == [3]


@pytest.mark.slow
def test_dev_set_goal(shared_data):
    """Development split only (even ids): location+severity micro-F1 >= 0.92 (0.928 with vocabulary 3)."""
    result = indiana.score_extractor(str(shared_data / "indiana" / "NLMCXR_reports.tgz"), "even")
    assert result["reports"] > 1900
    assert result["micro_location_severity"]["f1"] >= 0.92
