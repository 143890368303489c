"""One typed configuration for every job.

Defaults live here. A YAML file overrides them, then ``--set a.b=c`` overrides the YAML.
Unknown keys and out-of-range values raise :class:`ConfigError` naming the dotted key.
Crossing into Ray the config travels as a plain ``dict`` (``to_dict``/``from_dict``).
"""

from __future__ import annotations

import enum
import json
import typing
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Mapping

import yaml


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message names the dotted key."""


class Backbone(str, enum.Enum):
    RESNET18 = "resnet18"
    RESNET50 = "resnet50"


class SimilarityNorm(str, enum.Enum):
    """How the ROI-attribute cosine matrix is normalised before the attention softmax (SCAN)."""

    CLIPPED_L2NORM = "clipped_l2norm"
    SOFTMAX = "softmax"
    NONE = "none"


class ClassifierInput(str, enum.Enum):
    """What the attribute classifier reads (design.md 1.4)."""

    POOLED_FEATURES = "pooled_features"  # the paper: classifier(v), v = sum_i alpha_i phi_i
    # Extension (not the paper): sum_i alpha_i classifier(phi_i). Each ROI must explain the report
    # on its own, so alpha gets credit for picking the ROIs that do (attention-MIL on logits).
    PER_ROI_LOGITS = "per_roi_logits"


class SRoiPooling(str, enum.Enum):
    """How S_roi(I, T) pools the per-ROI relevances R_roi_i (design.md 1.4)."""

    MEAN = "mean"  # the paper: mean_i R_roi_i (alpha does not appear, so this term never trains alpha)
    # Extension (not the paper): sum_i alpha_i R_roi_i, so the ROI-side triplet term rewards alpha for
    # the ROIs whose content matches this report's words better than the negative ROIs do.
    ALPHA = "alpha"


class NegativeRois(str, enum.Enum):
    """Which ROIs play I_n in the ROI-side triplet term."""

    LOWEST_SCORED = "lowest_scored"  # the paper's reading: the detector's N lowest-scored anchors
    OTHER_STUDY = "other_study"  # harder: the positive ROIs of another study in the same batch


class RoiPool(str, enum.Enum):
    """Which anchors of the frozen detector become the N positive ROIs (design.md 1.3)."""

    TOP_ANCHORS = "top_anchors"  # the N top-scored anchors (several may share one location)
    PER_LOCATION = "per_location"  # the best anchor of each (level, y, x), then the N top locations


class RoiFeatures(str, enum.Enum):
    """What r_i is: the paper leaves "the detector's last convolution maps" open (design.md 1.3)."""

    TOWER = "tower"  # the classification tower vector at the anchor's location (C features)
    ROI_ALIGN = "roi_align"  # MultiScaleRoIAlign 2x2 of FPN P3-P5 over the decoded box (C * 4 features)


class PrepareEngine(str, enum.Enum):
    """How ``prepare`` spreads the decoding over the cluster."""

    RAY_DATA = "ray_data"  # Ray Data map_batches -> write_parquet (streaming executor, backpressure)
    RAY_TASKS = "ray_tasks"  # plain Ray tasks, one Parquet shard each, a bounded window in flight


class TrainMode(str, enum.Enum):
    """Where the frozen detector runs during grounding training."""

    CACHE = "cache"  # read the ROI cache written once by extract-rois
    STREAMING = "streaming"  # run the detector inside the training workers


def _check(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{key}: {message}")


@dataclass(frozen=True)
class SynthConfig:
    """Built-in synthetic dataset (design.md section 4). Sites: A detector, B reports, C covid-like.

    Site A is RSNA-like (8-bit JPEG DICOM, boxes), site B MIMIC-like (16-bit, 12 stored, some
    MONOCHROME1, other exposure curve, noise, blur, positioning and distractors; reports), site C
    COVID-collection-like (PNG/JPEG, several images per patient over days, severity 0-8).
    """

    seed: int = 0  # the simulator seed (choose settings on seed 1, report seed 0)
    n_site_a: int = 160  # box-labelled detector-training site (RSNA-like)
    n_site_b: int = 360  # report-only site (MIMIC-like); part of it carries held-out boxes
    n_site_b_boxed: int = 80  # of n_site_b: expert boxes kept for evaluation only
    n_site_c_patients: int = 20  # covid-like site: PNG/JPEG, severity, several images per patient
    site_c_images_min: int = 2  # images per site-C patient, drawn uniformly in [min, max]
    site_c_images_max: int = 4  # upper end of that range
    site_c_days_max: int = 14  # follow-up images fall on days 1..days_max after the first
    site_c_jpeg_fraction: float = 0.5  # site-C files written as JPEG (the rest PNG)
    site_c_box_fraction: float = 0.5  # site-C images with radiologist boxes in annotations/
    site_a_size: int = 1024  # stored pixels (square)
    site_b_size: int = 768  # stored pixels (square)
    site_c_size: int = 512  # width; height varies by up to +15 % as in the real collection
    site_a_positive_fraction: float = 0.35  # site-A images with pneumonia boxes
    site_b_positive_fraction: float = 0.6  # site-B studies with pneumonia
    site_b_monochrome1_fraction: float = 0.3  # site-B files stored MONOCHROME1 (inverted)
    site_b_rle_fraction: float = 0.25  # site-B files stored RLE Lossless (the rest Explicit VR LE)
    site_b_device_fraction: float = 0.5  # support devices / electrodes / markers (distractors)
    site_a_noise: float = 0.015  # relative quantum noise at lung exposure
    site_b_noise: float = 0.03  # relative quantum-noise level of site B
    site_a_gamma: float = 1.0  # detector response curve exponent
    site_b_gamma: float = 0.7  # detector response curve exponent of site B (site A: 1.0)
    site_a_blur: float = 0.4  # detector blur (Gaussian sigma, stored pixels)
    site_b_blur: float = 1.2  # Gaussian sigma of site B (stored pixels)
    site_a_exposure_jitter: float = 0.1  # per-image log-exposure / window spread
    site_b_exposure_jitter: float = 0.3  # per-image log-exposure / window spread of site B
    site_a_positioning_jitter: float = 0.03  # shift / rotation / scale spread (fraction of width)
    site_b_positioning_jitter: float = 0.08  # shift / rotation / scale spread of site B
    site_a_jpeg_quality: int = 90  # JPEG Baseline quality of site-A pixel data
    box_jitter: float = 0.02  # annotator box-edge noise (fraction of box size)
    attribute_omission: float = 0.3  # chance a true attribute is not written in the report
    severity_wording_noise: float = 0.15  # chance the mild/moderate/severe word is one grade off
    report_clutter: float = 0.6  # chance of each clutter sentence (other findings, hedges, comparison)
    workers: int = 2  # generator processes (1 = in-process)
    contact_per_site: int = 24  # images per site on contact_sheet.png (0 = no sheet)

    def validate(self, prefix: str) -> None:
        for name in ("n_site_a", "n_site_b", "n_site_b_boxed", "n_site_c_patients", "contact_per_site"):
            _check(getattr(self, name) >= 0, f"{prefix}.{name}", "must be >= 0")
        _check(self.n_site_b_boxed <= self.n_site_b, f"{prefix}.n_site_b_boxed", "must be <= n_site_b")
        _check(1 <= self.site_c_images_min <= self.site_c_images_max <= 20, f"{prefix}.site_c_images_min",
               "need 1 <= site_c_images_min <= site_c_images_max <= 20")
        _check(1 <= self.site_c_days_max <= 365, f"{prefix}.site_c_days_max", "must be in [1, 365]")
        for name in ("site_a_size", "site_b_size", "site_c_size"):
            _check(64 <= getattr(self, name) <= 4096, f"{prefix}.{name}", "must be in [64, 4096]")
        for name in (
            "site_a_positive_fraction",
            "site_b_positive_fraction",
            "site_b_monochrome1_fraction",
            "site_b_rle_fraction",
            "site_b_device_fraction",
            "site_c_jpeg_fraction",
            "site_c_box_fraction",
            "attribute_omission",
            "severity_wording_noise",
            "report_clutter",
        ):
            _check(0.0 <= getattr(self, name) <= 1.0, f"{prefix}.{name}", "must be in [0, 1]")
        for name in ("site_a_noise", "site_b_noise"):
            _check(0.0 <= getattr(self, name) <= 0.5, f"{prefix}.{name}", "must be in [0, 0.5]")
        for name in ("site_a_gamma", "site_b_gamma"):
            _check(0.1 <= getattr(self, name) <= 3.0, f"{prefix}.{name}", "must be in [0.1, 3]")
        for name in ("site_a_blur", "site_b_blur"):
            _check(0.0 <= getattr(self, name) <= 10.0, f"{prefix}.{name}", "must be in [0, 10]")
        for name in ("site_a_exposure_jitter", "site_b_exposure_jitter"):
            _check(0.0 <= getattr(self, name) <= 1.0, f"{prefix}.{name}", "must be in [0, 1]")
        for name in ("site_a_positioning_jitter", "site_b_positioning_jitter"):
            _check(0.0 <= getattr(self, name) <= 0.2, f"{prefix}.{name}", "must be in [0, 0.2]")
        _check(10 <= self.site_a_jpeg_quality <= 100, f"{prefix}.site_a_jpeg_quality", "must be in [10, 100]")
        _check(0.0 <= self.box_jitter <= 0.3, f"{prefix}.box_jitter", "must be in [0, 0.3]")
        _check(1 <= self.workers <= 64, f"{prefix}.workers", "must be in [1, 64]")


@dataclass(frozen=True)
class DataConfig:
    """Decoding, normalisation and the prepared-image cache."""

    image_size: int = 192  # prepared images are square, this many pixels (192: detector recipe measured in README)
    max_pixels: int = 8192 * 8192  # header-declared Rows*Columns above this is quarantined unread
    low_percentile: float = 0.5  # fixed VOI policy: percentile window over the body
    high_percentile: float = 99.5  # upper end of that window
    split_fractions: tuple[float, float, float] = (0.9, 0.05, 0.05)  # train/val/test by patient
    split_seed: int = 0  # seed of the patient-level split
    batch_size: int = 32  # rows per Ray Data batch in prepare
    rows_per_shard: int = 256  # prepared Parquet rows per file
    engine: PrepareEngine = PrepareEngine.RAY_DATA  # ray_tasks: less overhead on small nodes (README: Benchmarks)

    def validate(self, prefix: str) -> None:
        _check(32 <= self.image_size <= 4096, f"{prefix}.image_size", "must be in [32, 4096]")
        _check(self.max_pixels > 0, f"{prefix}.max_pixels", "must be > 0")
        _check(
            0.0 <= self.low_percentile < self.high_percentile <= 100.0,
            f"{prefix}.low_percentile",
            "need 0 <= low_percentile < high_percentile <= 100",
        )
        _check(len(self.split_fractions) == 3, f"{prefix}.split_fractions", "needs 3 values")
        _check(abs(sum(self.split_fractions) - 1.0) < 1e-6, f"{prefix}.split_fractions", "must sum to 1")
        _check(min(self.split_fractions) >= 0.0, f"{prefix}.split_fractions", "must be >= 0")
        _check(self.batch_size >= 1, f"{prefix}.batch_size", "must be >= 1")
        _check(self.rows_per_shard >= 1, f"{prefix}.rows_per_shard", "must be >= 1")


@dataclass(frozen=True)
class WordVectorConfig:
    """gensim Word2Vec on the report corpus (design.md 1.2); always workers=1, so a seed is exact."""

    vector_size: int = 64  # d: dimension of m_j and of phi_i
    window: int = 5  # Word2Vec context window (words each side)
    min_count: int = 2  # Word2Vec: words seen fewer times are dropped
    # Privacy: a word enters the vocabulary only if at least this many distinct reports use it, so the
    # names, ids and dates of one patient's report never reach word2vec.model (attribute words are kept).
    min_reports: int = 3
    epochs: int = 30  # Word2Vec passes over the corpus
    seed: int = 0  # Word2Vec seed (exact: one worker thread)
    skip_gram: bool = True  # skip-gram (True) or CBOW (False); skip-gram suits small corpora
    negative_rule: str = "attributes"  # attributes: nearest other attribute | vocabulary: any word
    batch_size: int = 256  # reports per Ray Data batch when tokenising

    def validate(self, prefix: str) -> None:
        _check(4 <= self.vector_size <= 1024, f"{prefix}.vector_size", "must be in [4, 1024]")
        _check(self.window >= 1, f"{prefix}.window", "must be >= 1")
        _check(self.min_count >= 1, f"{prefix}.min_count", "must be >= 1")
        _check(self.min_reports >= 1, f"{prefix}.min_reports", "must be >= 1")
        _check(self.epochs >= 1, f"{prefix}.epochs", "must be >= 1")
        _check(self.negative_rule in ("attributes", "vocabulary"), f"{prefix}.negative_rule",
               "must be 'attributes' or 'vocabulary'")
        _check(self.batch_size >= 1, f"{prefix}.batch_size", "must be >= 1")


@dataclass(frozen=True)
class DetectorConfig:
    """Frozen RetinaNet (torchvision). Boxes are xyxy in pixels of the original image."""

    backbone: Backbone = Backbone.RESNET18  # resnet18 (CPU default) | resnet50 (the paper)
    fpn_channels: int = 64  # 64: 24 CPU epochs fit the detector budget; 256 = the paper's width
    weights_path: str = ""  # local state_dict file; never downloaded
    weights_sha256: str = ""  # required when weights_path is set
    num_rois: int = 32  # N positive (top-scored) and N negative (lowest-scored) anchors per image
    # positive ROIs: top_anchors (the N top-scored anchors) | per_location (the best anchor of each
    # (level, y, x), then the N top-scored locations: no two ROIs share a location); negatives are
    # the N lowest-scored anchors either way
    roi_pool: RoiPool = RoiPool.TOP_ANCHORS
    # r_i: tower (the classification tower vector at the anchor's location, fpn_channels wide) |
    # roi_align (FPN P3-P5 RoIAlign 2x2 over the decoded box, 4 * fpn_channels wide)
    roi_features: RoiFeatures = RoiFeatures.TOWER
    # detections scoring below are dropped (the top box is always kept)
    score_thresh: float = 0.05
    nms_thresh: float = 0.5  # IoU of the detector's NMS
    detections_per_img: int = 10  # post-NMS boxes kept per image
    epochs: int = 24  # from scratch on ~150 images: fewer under-fits (see README, detector)
    batch_size: int = 8  # images per step per worker
    lr: float = 1e-3  # peak learning rate
    optimizer: str = "adamw"  # adamw (measured to localise blobs from random init) | sgd (momentum 0.9)
    weight_decay: float = 1e-4  # optimizer weight decay
    grad_clip: float = 10.0  # max grad norm per step; 0 = off
    trainable_backbone_layers: int = 5  # 0-5 ResNet stages trained (5 = all; from scratch needs all)
    lr_schedule: str = "cosine"  # cosine (linear warmup, then cosine decay per step) | constant
    warmup_epochs: float = 1.0  # linear LR warmup (cosine schedule only)
    anchor_fraction: float = 0.0625  # P3 anchor size / image size (x2 per level P3-P7; 16 px at 256)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)  # anchor height/width ratios
    head_groupnorm: bool = True  # GroupNorm in the head towers (steadier from scratch, small batches)
    box_loss: str = "l1"  # RetinaNet box regression loss: l1 (measured) | smooth_l1 | giou | diou | ciou
    hflip: bool = True  # training augmentation: horizontal flip, boxes mirrored
    scale_jitter: float = 0.15  # training augmentation: zoom in [1-q, 1+q], shift up to q/2 per axis
    photometric: float = 0.2  # training augmentation: gamma/contrast jitter strength (0 = off)
    seed: int = 0  # init, order and augmentation seed
    num_workers: int = 1  # Ray Train workers (DDP); 0 = Ray Train local mode (in-process)
    use_gpu: bool = False  # one GPU per Train worker (extract-rois uses the cluster's GPUs)
    cpus_per_worker: float = 2.0  # capped at the cluster CPUs / num_workers (CPU runs)
    max_failures: int = 2  # Ray Train restarts from the last checkpoint (-1 = forever)
    checkpoints_to_keep: int = 2  # Ray Train checkpoints kept in storage
    extract_batch_size: int = 16  # images per Ray Data batch in extract-rois
    extract_actors: int = 0  # extract-rois actor pool size; 0 = one per GPU, else 1 CPU actor
    # torch threads of a CPU extract-rois actor. It reserves 1 CPU (so Ray Data's read tasks still get
    # one on a small node) but runs this many threads: 2 extract 1.5x faster than 1 (README, Benchmarks)
    extract_threads: int = 2

    def validate(self, prefix: str) -> None:
        _check(16 <= self.fpn_channels <= 512, f"{prefix}.fpn_channels", "must be in [16, 512]")
        _check(self.optimizer in ("sgd", "adamw"), f"{prefix}.optimizer", "must be sgd or adamw")
        _check(self.weight_decay >= 0.0, f"{prefix}.weight_decay", "must be >= 0")
        _check(self.grad_clip >= 0.0, f"{prefix}.grad_clip", "must be >= 0 (0 = off)")
        _check(0 <= self.trainable_backbone_layers <= 5, f"{prefix}.trainable_backbone_layers", "must be in [0, 5]")
        _check(self.lr_schedule in ("cosine", "constant"), f"{prefix}.lr_schedule", "must be cosine or constant")
        _check(self.box_loss in ("l1", "smooth_l1", "giou", "diou", "ciou"), f"{prefix}.box_loss",
               "must be l1, smooth_l1, giou, diou or ciou")
        _check(self.warmup_epochs >= 0.0, f"{prefix}.warmup_epochs", "must be >= 0")
        _check(0.005 <= self.anchor_fraction <= 0.5, f"{prefix}.anchor_fraction", "must be in [0.005, 0.5]")
        _check(len(self.aspect_ratios) >= 1 and all(0.1 <= r <= 10.0 for r in self.aspect_ratios),
               f"{prefix}.aspect_ratios", "must be one or more ratios in [0.1, 10]")
        _check(0.0 <= self.scale_jitter < 0.5, f"{prefix}.scale_jitter", "must be in [0, 0.5)")
        _check(0.0 <= self.photometric < 1.0, f"{prefix}.photometric", "must be in [0, 1)")
        _check(self.cpus_per_worker > 0, f"{prefix}.cpus_per_worker", "must be > 0")
        _check(self.max_failures >= -1, f"{prefix}.max_failures", "must be >= -1 (-1 = forever)")
        _check(self.checkpoints_to_keep >= 1, f"{prefix}.checkpoints_to_keep", "must be >= 1")
        _check(self.extract_batch_size >= 1, f"{prefix}.extract_batch_size", "must be >= 1")
        _check(self.extract_actors >= 0, f"{prefix}.extract_actors", "must be >= 0")
        _check(self.extract_threads >= 1, f"{prefix}.extract_threads", "must be >= 1")
        _check(1 <= self.num_rois <= 5000, f"{prefix}.num_rois", "must be in [1, 5000]")
        # enums are checked when read from YAML/--set; these catch a DetectorConfig built in code
        _check(self.roi_pool in list(RoiPool), f"{prefix}.roi_pool",
               f"must be one of {', '.join(m.value for m in RoiPool)}")
        _check(self.roi_features in list(RoiFeatures), f"{prefix}.roi_features",
               f"must be one of {', '.join(m.value for m in RoiFeatures)}")
        _check(0.0 <= self.score_thresh < 1.0, f"{prefix}.score_thresh", "must be in [0, 1)")
        _check(0.0 < self.nms_thresh <= 1.0, f"{prefix}.nms_thresh", "must be in (0, 1]")
        _check(self.detections_per_img >= 1, f"{prefix}.detections_per_img", "must be >= 1")
        _check(self.epochs >= 0, f"{prefix}.epochs", "must be >= 0")
        _check(self.batch_size >= 1, f"{prefix}.batch_size", "must be >= 1")
        _check(self.lr > 0, f"{prefix}.lr", "must be > 0")
        _check(self.num_workers >= 0, f"{prefix}.num_workers", "must be >= 0")
        _check(
            not self.weights_path or len(self.weights_sha256) == 64,
            f"{prefix}.weights_sha256",
            "a 64-hex-digit sha256 is required when weights_path is set",
        )


@dataclass(frozen=True)
class ModelConfig:
    """Cross-attention grounding model (design.md 1.4)."""

    roi_hidden: int = 128  # hidden width of W1 path (0 = single linear layer)
    geometry_dim: int = 16  # width of Wg g_i and Ws s_i before their layer norms
    alpha_hidden: int = 64  # hidden width of the alpha MLP (ROI attention)
    classifier_hidden: tuple[int, ...] = (64,)  # hidden widths of the attribute classifier MLP
    # normalisation of R before the softmaxes (SCAN: clipped_l2norm)
    similarity_norm: SimilarityNorm = SimilarityNorm.CLIPPED_L2NORM
    lambda_a: float = 4.0  # softmax temperature over attributes
    lambda_b: float = 9.0  # softmax temperature over ROIs
    dropout: float = 0.1  # dropout in the ROI and classifier MLPs
    classifier_input: ClassifierInput = ClassifierInput.POOLED_FEATURES  # per_roi_logits: an extension
    score_prior: bool = False  # extension: alpha's logits + log s_i (the detector score as a prior)
    # Alpha's candidates: ROIs whose box covers at most this fraction of the image (1.0 = every ROI). An
    # image without such a ROI keeps them all. A choice of pool the paper leaves open.
    max_roi_area: float = 0.2  # 0.2: the 95th percentile of site A's expert box areas (README "Localization")
    # alpha: an extension (see SRoiPooling), the default since 2026-12-03: chosen on the development seed
    # over 3 training seeds (+8.7 +/- 6.2 pp top-1 at IoU 0.5 over mean; README "Localization"). The
    # `paper` profile keeps mean, the paper's equation.
    s_roi_pooling: SRoiPooling = SRoiPooling.ALPHA

    def validate(self, prefix: str) -> None:
        _check(self.roi_hidden >= 0, f"{prefix}.roi_hidden", "must be >= 0")
        _check(self.geometry_dim >= 1, f"{prefix}.geometry_dim", "must be >= 1")
        _check(self.alpha_hidden >= 1, f"{prefix}.alpha_hidden", "must be >= 1")
        _check(all(h >= 1 for h in self.classifier_hidden), f"{prefix}.classifier_hidden", "sizes must be >= 1")
        _check(0.0 < self.lambda_a <= 100.0, f"{prefix}.lambda_a", "must be in (0, 100]")
        _check(0.0 < self.lambda_b <= 100.0, f"{prefix}.lambda_b", "must be in (0, 100]")
        _check(0.0 <= self.dropout < 1.0, f"{prefix}.dropout", "must be in [0, 1)")
        _check(0.0 < self.max_roi_area <= 1.0, f"{prefix}.max_roi_area", "must be in (0, 1]")


@dataclass(frozen=True)
class LossConfig:
    """The losses (design.md 1.5): triplet over both directions, attribute BCE."""

    beta: float = 0.8  # triplet margin
    use_classification: bool = True  # False = the paper's "without classification" ablation
    bce_weight: float = 1.0  # weight of the attribute BCE beside the triplet loss
    negative_rois: NegativeRois = NegativeRois.OTHER_STUDY  # I_n of the ROI-side term (README "Localization")
    # Extension (not the paper; 0 = off): weight of KL(q || alpha), q = softmax over alpha's candidates of
    # alpha_distill_temperature * R_roi computed with the study's own report (detached). Alpha, which sees
    # only the image, learns to predict which ROIs the report describes (self-distillation).
    alpha_distill: float = 0.0
    alpha_distill_temperature: float = 9.0  # the temperature of q above

    def validate(self, prefix: str) -> None:
        _check(0.0 <= self.beta <= 4.0, f"{prefix}.beta", "must be in [0, 4]")
        _check(self.bce_weight >= 0.0, f"{prefix}.bce_weight", "must be >= 0")
        _check(self.alpha_distill >= 0.0, f"{prefix}.alpha_distill", "must be >= 0 (0 = off)")
        _check(0.0 < self.alpha_distill_temperature <= 100.0, f"{prefix}.alpha_distill_temperature",
               "must be in (0, 100]")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW and early stopping of the grounding model."""

    lr: float = 1e-3  # AdamW learning rate
    weight_decay: float = 1e-4  # AdamW weight decay
    batch_size: int = 32  # studies per step per worker
    max_epochs: int = 40  # cap; early stopping usually ends sooner
    early_stop_patience: int = 10  # epochs
    early_stop_min_rel_change: float = 0.001  # paper: < 0.1 % change in 10 epochs
    grad_clip: float = 2.0  # max gradient norm per step (0 = off)
    seed: int = 0  # init and shuffle seed (per worker: seed + rank)

    def validate(self, prefix: str) -> None:
        _check(0.0 < self.lr <= 1.0, f"{prefix}.lr", "must be in (0, 1]")
        _check(self.weight_decay >= 0.0, f"{prefix}.weight_decay", "must be >= 0")
        _check(self.batch_size >= 1, f"{prefix}.batch_size", "must be >= 1")
        _check(self.max_epochs >= 1, f"{prefix}.max_epochs", "must be >= 1")
        _check(self.early_stop_patience >= 1, f"{prefix}.early_stop_patience", "must be >= 1")
        _check(self.early_stop_min_rel_change >= 0.0, f"{prefix}.early_stop_min_rel_change", "must be >= 0")
        _check(self.grad_clip >= 0.0, f"{prefix}.grad_clip", "must be >= 0 (0 = off)")


