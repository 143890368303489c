"""The attribute vocabulary: one versioned place (design.md 1.1).

Bump ``VOCABULARY_VERSION`` whenever ``ATTRIBUTES`` or the synonym table change; checkpoints and
ROI caches record it so a model is never paired with a differently ordered vocabulary.
"""

from __future__ import annotations

VOCABULARY_VERSION = "3"  # 2: synonym and trigger tables added (ATTRIBUTES unchanged)
# 3: juxta/supra/infrahilar -> perihilar, nipple shadow(s) as other finding, LOCATION_FOCUS; with
#    report_rules: differentials keep their attributes, location phrases, plural zones (issue 18)

# Order matters: it is the index of the classifier's logits and of the multi-hot targets.
LOCATION = ("left", "right", "bilateral", "upper", "middle", "lower", "basal", "apical",
            "perihilar", "peripheral", "retrocardiac", "lingular")
STRUCTURE = ("diffuse", "focal", "patchy", "multifocal", "hazy", "streaky")
SEVERITY = ("mild", "moderate", "severe", "extensive")
ATTRIBUTES: tuple[str, ...] = LOCATION + STRUCTURE + SEVERITY
ATTRIBUTE_INDEX = {name: i for i, name in enumerate(ATTRIBUTES)}
NUM_ATTRIBUTES = len(ATTRIBUTES)
assert NUM_ATTRIBUTES == 22


def multi_hot(attributes: list[str] | tuple[str, ...]) -> list[int]:
    """22-long 0/1 list for a list of attribute names (unknown names raise KeyError)."""
    out = [0] * NUM_ATTRIBUTES
    for name in attributes:
        out[ATTRIBUTE_INDEX[name]] = 1
    return out


# -- synonym and trigger tables (read by grounding.text.report_rules) ------------------------------------
# Every key is a space-separated phrase of lower-case tokens; the tokeniser splits on anything that is
# not a letter or digit, so "left-sided", "ground-glass" and "air-space" arrive as two tokens. The
# longest phrase wins at each position, so "right middle lobe" is "right" + "middle lobe".

# The five pneumonia-like findings (design.md 1.1), canonical name first.
FINDINGS: tuple[str, ...] = ("pneumonia", "opacity", "consolidation", "infiltrate", "airspace disease")
FINDING_SYNONYMS: dict[str, str] = {
    **{w: "pneumonia" for w in ("pneumonia", "pneumonias", "pneumonitis", "bronchopneumonia", "pna")},
    **{w: "opacity" for w in (
        "opacity", "opacities", "opacification", "opacifications", "opacified", "opacifies",
        "opacitie", "haziness", "shadow", "shadows", "shadowing", "airspace opacity",
        "airspace opacities", "air space opacity", "air space opacities", "alveolar opacity",
        "alveolar opacities")},
    **{w: "consolidation" for w in (
        "consolidation", "consolidations", "consolidative", "consolidated", "consolidating")},
    **{w: "infiltrate" for w in (
        "infiltrate", "infiltrates", "infiltration", "infiltrations", "infiltrative")},
    **{w: "airspace disease" for w in (
        "airspace disease", "air space disease", "airspace diseases", "airspace process",
        "air space process", "alveolar disease", "alveolar process", "airspace processes")},
}

