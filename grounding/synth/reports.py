"""Radiology reports written from the truth, with the clutter real reports carry.

A positive report names the opacity with one of several nouns (opacity, airspace disease,
consolidation, infiltrate), builds a location phrase from the attribute words of
:mod:`grounding.text.vocabulary`, and leaves each true attribute out with probability ``omission``
(radiologists do not say everything). Around it: technique, devices, negated and hedged
sentences about *other* findings, normal sentences and comparison sentences. Negative studies get
normal reports, sometimes with "no focal consolidation" or a hedge about early infection.
"""

from __future__ import annotations

import numpy as np

from grounding.text.vocabulary import ATTRIBUTE_INDEX

NOUNS = ("opacity", "opacities", "airspace disease", "consolidation", "infiltrate", "airspace opacity")
REGION_ZONES = ("apical", "basal", "perihilar", "peripheral", "retrocardiac", "lingular")

_DEVICE_SENTENCES = {
    "endotracheal tube": ["Endotracheal tube terminates {k} cm above the carina.",
                          "ET tube in standard position."],
    "central venous catheter": ["Central venous catheter tip projects over the SVC.",
                                "A central line is in place with tip at the cavoatrial junction."],
    "nasogastric tube": ["Enteric tube courses below the diaphragm, tip in the stomach.",
                         "Nasogastric tube tip is below the diaphragm."],
    "ECG electrodes": ["ECG leads overlie the chest.", "Monitoring leads project over the chest."],
    "pacemaker": ["Left chest wall pacemaker with lead in the right ventricle.",
                  "Cardiac pacing device is unchanged in position."],
}
_OTHER_NEGATED = ["No pleural effusion or pneumothorax.", "There is no pneumothorax.", "No pulmonary edema.",
                  "No large pleural effusion.", "No acute osseous abnormality.", "No pneumothorax is seen."]
_OTHER_HEDGED = ["Possible small left pleural effusion.", "Cannot exclude a trace right pleural effusion.",
                 "Minimal atelectasis may be present.", "Questionable tiny pneumothorax, likely skin fold."]
_NORMAL = ["The cardiomediastinal silhouette is within normal limits.", "Heart size is normal.",
           "The osseous structures are intact.", "The mediastinal contours are unremarkable.",
           "Mild cardiomegaly.", "Degenerative changes of the thoracic spine."]
_CLEAR = ["The lungs are clear.", "No focal consolidation.", "No focal airspace disease.",
          "There is no consolidation, effusion, or pneumothorax.", "Lungs are well expanded and clear."]
_NEG_IMPRESSION = ["No acute cardiopulmonary process.", "No radiographic evidence of pneumonia.",
                   "Normal chest radiograph.", "No acute findings."]


def _zone_phrase(zone: str, rng: np.random.Generator) -> str:
    if zone in REGION_ZONES:
        return f"{zone} {rng.choice(['region', 'lung', 'segment'])}" if zone != "basal" else \
            str(rng.choice(["basal lung", "basal segments"]))
    return f"{zone} {rng.choice(['lobe', 'zone', 'lung zone'])}"


def location_phrase(side: str, zones: list[str], rng: np.random.Generator) -> str:
    """'the right lower lobe and perihilar region', 'both lungs', 'the left lung'...

    ``side`` is '' when omitted; the literal attribute words are always used for what is kept.
    """
    if not zones:
        if side == "bilateral":
            return str(rng.choice(["bilateral lungs", "both lungs in a bilateral distribution"]))
        return f"the {side} lung" if side else "the lungs"
    parts = [_zone_phrase(z, rng) for z in zones]
    body = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    if side == "bilateral":
        return f"the bilateral {body}" + ("s" if not body.endswith("s") else "")
    return f"the {side} {body}" if side else f"the {body}"