@dataclass(frozen=True)
class TrainConfig:
    """Ray Train scaling, storage and resume for the grounding model."""

    # cache: read the ROI cache | streaming: run the detector in the workers
    mode: TrainMode = TrainMode.CACHE
    num_workers: int = 1  # 0 = Ray Train local mode (in-process)
    use_gpu: bool = False  # one GPU per Train worker
    cpus_per_worker: float = 1.0  # CPUs reserved per Train worker
    max_failures: int = 2  # Ray Train restarts from the last checkpoint (-1 = forever)
    checkpoints_to_keep: int = 2  # Ray Train checkpoints kept in storage
    # a checkpoint every k epochs, plus the last (best weights ride in every one); a crash redoes <= k
    # epochs. Also used by train-detector.
    checkpoint_every: int = 10
    # Ray Train's controller polls the workers this often (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, Ray's
    # default 2 s): each report waits for the next poll, so the default cost ~1.5 s per epoch
    report_poll_s: float = 0.1
    max_consecutive_nonfinite: int = 3  # NaN/Inf steps in a row before NonFiniteLossError
    shuffle_buffer_batches: int = 4  # local shuffle buffer, in batches (0 = no shuffle)
    materialize: bool = True  # cache the ROI datasets in the object store once (False: stream Parquet each epoch)
    shard_in_memory: bool = True  # each worker reads its ROI shard once, re-shuffles it in memory per epoch
    tensorboard: bool = True  # rank-0 TensorBoard event files under the run folder
    mlflow_tracking_uri: str = ""  # MLflow when installed; empty = <run folder>/mlruns

    def validate(self, prefix: str) -> None:
        _check(self.num_workers >= 0, f"{prefix}.num_workers", "must be >= 0")
        _check(self.max_consecutive_nonfinite >= 1, f"{prefix}.max_consecutive_nonfinite", "must be >= 1")
        _check(self.shuffle_buffer_batches >= 0, f"{prefix}.shuffle_buffer_batches", "must be >= 0")
        _check(self.cpus_per_worker > 0, f"{prefix}.cpus_per_worker", "must be > 0")
        _check(self.max_failures >= -1, f"{prefix}.max_failures", "must be >= -1 (-1 = forever)")
        _check(self.checkpoints_to_keep >= 1, f"{prefix}.checkpoints_to_keep", "must be >= 1")
        _check(self.checkpoint_every >= 1, f"{prefix}.checkpoint_every", "must be >= 1")
        _check(0.01 <= self.report_poll_s <= 60.0, f"{prefix}.report_poll_s", "must be in [0.01, 60]")