# Attribute synonyms: phrase -> the attributes it states (a phrase may state two: "bibasilar").
# Decisions (documented in grounding/text/reports.py): minimal/small/slight/subtle/faint/minor -> mild
# (the Indiana MeSH coders write "mild" or "small" for them); marked/dense... -> severe only for
# "marked(ly)"; "large"/"widespread" -> extensive/diffuse; "multiple"/"scattered" -> multifocal;
# "ground glass" -> hazy; "linear"/"strandy" -> streaky; "hilar"/"parahilar" -> perihilar.
ATTRIBUTE_SYNONYMS: dict[str, tuple[str, ...]] = {
    **{w: ("left",) for w in ("left", "left sided", "left side", "leftsided", "lt")},
    **{w: ("right",) for w in ("right", "right sided", "right side", "rightsided", "rt")},
    **{w: ("bilateral",) for w in (
        "bilateral", "bilaterally", "both", "both lungs", "both sides", "bilat", "each lung")},
    **{w: ("upper",) for w in ("upper", "upper lobe", "upper lung", "upper zone", "upper lung zone")},
    **{w: ("middle",) for w in ("middle", "middle lobe", "mid", "midlung", "mid lung", "midzone",
                                 "mid zone", "mid lungs", "midlungs", "middle zone")},
    **{w: ("lower",) for w in ("lower", "lower lobe", "lower lung", "lower zone", "lower lung zone")},
    # plural zones name both lungs: "opacities in the lower lobes" -> lower + bilateral
    **{w: ("upper", "bilateral") for w in ("upper lobes", "upper lungs", "upper zones",
                                            "upper lung zones")},
    **{w: ("lower", "bilateral") for w in ("lower lobes", "lower lungs", "lower zones",
                                            "lower lung zones")},
    **{w: ("basal",) for w in ("base", "basilar", "basal", "basally", "basilar segment",
                                "lung base", "basilarly")},
    **{w: ("basal", "bilateral") for w in (
        "bibasilar", "bibasal", "bi basilar", "bibasally", "bibasilarly", "both bases",
        "both lung bases", "bases", "lung bases")},
    **{w: ("apical",) for w in ("apex", "apical", "apically", "apicoposterior")},
    **{w: ("apical", "bilateral") for w in ("biapical", "apices", "lung apices")},
    **{w: ("perihilar",) for w in ("perihilar", "parahilar", "hilar", "hilum", "hila", "perihilum",
                                    "juxtahilar", "suprahilar", "infrahilar")},
    **{w: ("perihilar", "bilateral") for w in ("bihilar", "biperihilar")},
    **{w: ("peripheral",) for w in ("peripheral", "periphery", "peripherally", "subpleural")},
    **{w: ("retrocardiac",) for w in ("retrocardiac", "behind the heart")},
    **{w: ("lingular",) for w in ("lingula", "lingular")},
    # the lingula is the left mid-lung zone of a frontal film; the Indiana coders write it so
    # (and never add "left" to it: the lingula is left by definition)
    **{w: ("lingular",) for w in ("left midlung", "left mid lung", "left middle lung",
                                   "left midzone", "left mid zone", "left mid lungs", "left lingula",
                                   "left lingular")},
    # "bibasilar opacities, left greater than right": both sides, coded as bilateral only
    **{f"{a} {cmp} than {b}": ("bilateral",) for a, b in (("left", "right"), ("right", "left"))
       for cmp in ("greater", "more", "worse", "larger", "denser", "less", "rather")},
    **{w: ("diffuse",) for w in ("diffuse", "diffusely", "widespread", "throughout")},
    **{w: ("focal",) for w in ("focal", "focally", "localized", "focus")},
    **{w: ("patchy",) for w in ("patchy", "patchily", "patches", "patch")},
    **{w: ("multifocal",) for w in ("multifocal", "multilobar", "multiple", "scattered",
                                     "multilobular")},
    **{w: ("hazy",) for w in ("hazy", "ground glass", "groundglass", "ill defined", "vague")},
    **{w: ("streaky",) for w in ("streaky", "streak", "streaks", "linear", "strandy", "stranding",
                                 "bandlike", "band like")},
    **{w: ("mild",) for w in ("mild", "mildly", "minimal", "minimally", "slight", "slightly",
                               "subtle", "small", "faint", "minor", "trace")},
    **{w: ("moderate",) for w in ("moderate", "moderately")},
    **{w: ("severe",) for w in ("severe", "severely", "marked", "markedly")},
    **{w: ("extensive",) for w in ("extensive", "extensively", "large", "massive")},
}

