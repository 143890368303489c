"""Attribute extraction rules, pinned with real sentences (Indiana reports, COVID-19 notes)."""

from __future__ import annotations

import json

import pytest

from grounding.text.reports import (ReportAttributes, annotate_manifest, attribute_counts,
                               extract_attributes, read_covid_notes)
from grounding.data.schema import MANIFEST_SCHEMA, manifest_table
from grounding.text.vocabulary import ATTRIBUTES

# (real sentence, present attributes, findings, negated findings, uncertain attributes)
REAL = [
    # Indiana CXR104: "minimal" -> mild, "or" hedges only atelectasis, the opacity stays positive
    ("There are minimal XXXX left basilar opacities, XXXX subsegmental atelectasis or scarring.",
     ("left", "basal", "mild"), ("opacity",), (), ()),
    # Indiana CXR1: a negated finding
    ("There is no focal consolidation.", (), (), ("consolidation",), ()),
    # Indiana CXR332: "could represent" hedges the pneumonia, not the opacities
    ("There are are streaky retrocardiac left lower lobe opacities, in the correct clinical setting "
     "this could represent a pneumonia.",
     ("left", "lower", "retrocardiac", "streaky"), ("opacity",), (), ()),
    # Indiana CXR144: bibasilar -> basal + bilateral
    ("Overall low lung volumes with mild patchy bibasilar airspace disease.",
     ("bilateral", "basal", "patchy", "mild"), ("airspace disease",), (), ()),
    # Indiana CXR160: "probable ... versus atelectasis" is a differential: the finding is hedged, but
    # its place is seen, so "left basilar" counts (MeSH: Infiltrate/lung/base/left); no "bilateral",
    # since left and right belong to two different mentions
    ("Patchy right lower lobe infiltrate as well as probable left basilar infiltrate versus atelectasis.",
     ("left", "right", "lower", "basal", "patchy"), ("infiltrate",), (), ()),
    # Indiana CXR594: "both lung bases"
    ("There are streaky opacities in both lung bases which may represent atelectasis or scarring.",
     ("bilateral", "basal", "streaky"), ("opacity",), (), ()),
    # Indiana CXR1244: "left greater than right" is bilateral, not left and right
    ("There are increased bibasilar airspace opacities, left greater than right.",
     ("bilateral", "basal"), ("opacity",), (), ()),
    # Indiana CXR1064: "questionable" -> uncertain; "right hemidiaphragm" does not give "right"
    ("There is stable elevation of the right hemidiaphragm with questionable increased right basilar "
     "airspace opacities.", (), (), (), ("right", "basal")),
    # Indiana CXR1542: "compatible with" does not carry "bases" forward onto scarring
    ("XXXX opacities are noted in the lung bases compatible with scarring or atelectasis.",
     ("bilateral", "basal"), ("opacity",), (), ()),
    # Indiana CXR586: the left midlung is the lingula (as the MeSH coders write it)
    ("Again noted is XXXX and left midlung airspace opacity XXXX atelectasis.",
     ("lingular",), ("opacity",), (), ()),
    # Indiana CXR1102: attribute of another finding ("bilateral pleural effusions") is not taken
    ("There are bilateral pleural effusions with bibasilar airspace disease, right greater than left.",
     ("bilateral", "basal"), ("airspace disease",), (), ()),
    # Indiana CXR278: a negation list
    ("No pneumothorax, pleural effusion, or focal airspace disease.", (), (), ("airspace disease",), ()),
    # vocabulary 3 --------------------------------------------------------------------------------
    # Indiana CXR504: "left base" is one phrase; the comma keeps "base" off the scarring after it
    ("Stable XXXX opacity in the left base, XXXX scarring or atelectasis.",
     ("left", "basal"), ("opacity",), (), ()),
    # Indiana CXR1200: juxtahilar / suprahilar / infrahilar -> perihilar
    ("Small right juxtahilar opacity may represent infiltrate.",
     ("right", "perihilar", "mild"), ("opacity",), (), ()),
    # Indiana CXR3850: a nipple shadow is not an opacity, and adjacent anchors are not coordinated
    ("Bilateral nipple shadows seen overlying the anterior 6th ribs.", (), (), (), ()),
    # Indiana CXR1666: "most notably in" hands the location back across the comma
    ("There are scattered bilateral XXXX opacities, most notably in the right middle lobe, XXXX XXXX of "
     "subsegmental atelectasis.", ("right", "bilateral", "middle", "multifocal"), ("opacity",), (), ()),
    # Indiana CXR2396: "most prominent" is not the other finding "prominent"
    ("There are bilateral opacities most prominent in the lower lobes bilaterally.",
     ("bilateral", "lower"), ("opacity",), (), ()),
    # Indiana CXR2370: a post-modifier covers both coordinated findings
    ("In the interval, consolidation and atelectasis have developed in the right lower lobe.",
     ("right", "lower"), ("consolidation",), (), ()),
    # Indiana CXR3292: a plural lobe after one named side is that lung only
    ("Opacity within the right middle and lower lobes.", ("right", "middle", "lower"), ("opacity",), (), ()),
    # COVID-19 notes
    ("diffuse infiltrates in the bilateral lower lungs",
     ("bilateral", "lower", "diffuse"), ("infiltrate",), (), ()),
    ("progressive diffuse interstitial opacities and consolidation in the bilateral parahilar areas "
     "and lower lung fields",
     ("bilateral", "lower", "perihilar", "diffuse"), ("opacity", "consolidation"), (), ()),
    ("Posteroanterior radiograph depicts a subtle focus of consolidation in the right lower zone, "
     "partly obscured by breast tissue.", ("right", "lower", "focal", "mild"), ("consolidation",), (), ()),
    ("Anteroposterior radiograph obtained 5 days later shows a resolution of consolidation in the "
     "left lung but increased consolidation in the right lung.", ("right",), ("consolidation",), (), ()),
]


