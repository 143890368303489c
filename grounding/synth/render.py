"""One synthetic radiograph: anatomy + opacity + distractors -> detector display values + truth."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from grounding.synth import anatomy, distractors, imaging, lesions


@dataclass(frozen=True)
class Acquisition:
    """How a site images a patient (the domain-shift knobs, from ``SynthConfig``)."""

    noise: float = 0.015
    gamma: float = 1.0
    blur: float = 0.4
    exposure_jitter: float = 0.1
    positioning_jitter: float = 0.03
    device_fraction: float = 0.0


SITE_DEFAULTS = {"A": Acquisition(), "B": Acquisition(0.03, 0.7, 1.2, 0.3, 0.08, 0.5)}


@dataclass
class Rendered:
    display: np.ndarray  # (H, W) float32 in [0, 1], air dark (MONOCHROME2 polarity)
    boxes: np.ndarray  # (K, 4) xyxy stored pixels
    truth: lesions.Truth | None
    fraction_right: float = 0.0
    fraction_left: float = 0.0
    score_right: int = 0
    score_left: int = 0
    devices: list[str] = field(default_factory=list)

    @property
    def score(self) -> int:
        return self.score_right + self.score_left


def work_size(height: int, width: int) -> int:
    """Anatomy and opacity are smooth: a third of the resolution (at most 288) is plenty, then
    upsampled; quantum noise is added at the stored resolution."""
    return int(np.clip(max(height, width) // 3, 96, 288))


def render_case(rng: np.random.Generator, height: int, width: int, acq: Acquisition, patient: anatomy.Patient,
                truth: lesions.Truth | None, view: str = "PA", box_jitter: float = 0.02,
                lesion_rng: np.random.Generator | None = None, fill_scale: float = 1.0) -> Rendered:
    """Render one image.

    Args:
        truth: the opacity to draw (None = a normal chest).
        lesion_rng: generator for the opacity layout (site C reuses one per patient so the same
            opacity evolves over days); defaults to ``rng``.
        fill_scale: multiplies the fill fraction (disease progression over days).
    """
    n = work_size(height, width)
    if view == "AP":  # AP projection magnifies the heart and is usually portable/supine
        patient = replace(patient, heart_scale=patient.heart_scale * 1.12)
    pose = anatomy.sample_pose(rng, acq.positioning_jitter)
    maps = anatomy.build(n, patient, pose, rng)
    fill = np.zeros((n, n), np.float32)
    if truth is not None:
        fill = np.clip(lesions.render(truth, maps, lesion_rng or rng) * fill_scale, 0.0, 1.0)
    fr, fl, sr, sl = lesions.extent_scores(fill, maps)
    metal, devices = np.zeros((n, n), np.float32), []
    if acq.device_fraction > 0 and rng.random() < acq.device_fraction:
        metal, devices = distractors.draw(n, rng, patient.dome_v + pose.dv, view)
    integral = imaging.line_integral(maps["tissue"], maps["air"], maps["bone"], fill, metal)
    integral = imaging.resize(integral, height, width)
    j = acq.exposure_jitter
    window = (float(rng.normal(0.0, 0.5 * j)), float(6.2 * np.exp(rng.normal(0.0, 0.3 * j))))
    display = imaging.expose(integral, rng, acq.noise, acq.blur, acq.gamma, window)
    boxes = lesions.boxes_from_fill(fill, (height, width), rng, box_jitter) if truth is not None else np.zeros((0, 4))
    return Rendered(display, boxes, truth, fr, fl, sr, sl, devices)


def render_image(rng: np.random.Generator, height: int, width: int, positive: bool, site: str = "A"):
    """Convenience for tests and the privacy canary: (display, Rendered) of a random patient."""
    patient = anatomy.sample_patient(rng)
    truth = lesions.sample_truth(rng) if positive else None
    out = render_case(rng, height, width, SITE_DEFAULTS.get(site, Acquisition()), patient, truth)
    return out.display, out
