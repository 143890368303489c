"""Figures for the evaluation report (matplotlib, Agg backend; PNG written atomically).

Every function takes explicit arrays, never a model: images are (H, W) uint8 grey, boxes are
(K, 4) xyxy in THAT image's pixels, attribute probabilities are ``{name: p}`` dicts. Expert boxes
are drawn green, predicted boxes red (paper Fig. 2 colours).
"""

from __future__ import annotations

import csv
import io
import math
import textwrap
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from grounding.data import storage  # noqa: E402

GT_COLOUR = "#22c55e"
PRED_COLOUR = "#ef4444"


def save_figure(fig, path: str, dpi: int = 110) -> str:
    """Write ``fig`` as PNG atomically and close it; returns ``path``."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    storage.atomic_write_bytes(path, buf.getvalue())
    return path


def _draw_boxes(ax, boxes, colour: str, scores=None, lw: float = 1.8) -> None:
    b = np.asarray(boxes if boxes is not None else np.zeros((0, 4)), dtype=np.float64).reshape(-1, 4)
    for i, (x1, y1, x2, y2) in enumerate(b):
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linewidth=lw))
        if scores is not None and i < len(scores):
            ax.text(x1, y1 - 2, f"{float(scores[i]):.2f}", color=colour, fontsize=7, va="bottom")


def _top(probs: Mapping[str, float] | None, k: int) -> list[tuple[str, float]]:
    if not probs:
        return []
    return sorted(((str(n), float(p)) for n, p in probs.items()), key=lambda t: -t[1])[:k]


def _show(ax, image: np.ndarray) -> None:
    ax.imshow(np.asarray(image), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _panels(n: int, ncols: int, height: float, what: str):
    """A grid of ``n`` image panels, ``ncols`` wide (unused panels hidden)."""
    if n == 0:
        raise ValueError(f"{what} needs at least one image")
    ncols = max(1, min(ncols, n))
    fig, axes = plt.subplots(math.ceil(n / ncols), ncols, figsize=(3.2 * ncols, height * math.ceil(n / ncols)),
                             squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, axes


def boxes_grid(images: Sequence[np.ndarray], gt_boxes: Sequence, pred_boxes: Sequence, path: str,
               attribute_probs: Sequence[Mapping[str, float]] | None = None,
               titles: Sequence[str] | None = None, pred_scores: Sequence | None = None,
               ncols: int = 4, top_attributes: int = 3) -> str:
    """Paper Fig. 2: images with expert (green) and predicted (red) boxes + top attributes.

    Args:
        images: N (H_i, W_i) uint8.
        gt_boxes / pred_boxes: N arrays (K, 4) xyxy in each image's pixels (may be empty).
        attribute_probs: N ``{attribute: probability}``; the ``top_attributes`` highest are listed.
    """
    n = len(images)
    fig, axes = _panels(n, ncols, 3.9, "boxes_grid")
    for i in range(n):
        ax = axes.flat[i]
        _show(ax, images[i])
        _draw_boxes(ax, gt_boxes[i], GT_COLOUR)
        _draw_boxes(ax, pred_boxes[i], PRED_COLOUR, pred_scores[i] if pred_scores is not None else None)
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=9)
        top = _top(attribute_probs[i] if attribute_probs is not None else None, top_attributes)
        if top:
            ax.set_xlabel("  ".join(f"{a} {p:.2f}" for a, p in top), fontsize=8)
    fig.legend(handles=[Rectangle((0, 0), 1, 1, fill=False, edgecolor=GT_COLOUR, label="expert"),
                        Rectangle((0, 0), 1, 1, fill=False, edgecolor=PRED_COLOUR, label="predicted")],
               loc="lower center", ncol=2, fontsize=9, frameon=False, bbox_to_anchor=(0.5, -0.02))
    fig.tight_layout()
    return save_figure(fig, path)


def alpha_over_pool(images: Sequence[np.ndarray], pool_boxes: Sequence, alphas: Sequence, gt_boxes: Sequence,
                    path: str, titles: Sequence[str] | None = None, ncols: int = 4, show: int = 12) -> str:
    """Alpha over the ROI pool: each image's ``show`` highest-alpha ROIs, colour and line width by alpha
    relative to uniform (1/N), expert boxes green. Uniform attention draws every box alike.

    Args:
        images: N (H_i, W_i) uint8. pool_boxes: N (K_i, 4) xyxy in each image's pixels.
        alphas: N (K_i,) attention weights. gt_boxes: N (G_i, 4) xyxy.
    """
    n = len(images)
    fig, axes = _panels(n, ncols, 3.6, "alpha_over_pool")
    cmap = plt.get_cmap("plasma")
    for i in range(n):
        ax = axes.flat[i]
        _show(ax, images[i])
        a = np.asarray(alphas[i], dtype=np.float64)
        b = np.asarray(pool_boxes[i], dtype=np.float64).reshape(-1, 4)
        rel = a * len(a)  # 1 = uniform
        for j in np.argsort(-a, kind="stable")[:show][::-1]:  # strongest drawn last (on top)
            x1, y1, x2, y2 = b[j]
            level = min(1.0, rel[j] / 4.0)
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=cmap(level),
                                   linewidth=0.6 + 2.4 * level))
        _draw_boxes(ax, gt_boxes[i], GT_COLOUR, lw=1.4)
        label = f"max alpha x N = {rel.max():.1f}" if len(a) else "no ROIs"
        ax.set_title(f"{titles[i]}  {label}" if titles is not None else label, fontsize=8)
    fig.suptitle("ROI attention alpha (bright, thick = high; x N = relative to uniform); expert boxes green",
                 fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def severity_scatter(panels: Mapping[str, tuple], path: str, ylabel: str = "severity score (normalised)") -> str:
    """Paper Fig. 4: probability vs expert score with the fitted least-squares line, one panel each.

    Args:
        panels: ``{x label: (x (n,), y (n,), slope, intercept[, caption])}``, e.g.
            ``{"P(severe)": (p, score, a, b, "r = 0.71")}``; NaN pairs are not drawn.
    """
    if not panels:
        raise ValueError("severity_scatter needs at least one panel")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels), 4.0), squeeze=False)
    for ax, (label, spec) in zip(axes.flat, panels.items()):
        x, y, slope, intercept = (np.asarray(spec[0], float), np.asarray(spec[1], float), spec[2], spec[3])
        ok = np.isfinite(x) & np.isfinite(y)
        ax.scatter(x[ok], y[ok], s=14, alpha=0.7, color="#2563eb", edgecolor="none")
        if np.isfinite(slope) and np.isfinite(intercept):
            xs = np.linspace(0, 1, 50)
            ax.plot(xs, slope * xs + intercept, color=PRED_COLOUR, lw=2,
                    label=f"fit: {slope:.2f} x {'+' if intercept >= 0 else '-'} {abs(intercept):.2f}")
            ax.legend(loc="best", fontsize=8, framealpha=0.8)
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel(label)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        caption = spec[4] if len(spec) > 4 else f"n = {int(ok.sum())}"
        ax.set_title(caption, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def read_history(source: str | Sequence[Mapping[str, float]]) -> list[dict]:
    """Epoch metrics from a CSV file (header row, one row per epoch) or a list of dicts."""
    if isinstance(source, str):
        fs, p = storage.resolve(source)
        with fs.open_input_stream(p) as f:
            text = f.read().decode("utf-8")
        rows = list(csv.DictReader(io.StringIO(text)))
    else:
        rows = [dict(r) for r in source]
    out = []
    for r in rows:
        rec = {}
        for k, v in r.items():
            try:
                rec[k] = float(v)
            except (TypeError, ValueError):
                continue  # text columns (run ids) are not curves
        out.append(rec)
    return out


def training_curves(history: str | Sequence[Mapping[str, float]], path: str,
                    keys: Sequence[str] | None = None, x_key: str = "epoch") -> str:
    """One panel per metric (losses and accuracies), x = ``x_key`` (default epoch; else the row index)."""
    rows = read_history(history)
    if not rows:
        raise ValueError("training_curves: empty history")
    keys = list(keys) if keys else sorted({k for r in rows for k in r} - {x_key})
    if not keys:
        raise ValueError("training_curves: no numeric metric columns")
    x = np.array([r.get(x_key, i) for i, r in enumerate(rows)], dtype=float)
    ncols = min(3, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.0 * ncols, 3.0 * nrows), squeeze=False)
    for ax in axes.flat[len(keys):]:
        ax.axis("off")
    for ax, k in zip(axes.flat, keys):
        y = np.array([r.get(k, np.nan) for r in rows], dtype=float)
        ok = np.isfinite(y)
        ax.plot(x[ok], y[ok], marker="o", ms=3, lw=1.5)
        ax.set_title(k, fontsize=10)
        ax.set_xlabel(x_key)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def case_study(images: Sequence[np.ndarray], pred_boxes: Sequence, attribute_probs: Sequence[Mapping[str, float]],
               report_texts: Sequence[str], offset_days: Sequence[int | None], path: str,
               gt_boxes: Sequence | None = None, top_attributes: int = 5, wrap: int = 42) -> str:
    """Paper Fig. 3: one patient's images over time, side by side, each with predicted boxes,
    a bar chart of its top attribute probabilities and its (wrapped) report text.

    Args:
        images: T (H, W) uint8, in time order.
        pred_boxes: T arrays (K, 4) xyxy.
        attribute_probs: T ``{attribute: probability}``.
        report_texts: T report strings (de-identified).
        offset_days: T days since the first image (None = unknown).
    """
    t = len(images)
    if t == 0 or not (len(pred_boxes) == len(attribute_probs) == len(report_texts) == len(offset_days) == t):
        raise ValueError("case_study: images, boxes, probabilities, reports and offsets must have equal length > 0")
    fig, axes = plt.subplots(3, t, figsize=(3.8 * t, 7.4), squeeze=False,
                             gridspec_kw={"height_ratios": [3.4, 1.3, 1.3]})
    for j in range(t):
        ax_img, ax_bar, ax_txt = axes[0, j], axes[1, j], axes[2, j]
        _show(ax_img, images[j])
        if gt_boxes is not None:
            _draw_boxes(ax_img, gt_boxes[j], GT_COLOUR)
        _draw_boxes(ax_img, pred_boxes[j], PRED_COLOUR)
        day = offset_days[j]
        ax_img.set_title("day ?" if day is None else f"day {int(day)}", fontsize=10)
        top = _top(attribute_probs[j], top_attributes)[::-1]
        ax_bar.barh([a for a, _ in top], [p for _, p in top], color=PRED_COLOUR, alpha=0.8)
        ax_bar.set_xlim(0, 1)
        ax_bar.tick_params(labelsize=8)
        ax_bar.set_xlabel("probability", fontsize=8)
        ax_txt.axis("off")
        text = textwrap.fill(" ".join(str(report_texts[j] or "(no report)").split()), wrap)
        lines = text.splitlines()
        if len(lines) > 10:
            text = "\n".join(lines[:10]) + " ..."
        ax_txt.text(0.0, 1.0, text, va="top", ha="left", fontsize=8, family="monospace",
                    transform=ax_txt.transAxes)
    fig.tight_layout()
    return save_figure(fig, path)