# Negation (NegEx-style). PRE triggers act on the findings after them up to a scope end; POST
# triggers on the findings before them back to the clause start.
NEGATION_PRE: tuple[str, ...] = (
    "no", "not", "without", "negative for", "free of", "clear of", "absence of", "absent",
    "no evidence of", "no evidence for", "no radiographic evidence of", "no signs of", "no sign of",
    "resolution of", "resolved", "no longer", "no definite", "no convincing", "rather than",
    "removal of", "clearing of", "cleared", "nor", "never", "negative")
NEGATION_POST: tuple[str, ...] = (
    "not seen", "not identified", "not visualized", "not present", "not demonstrated",
    "not appreciated", "not evident", "not visible", "not noted", "not detected", "absent",
    "resolved", "has resolved", "have resolved", "has cleared", "have cleared", "cleared",
    "is gone", "are gone", "no longer seen", "no longer visualized", "no longer present",
    "not apparent", "not well seen")
# Phrases that start like a negation but are not one ("no change in the left opacity").
PSEUDO_NEGATION: tuple[str, ...] = (
    "no change", "no interval change", "no significant change", "no significant interval change",
    "not changed", "not significantly changed", "no increase", "no decrease", "no improvement",
    "no substantial change", "not only", "no worse", "without change", "without interval change",
    "without significant change", "not been changed", "no appreciable change")
# Uncertainty (hedges): a separate state. "likely", "probable", "compatible with", "consistent with"
# are read as positive (a radiologist's committed wording), and are therefore not here.
UNCERTAIN_PRE: tuple[str, ...] = (
    "may", "might", "could", "possible", "possibly", "questionable", "question of", "questioned",
    "suspicious for", "suspect", "suspected", "suspicion of", "suspicion for", "concerning for",
    "concern for", "worrisome for", "suggestive of", "suggesting", "suggests", "suggest",
    "cannot exclude", "can not exclude", "cannot rule out", "can not rule out", "not exclude",
    "rule out", "r o", "to exclude", "evaluate for", "evaluation for", "equivocal",
    "indeterminate", "differential", "differential diagnosis", "raises concern", "raise concern",
    "cannot be excluded", "cannot be ruled out", "can t exclude", "can t rule out", "doubtful",
    "conceivably", "perhaps", "either", "developing", "early", "incipient",
    "represent", "represents", "reflect", "reflects", "representing", "reflecting")
UNCERTAIN_POST: tuple[str, ...] = (
    "cannot be excluded", "can not be excluded", "not excluded", "cannot be ruled out",
    "can not be ruled out", "not ruled out", "not be excluded", "is possible", "are possible",
    "is suspected", "are suspected", "is questioned", "is not excluded", "difficult to exclude",
    "cannot be entirely excluded", "not entirely excluded", "cannot be completely excluded",
    "is not completely excluded", "questioned")
# A differential ("atelectasis versus pneumonia", "atelectasis/infiltrate", "? pneumonia") hedges
# the nearest finding on each side (within 4 tokens), not the whole clause.
UNCERTAIN_DIFFERENTIAL: tuple[str, ...] = ("versus", "vs", "or", "and or", "/", "?")
# Words that coordinate two findings so that they share their pre-modifiers:
# "bibasilar atelectasis/infiltrate" -> the infiltrate is bibasilar too.
COORDINATORS: tuple[str, ...] = ("and", "or", "and or", "/", ",", "versus", "vs", "xxxx")
# "opacities, most notably in the right middle lobe": the location that follows belongs to the
# finding before these words (the comma before them does not start a new phrase).
LOCATION_FOCUS: tuple[str, ...] = (
    "most notably", "most notable", "most prominent", "most prominently", "most pronounced",
    "most marked", "predominantly", "predominately", "greatest", "most severe", "especially",
    "particularly", "most conspicuous")