@dataclass(frozen=True)
class EvalConfig:
    """Table 1, bootstrap CIs, severity folds and the CAM baseline."""

    iou_thresholds: tuple[float, ...] = (0.25, 0.5, 0.75)  # Table 1 columns: top-1 hit at IoU >= t
    bootstrap_samples: int = 1000  # resamples of the bootstrap CIs (0 = no CIs)
    folds: int = 5  # severity-cv folds (by patient)
    seed: int = 0  # bootstrap and fold seed
    confidence: float = 0.95  # bootstrap CI level (grounding.evaluation.bootstrap)
    cam_threshold: float = 0.5  # CAM/Grad-CAM box: pixels >= cam_threshold * max (grounding.detection.cam)
    cam_epochs: int = 5  # CAM classifier epochs over the grounding training images (grounding.detection.cam_train)
    # CAM classifier input side, px (was 128): with its stride-2 stem and channels (16, 32, 64) still a
    # 16 x 16 map; training 769 s -> 30 s, hit rates about the same over seeds (grounding.detection.cam_train "Speed")
    cam_input_size: int = 64
    pool_diagnostics: bool = True  # evaluate: the ROI pool diagnostics section (oracle, random, probe, alpha)

    def validate(self, prefix: str) -> None:
        _check(all(0.0 < t <= 1.0 for t in self.iou_thresholds), f"{prefix}.iou_thresholds", "must be in (0, 1]")
        _check(self.bootstrap_samples >= 0, f"{prefix}.bootstrap_samples", "must be >= 0")
        _check(self.folds >= 2, f"{prefix}.folds", "must be >= 2")
        _check(0.0 < self.confidence < 1.0, f"{prefix}.confidence", "must be in (0, 1)")
        _check(0.0 < self.cam_threshold <= 1.0, f"{prefix}.cam_threshold", "must be in (0, 1]")
        _check(self.cam_epochs >= 1, f"{prefix}.cam_epochs", "must be >= 1")
        _check(16 <= self.cam_input_size <= 1024, f"{prefix}.cam_input_size", "must be in [16, 1024]")