def finding_sentences(words: dict, rng: np.random.Generator) -> tuple[str, str]:
    """(findings sentence, impression sentence) for a positive study.

    Args:
        words: kept attribute words by role: ``side`` (str), ``zones`` (list), ``pattern``,
            ``texture``, ``severity`` (str, may be ''), ``extensive`` (bool).
    """
    noun = str(rng.choice(NOUNS))
    if words.get("texture") == "hazy" and rng.random() < 0.5:
        noun = str(rng.choice(["opacity", "opacities", "ground-glass opacity"]))
    adjs = [w for w in (words.get("severity"), "extensive" if words.get("extensive") else "",
                        words.get("pattern"), words.get("texture")) if w]
    loc = location_phrase(words.get("side", ""), list(words.get("zones", [])), rng)
    adj = " ".join(adjs)
    form = int(rng.integers(4))
    if form == 0:
        finding = f"There is {adj + ' ' if adj else ''}{noun} in {loc}."
    elif form == 1:
        finding = f"{(adj + ' ' + noun).strip().capitalize()} is seen in {loc}."
    elif form == 2:
        finding = f"{(adj + ' ' + noun).strip().capitalize()} involving {loc}, new since the prior study."
    else:
        finding = f"Interval development of {adj + ' ' if adj else ''}{noun} in {loc}."
    impression = str(rng.choice([
        f"{loc[4:].capitalize() if loc.startswith('the ') else loc.capitalize()} {noun}, concerning for pneumonia.",
        f"Findings consistent with pneumonia in {loc}.",
        f"{noun.capitalize()} in {loc}, likely infectious.",
        "Findings compatible with pneumonia.",
    ]))
    return finding, impression


def kept_words(attributes: dict, omission: float, rng: np.random.Generator) -> tuple[dict, list[str]]:
    """Drop each true attribute word with probability ``omission``.

    Returns:
        (the kept words by role, the kept words as a flat list in vocabulary order).
    """
    def keep(word: str) -> bool:
        return bool(word) and rng.random() >= omission

    out = {
        "side": attributes["side"] if keep(attributes["side"]) else "",
        "zones": [z for z in attributes["zones"] if keep(z)],
        "pattern": attributes["pattern"] if keep(attributes["pattern"]) else "",
        "texture": attributes["texture"] if keep(attributes["texture"]) else "",
        "severity": attributes["severity"] if keep(attributes["severity"]) else "",
        "extensive": bool(attributes["extensive"]) and rng.random() >= omission,
    }
    flat = [out["side"], *out["zones"], out["pattern"], out["texture"], out["severity"],
            "extensive" if out["extensive"] else ""]
    flat = sorted({w for w in flat if w}, key=lambda w: ATTRIBUTE_INDEX[w])
    return out, flat


def write_report(positive: bool, attributes: dict | None, devices: list[str], view: str,
                 comparison: str, omission: float, clutter: float, rng: np.random.Generator) -> tuple[str, list[str]]:
    """A full report and the attribute words it states about the opacity.

    Args:
        positive: the study has an opacity.
        attributes: true words by role (see :func:`kept_words`); None for negatives.
        devices: names from :mod:`grounding.synth.distractors` present on the image.
        view: 'PA' | 'AP'.
        comparison: '' (no prior) or 'worse' | 'better' | 'unchanged' relative to the prior image.
        omission: chance of leaving out each true attribute.
        clutter: chance of each optional clutter sentence.

    Returns:
        (report text, the attribute words written; [] for negatives).
    """
    technique = "Portable AP chest radiograph." if view == "AP" else str(
        rng.choice(["PA and lateral views of the chest.", "Frontal view of the chest.", "PA chest radiograph."]))
    if comparison:
        comp = {"worse": "Compared with the prior radiograph, the opacities have increased.",
                "better": "Compared with the prior radiograph, the opacities have improved.",
                "unchanged": "Compared with the prior radiograph, the appearance is unchanged."}[comparison]
    else:
        comp = str(rng.choice(["None.", "No prior studies for comparison.", ""]))
    findings: list[str] = []
    for name in devices:
        if name in _DEVICE_SENTENCES:
            findings.append(str(rng.choice(_DEVICE_SENTENCES[name])).format(k=int(rng.integers(2, 7))))
    written: list[str] = []
    if positive and attributes is not None:
        words, written = kept_words(attributes, omission, rng)
        finding, impression = finding_sentences(words, rng)
        findings.append(finding)
    else:
        findings.append(str(rng.choice(_CLEAR)))
        impression = str(rng.choice(_NEG_IMPRESSION))
        if rng.random() < 0.2 * clutter:
            findings.append("No definite focal consolidation, although early infection cannot be excluded.")
    if rng.random() < clutter:
        findings.append(str(rng.choice(_OTHER_NEGATED)))
    if rng.random() < clutter * 0.5:
        findings.append(str(rng.choice(_OTHER_HEDGED)))
    if rng.random() < clutter:
        findings.append(str(rng.choice(_NORMAL)))
    head = [s for s in (f"EXAMINATION: CHEST ({view})", f"TECHNIQUE: {technique}", f"COMPARISON: {comp}" if comp else "")
            if s]
    text = "\n".join(head) + "\n\nFINDINGS: " + " ".join(findings) + "\n\nIMPRESSION: " + impression + "\n"
    return text, written