@pytest.mark.parametrize("text,present,findings,negated,uncertain", REAL)
def test_real_sentences(text, present, findings, negated, uncertain):
    r = extract_attributes(text)
    assert r.attributes == present
    assert r.findings == findings
    assert r.negated_findings == negated
    assert r.uncertain_attributes == uncertain
    assert r.pneumonia_positive == bool(findings)


@pytest.mark.parametrize("text,state", [
    ("Left lower lobe pneumonia has resolved.", "negated"),
    ("Pneumonia cannot be excluded.", "uncertain"),
    ("Cannot exclude left lower lobe pneumonia.", "uncertain"),
    ("Possible right upper lobe infiltrate.", "uncertain"),
    ("The lungs are free of focal consolidation.", "negated"),
    ("Negative for pneumonia.", "negated"),
    ("? right basilar pneumonia", "uncertain"),
    ("There is no change in the left lower lobe opacity.", "positive"),  # pseudo-negation
    ("No new focal consolidation.", "negated"),
    ("Compared to prior, the left lower lobe consolidation has improved.", "positive"),
    ("History of pneumonia.", "history"),
    ("INDICATION: pneumonia, cough. FINDINGS: the lungs are clear.", "history"),
])
def test_states(text, state):
    r = extract_attributes(text)
    if state == "positive":
        assert r.findings and r.pneumonia_positive
    elif state == "negated":
        assert r.negated_findings and not r.findings and not r.pneumonia_positive
    elif state == "uncertain":
        assert r.uncertain_findings and not r.findings and not r.pneumonia_positive
    else:  # history: neither present, uncertain nor negated
        assert r == ReportAttributes()


@pytest.mark.parametrize("text,present,uncertain_findings", [
    # Indiana CXR924 and CXR188: one side of a differential ("/", "or", "versus"): attributes present,
    # the finding itself uncertain (not pneumonia-positive)
    ("Bibasilar atelectasis/infiltrate.", ("bilateral", "basal"), ("infiltrate",)),
    ("Left lung base atelectasis/airspace disease.", ("left", "basal"), ("airspace disease",)),
    # Indiana CXR816
    ("Left lower lobe atelectasis or pneumonia with small pleural effusion.", ("left", "lower"),
     ("pneumonia",)),
])
def test_differential_keeps_the_place_and_hedges_the_finding(text, present, uncertain_findings):
    r = extract_attributes(text)
    assert r.attributes == present and r.uncertain_attributes == ()
    assert r.findings == () and not r.pneumonia_positive
    assert r.uncertain_findings == uncertain_findings