@dataclass(frozen=True)
class RunConfig:
    """Where a run lives. Paths are local directories or pyarrow URIs (s3://, gs://)."""

    work_dir: str = "runs/default"  # run folder: every stage writes its sub-folder here
    run_id: str = ""  # fixed id = resumable; empty = a fresh timestamped id (local runs only)
    storage_path: str = ""  # Ray Train/Tune storage; empty = <work_dir>/ray_storage

    def validate(self, prefix: str) -> None:
        _check(bool(self.work_dir), f"{prefix}.work_dir", "must not be empty")
        _check(
            all(c.isalnum() or c in "-_." for c in self.run_id),
            f"{prefix}.run_id",
            "may only hold letters, digits, '-', '_' and '.'",
        )



@dataclass(frozen=True)
class DetectorData:
    """Box-labelled images that train the detector (the RSNA challenge layout)."""

    adapter: str = "rsna"  # rsna
    root: str = ""  # empty = the role is not set (synthetic default)

    def validate(self, prefix: str) -> None:
        _check(self.adapter == "rsna", f"{prefix}.adapter", "must be rsna")


@dataclass(frozen=True)
class GroundingData:
    """Images with reports that train the grounding model (MIMIC-CXR, DICOM or JPG tree)."""

    adapter: str = "mimic"  # mimic
    root: str = ""  # MIMIC-CXR tree (empty = synthetic)

    def validate(self, prefix: str) -> None:
        _check(self.adapter == "mimic", f"{prefix}.adapter", "must be mimic")