# A history/comparison scope: findings in it are past, neither present nor uncertain.
HISTORY_PRE: tuple[str, ...] = (
    "history of", "hx of", "h o", "prior history of", "previous history of", "known history of",
    "recent history of", "past history of", "status post", "s p", "treated for", "recovering from",
    "recovered from", "previously treated")
# NegEx termination terms: a PRE scope ends here.
SCOPE_END: tuple[str, ...] = (
    "but", "however", "although", "though", "which", "that", "except", "aside from", "apart from",
    "with the exception", "there is", "there are", "there has", "otherwise", "other than", "whereas",
    "while", "although there", "yet", "though there", "concerning", "consistent with",
    "compatible with", "likely", "probably", "probable", "most likely", "and there", "now",
    "secondary to", "due to", "given", "in the setting", "as well as", "persists", "persistent")
# Section headers (a word followed by ':'): history sections hold clinical history, not findings.
HISTORY_SECTIONS: tuple[str, ...] = (
    "indication", "indications", "history", "clinical history", "clinical indication",
    "reason for exam", "reason for examination", "reason for study", "clinical information",
    "comparison", "comparisons", "technique", "examination", "exam", "procedure", "reason")
BODY_SECTIONS: tuple[str, ...] = (
    "findings", "finding", "impression", "impressions", "conclusion", "conclusions", "report",
    "opinion", "summary", "interpretation")
# Other findings and anatomy: attribute words attach to the nearest finding *or* one of these, so
# "left pleural effusion and right lower lobe opacity" gives the opacity only "right".
OTHER_FINDINGS: tuple[str, ...] = (
    "atelectasis", "atelectatic", "atelectases", "scarring", "scar", "scars", "effusion",
    "effusions", "pneumothorax", "pneumothoraces", "nodule", "nodules", "nodular density",
    "granuloma", "granulomas", "granulomata", "mass", "masses", "edema", "cardiomegaly",
    "fracture", "fractures", "emphysema", "emphysematous", "hyperinflation", "hyperinflated",
    "hyperexpanded", "fibrosis", "fibrotic", "thickening", "calcification", "calcifications",
    "calcified", "adenopathy", "lymphadenopathy", "congestion", "hernia", "eventration",
    "elevation", "elevated", "enlarged", "enlargement", "prominent", "prominence", "tortuous",
    "tortuosity", "degenerative", "spondylosis", "osteophytes", "deformity", "kyphosis",
    "scoliosis", "bronchiectasis", "cyst", "cysts", "bullae", "bulla", "lesion", "lesions",
    "cavitation", "cavity", "markings", "density", "densities", "hemidiaphragm", "hemidiaphragms",
    "diaphragm", "heart", "mediastinum", "aorta", "spine", "rib", "ribs", "clavicle", "humerus",
    "shoulder", "catheter", "tube", "line", "port", "pacemaker", "sternotomy", "clips", "stent",
    "picc", "wires", "wire", "artifact", "breast", "nipple", "nipple shadow", "nipple shadows",
    "soft tissue", "costophrenic",
    "angle", "angles", "sulcus", "pleura", "pleural", "fissure", "vasculature", "vascularity",
    "bronchovascular", "silhouette", "contour", "contours", "ventricle", "atrium",
    "volumes", "volume", "dilated", "bowel", "stomach", "abdomen", "thyroid", "trachea",
    "lymph", "node", "nodes", "hilar adenopathy", "cardiomediastinal", "blunting", "blunted",
    "collapse", "pneumoperitoneum", "chest wall", "skin", "subcutaneous", "spleen", "liver",
    "metastases", "metastasis", "osseous", "bony", "bones", "bone", "lucency", "lucencies",
    "granulomatous", "azygos", "vein", "hyperlucent", "hyperlucency", "tb", "tuberculosis",
    "cancer", "carcinoma", "tumor", "neoplasm", "malignancy", "infection", "aspiration", "changes",
    "disease", "copd", "ards")