def test_a_question_mark_still_hedges_the_attributes():
    r = extract_attributes("? right basilar pneumonia")
    assert r.attributes == () and r.uncertain_attributes == ("right", "basal")
    r = extract_attributes("Possible left lower lobe atelectasis versus infiltrate.")
    assert r.attributes == () and r.uncertain_attributes == ("left", "lower")


def test_uncertain_attributes_exclude_present_ones():
    r = extract_attributes("Right lower lobe opacity. Possible right lower lobe pneumonia.")
    assert r.attributes == ("right", "lower") and r.uncertain_attributes == ()


@pytest.mark.parametrize("bad", [
    "", "   \n\n ", None, 3.5, b"\xff\xfe\x00\x81garbage\xc3", bytes(range(256)) * 40,
    "Neumonía en el lóbulo inferior derecho, sin derrame pleural.",  # another language
    "Heart size normal. Lungs clear.",  # no finding
])
def test_bad_input_gives_the_empty_result(bad):
    assert extract_attributes(bad) == ReportAttributes()


def test_non_utf8_bytes_are_decoded_with_replacement():
    r = extract_attributes("Right lower lobe opacity \xe9.".encode("latin-1"))
    assert r.attributes == ("right", "lower")


def test_one_megabyte_report_reads_like_its_sentence():
    # Speed is a benchmark (README "Report attributes": seconds for a 1 MB report), never a wall-clock
    # assertion here; this pins that a huge report is handled whole and reads as its one sentence.
    sentence = "Patchy right lower lobe opacity which may represent pneumonia. No effusion. "
    text = (sentence * 14000)[:1_000_000]
    assert extract_attributes(text).attributes == extract_attributes(sentence).attributes == ("right", "lower", "patchy")


def test_attributes_are_in_vocabulary_order():
    r = extract_attributes("Severe patchy bilateral lower lobe and left lingular consolidation.")
    assert list(r.attributes) == sorted(r.attributes, key=ATTRIBUTES.index)
    assert "severe" in r.attributes and "lingular" in r.attributes


def test_annotate_manifest_fills_the_columns():
    table = manifest_table([
        {"image_id": "a", "report_text": "Left basilar consolidation."},
        {"image_id": "b", "report_text": "No pneumonia."},
        {"image_id": "c", "report_text": ""},
    ])
    out = annotate_manifest(table)
    assert out.schema == MANIFEST_SCHEMA
    assert out.column("attributes").to_pylist() == [["left", "basal"], [], []]
    assert out.column("negated_findings").to_pylist() == [[], ["pneumonia"], []]
    assert out.column("pneumonia_positive").to_pylist() == [True, False, False]


def test_annotate_manifest_needs_report_text():
    import pyarrow as pa

    with pytest.raises(KeyError, match="report_text"):
        annotate_manifest(pa.table({"x": [1]}))


def test_cli_lines_and_manifest(tmp_path, capsys):
    from grounding.data.storage import read_table, write_table
    from rayjobs.attributes import main

    src = tmp_path / "r.txt"
    src.write_text("Right upper lobe pneumonia.\nNo consolidation.\n")
    assert main([str(src), "--lines"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["attributes"] for r in rows] == [["right", "upper"], []]
    assert rows[1]["negated_findings"] == ["consolidation"]
    write_table(manifest_table([{"image_id": "a", "report_text": "Mild left opacity."}]), str(tmp_path / "m.parquet"))
    assert main(["--manifest", str(tmp_path / "m.parquet"), "--out", str(tmp_path / "o.parquet")]) == 0
    assert read_table(str(tmp_path / "o.parquet")).column("attributes").to_pylist() == [["left", "mild"]]


def test_counts():
    counts = attribute_counts(["Left opacity.", "Left and right opacities.", "No pneumonia.", None])
    assert counts["present"]["left"] == 2 and counts["present"]["bilateral"] == 1
    assert counts["reports"] == {"total": 4, "pneumonia_positive": 2, "with_attributes": 2}
    assert counts["negated_findings"]["pneumonia"] == 1


def test_covid_notes_counts(shared_data):
    notes = read_covid_notes(str(shared_data / "covid" / "metadata.csv"))
    counts = attribute_counts(notes)
    assert counts["reports"]["total"] == len(notes) > 400
    # COVID-19 pneumonia is bilateral and lower-zone predominant in these notes
    assert counts["present"]["bilateral"] > counts["present"]["left"]
    assert counts["present"]["bilateral"] > 50