@dataclass(frozen=True)
class EvaluationData:
    """Held-out expert boxes for Table 1: ChestX-ray8, or MIMIC images with an MS-CXR-style box table."""

    adapter: str = "chestxray8"  # chestxray8 | mimic
    root: str = ""  # dataset root (empty = synthetic)
    boxes: str = ""  # mimic only: CSV with dicom_id, x, y, w, h (+ category_name); images listed become eval

    def validate(self, prefix: str) -> None:
        _check(self.adapter in ("chestxray8", "mimic"), f"{prefix}.adapter", "must be chestxray8 or mimic")
        _check(self.adapter != "mimic" or not self.root or bool(self.boxes), f"{prefix}.boxes",
               "the mimic evaluation role needs a box table (dicom_id, x, y, w, h)")


@dataclass(frozen=True)
class SeverityData:
    """Images with a severity score (COVID-19 collection + any ``filename, score`` table): Table 2."""

    adapter: str = "covid"  # covid
    root: str = ""  # COVID-19 collection root (empty = synthetic)
    table: str = ""  # CSV with a filename column and the score column
    column: str = "score"  # the score column of that table
    scale: float = 8.0  # the score's maximum (geographic extent 8, Brixia S-Global 18)

    def validate(self, prefix: str) -> None:
        _check(self.adapter == "covid", f"{prefix}.adapter", "must be covid")
        _check(not self.root or bool(self.table), f"{prefix}.table", "a severity table is needed with a root")
        _check(bool(self.column), f"{prefix}.column", "must not be empty")
        _check(self.scale > 0, f"{prefix}.scale", "must be > 0")


