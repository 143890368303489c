"""The attribute vocabulary: one versioned place (design.md 1.1).

Bump ``VOCABULARY_VERSION`` whenever ``ATTRIBUTES`` or the synonym table change; checkpoints and
ROI caches record it so a model is never paired with a differently ordered vocabulary.
"""

from __future__ import annotations

VOCABULARY_VERSION = "1"

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
