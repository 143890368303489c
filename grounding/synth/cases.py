"""One synthetic case: its random generator and its true attribute words.

Shared by ``generator`` (the dataset) and ``sites`` (each site's formats); living in either made an
import circle.
"""

from __future__ import annotations

import numpy as np

from grounding.synth import lesions

SITE_CODE = {"A": 1, "B": 2, "C": 3}


def image_rng(seed: int, site: str, index: int, *extra: int) -> np.random.Generator:
    """The generator of one image (or one site-C patient): independent of processing order."""
    return np.random.default_rng([seed, SITE_CODE[site], index, *extra])


def attributes_for(truth: lesions.Truth, score: int, rng: np.random.Generator, wording_noise: float) -> dict:
    """True attribute words by role; the severity word follows the 0-8 score with wording noise."""
    grades = ("mild", "moderate", "severe")
    grade = lesions.severity_word(score)
    if grade and rng.random() < wording_noise:
        i = grades.index(grade) + int(rng.choice([-1, 1]))
        grade = grades[int(np.clip(i, 0, 2))]
    return {
        "side": "bilateral" if len(truth.sides) == 2 else truth.sides[0],
        "zones": list(truth.zones),
        "pattern": truth.pattern,
        "texture": truth.texture if truth.texture in ("hazy", "streaky") else "",
        "severity": grade,
        "extensive": score >= 6,
    }


def flat_attributes(roles: dict | None) -> list[str]:
    from grounding.text.vocabulary import ATTRIBUTE_INDEX

    if not roles:
        return []
    words = {roles["side"], *roles["zones"], roles["pattern"], roles["texture"], roles["severity"],
             "extensive" if roles["extensive"] else ""}
    return sorted((w for w in words if w), key=lambda w: ATTRIBUTE_INDEX[w])


__all__ = ["SITE_CODE", "attributes_for", "flat_attributes", "image_rng"]