@dataclass(frozen=True)
class ExtraCorpusData:
    """More report text for the word vectors only (Indiana ``NLMCXR_reports.tgz`` or a folder of XML)."""

    adapter: str = "indiana"  # indiana
    root: str = ""  # NLMCXR_reports.tgz or a folder of XML (empty = none)
    split: str = "even"  # even (the development ids) | all; odd ids are kept for scoring the extractor

    def validate(self, prefix: str) -> None:
        _check(self.adapter == "indiana", f"{prefix}.adapter", "must be indiana")
        _check(self.split in ("even", "all"), f"{prefix}.split", "must be even or all")


@dataclass(frozen=True)
class DatasetsConfig:
    """Which real dataset plays which role in ``grounding pipeline``; every root empty = synthetic data."""

    detector: DetectorData = field(default_factory=DetectorData)
    grounding: GroundingData = field(default_factory=GroundingData)
    evaluation: EvaluationData = field(default_factory=EvaluationData)
    severity: SeverityData = field(default_factory=SeverityData)
    extra_corpus: ExtraCorpusData = field(default_factory=ExtraCorpusData)

    REQUIRED = ("detector", "grounding", "evaluation", "severity")

    def is_real(self) -> bool:
        """True when any role names a root: the pipeline then reads real data, not the simulator."""
        return any(getattr(self, f.name).root for f in fields(self))

    def validate(self, prefix: str) -> None:
        for f in fields(self):
            getattr(self, f.name).validate(f"{prefix}.{f.name}")
        missing = [r for r in self.REQUIRED if not getattr(self, r).root]
        _check(not self.is_real() or not missing, f"{prefix}.{missing[0] if missing else ''}.root",
               f"real data needs a root for every role ({', '.join(self.REQUIRED)}); missing: {', '.join(missing)}")


