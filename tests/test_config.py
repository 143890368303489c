import pytest

from grounding.config import ConfigError, GroundingConfig, SimilarityNorm, dotted_keys, load_config


def test_defaults_roundtrip_through_dict():
    cfg = GroundingConfig()
    assert GroundingConfig.from_dict(cfg.to_dict()) == cfg


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 0.01\nmodel:\n  similarity_norm: softmax\n")
    cfg = load_config(str(path), ["optim.lr=3e-4", "model.classifier_hidden=[32, 16]"])
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.model.similarity_norm is SimilarityNorm.SOFTMAX
    assert cfg.model.classifier_hidden == (32, 16)


@pytest.mark.parametrize(
    "override, key",
    [("model.nope=1", "model.nope"), ("nope.x=1", "nope.x"), ("loss.beta=9", "loss.beta"),
     ("model.similarity_norm=l3", "model.similarity_norm"), ("optim.batch_size=abc", "optim.batch_size"),
     ("data.split_fractions=[0.5, 0.5, 0.5]", "data.split_fractions")],
)
def test_bad_keys_and_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_unknown_key_in_yaml_is_an_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  learning_rate: 0.01\n")
    with pytest.raises(ConfigError, match=r"optim\.learning_rate: unknown"):
        load_config(str(path))


def test_dotted_keys_cover_every_leaf():
    keys = dotted_keys()
    assert "loss.beta" in keys and "model.lambda_a" in keys
    assert not any(k.endswith(".") for k in keys)


def test_claim_profile_is_sized_to_decide_the_papers_claim():
    """>= 3,000 report-only site-B images, >= 400 held-out boxed images with boxes (positives get boxes;
    measured 0.535 of the boxed images have one at site_b_positive_fraction 0.6), site A above the default."""
    from grounding.config import GroundingConfig, load_config

    claim, default = load_config("claim").synth, GroundingConfig().synth
    assert claim.n_site_b - claim.n_site_b_boxed >= 3000
    assert claim.n_site_b_boxed * claim.site_b_positive_fraction * (0.535 / 0.6) >= 400
    assert claim.n_site_a > default.n_site_a


def test_paper_extensions_name_only_the_non_paper_switches():
    from grounding.config import GroundingConfig, paper_extensions

    from grounding.config import load_config

    # the default adopts one extension since 2026-12-03 (README "Localization"); the paper profile none
    assert paper_extensions(GroundingConfig()) == ["model.s_roi_pooling=alpha"]
    assert paper_extensions(load_config("paper")) == []
    paper = GroundingConfig().with_overrides({"model.s_roi_pooling": "mean"})
    open_choices = paper.with_overrides({"loss.negative_rois": "other_study", "detector.num_rois": 100})
    assert paper_extensions(open_choices) == []  # choices the paper leaves open are not extensions
    ext = paper.with_overrides({"model.classifier_input": "per_roi_logits", "model.score_prior": True})
    assert paper_extensions(ext) == ["model.classifier_input=per_roi_logits", "model.score_prior=true"]
