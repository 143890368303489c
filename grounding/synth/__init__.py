"""Built-in synthetic dataset (design.md section 4): chest radiographs from physics, opacities that
follow the attribute vocabulary, reports written from the truth, three sites with a domain shift.

Modules: ``anatomy`` (path-length maps), ``lesions`` (opacity fields, boxes, severity),
``imaging`` (exposure, noise, detector, quantisation), ``distractors`` (devices, electrodes,
markers), ``reports`` (report text), ``dicom_writer`` (Part 10 files, fake identity, canary),
``render`` (one image), ``sites`` (per-site formats), ``generator`` (the dataset), ``contact``
(contact sheet).
"""

from __future__ import annotations

from grounding.synth.dicom_writer import write_canary_dicom
from grounding.synth.generator import INDEX_SCHEMA, generate

__all__ = ["INDEX_SCHEMA", "generate", "write_canary_dicom"]