@dataclass(frozen=True)
class GroundingConfig:
    run: RunConfig = field(default_factory=RunConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    data: DataConfig = field(default_factory=DataConfig)
    word_vectors: WordVectorConfig = field(default_factory=WordVectorConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    datasets: DatasetsConfig = field(default_factory=DatasetsConfig)  # empty: synthetic data

    def __post_init__(self) -> None:
        for f in fields(self):
            getattr(self, f.name).validate(f.name)

    # -- conversion -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return _to_plain(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "GroundingConfig":
        return _build(cls, data, prefix="")

    def with_overrides(self, overrides: Mapping[str, Any]) -> "GroundingConfig":
        """Apply ``{"a.b": value}`` overrides; values may be strings parsed as YAML."""
        tree = self.to_dict()
        for dotted, value in overrides.items():
            _set_dotted(tree, dotted, value)
        return GroundingConfig.from_dict(tree)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def fingerprint(self) -> str:
        import hashlib

        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


PROFILES_DIR = Path(__file__).parent / "profiles"


def load_config(path: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> GroundingConfig:
    """Defaults, then the YAML file (a path or a profile name such as ``paper``), then ``a.b=c`` strings."""
    tree: dict[str, Any] = GroundingConfig().to_dict()
    if path:
        file = Path(path)
        if not file.exists() and (PROFILES_DIR / f"{path}.yaml").exists():
            file = PROFILES_DIR / f"{path}.yaml"
        if not file.exists():
            raise ConfigError(f"config file not found: {path} (nor a profile in {PROFILES_DIR})")
        loaded = yaml.safe_load(file.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
        _merge(tree, loaded, prefix="")
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like section.key=value")
        key, value = item.split("=", 1)
        _set_dotted(tree, key.strip(), yaml.safe_load(value))
    return GroundingConfig.from_dict(tree)


def dotted_keys(cls: type = GroundingConfig, prefix: str = "") -> dict[str, Any]:
    """All leaf keys of the config as ``{"section.key": type}``, for validating search spaces."""
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for f in fields(cls):
        key = f"{prefix}{f.name}"
        if is_dataclass(hints[f.name]):
            out.update(dotted_keys(hints[f.name], key + "."))
        else:
            out[key] = hints[f.name]
    return out


# -- helpers ------------------------------------------------------------------------------------
def _to_plain(obj: Any) -> Any:
    if is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, tuple):
        return [_to_plain(v) for v in obj]
    return obj


def _merge(tree: dict[str, Any], update: Mapping[str, Any], prefix: str) -> None:
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if key not in tree:
            raise ConfigError(f"{dotted}: unknown config key")
        if isinstance(tree[key], dict):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{dotted}: expected a mapping")
            _merge(tree[key], value, dotted + ".")
        else:
            tree[key] = value


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"{dotted}: unknown config key")
        if i == len(parts) - 1:
            if isinstance(node[part], dict):
                raise ConfigError(f"{dotted}: is a section, set one of its keys")
            node[part] = value
        else:
            node = node[part]


def _build(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or '<root>'}: expected a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    for key in data:
        if key not in names:
            raise ConfigError(f"{prefix}{key}: unknown config key")
    kwargs = {}
    for f in fields(cls):
        if f.name in data:
            kwargs[f.name] = _coerce(hints[f.name], data[f.name], f"{prefix}{f.name}")
    try:
        return cls(**kwargs)
    except TypeError as err:  # pragma: no cover - defensive
        raise ConfigError(f"{prefix.rstrip('.')}: {err}") from err


def _coerce(tp: Any, value: Any, key: str) -> Any:
    if is_dataclass(tp):
        return _build(tp, value, key + ".")
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            choices = ", ".join(m.value for m in tp)
            raise ConfigError(f"{key}: {value!r} is not one of {choices}") from None
    origin = typing.get_origin(tp)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        item_tp = args[0]
        return tuple(_coerce(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    return value  # pragma: no cover


def paper_extensions(cfg: GroundingConfig) -> list[str]:
    """The switches that are on and are not the paper's method (README "Localization"), as ``key=value``.

    Choices the paper leaves open (ROI pool, ROI features, negative ROIs, sizes) are not extensions.
    """
    out = []
    if ClassifierInput(cfg.model.classifier_input) is not ClassifierInput.POOLED_FEATURES:
        out.append(f"model.classifier_input={ClassifierInput(cfg.model.classifier_input).value}")
    if cfg.model.score_prior:
        out.append("model.score_prior=true")
    if SRoiPooling(cfg.model.s_roi_pooling) is not SRoiPooling.MEAN:
        out.append(f"model.s_roi_pooling={SRoiPooling(cfg.model.s_roi_pooling).value}")
    if cfg.loss.alpha_distill > 0:
        out.append(f"loss.alpha_distill={cfg.loss.alpha_distill:g}")
    return out


def write_resolved(config: GroundingConfig, out_dir: str | Path) -> Path:
    """Write ``config.yaml`` next to a job's outputs (atomically)."""
    from grounding.data.storage import atomic_write_text

    path = Path(out_dir) / "config.yaml"
    atomic_write_text(path, config.to_yaml())
    return path


__all__ = [
    "Backbone",
    "ConfigError",
    "DatasetsConfig",
    "GroundingConfig",
    "PrepareEngine",
    "SimilarityNorm",
    "TrainMode",
    "dotted_keys",
    "load_config",
    "replace",
    "write_resolved",
]
