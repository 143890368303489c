"""``grounding config``: the resolved config and the documented fields (issue 16)."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from grounding.config import GroundingConfig, load_config
from grounding.config.reference import _comments_by_field, field_docs
from rayjobs import config as config_job


def test_every_config_field_is_documented():
    """A field added without a comment beside or above it fails here (the comment is its documentation)."""
    docs = field_docs()
    assert len(docs) == len({d.key for d in docs}) > 100
    assert [d.key for d in docs if not d.doc] == []


@dataclasses.dataclass(frozen=True)
class _Example:
    plain: int = 1  # trailing comment
    # a comment above
    # on two lines
    above: str = "x"
    both: float = 0.5  # and trailing
    bare: bool = False


def test_comments_are_read_beside_and_above_each_field():
    assert _comments_by_field(_Example) == {
        "plain": "trailing comment", "above": "a comment above on two lines", "both": "and trailing"}


def test_show_prints_the_resolved_config_a_job_would_write(capsys):
    assert config_job.main(["--show", "--config", "claim", "--set", "optim.lr=3e-4"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    expected = load_config("claim", ["optim.lr=3e-4"])
    assert GroundingConfig.from_dict(shown) == expected
    assert shown["optim"]["lr"] == 3e-4 and shown["synth"]["n_site_b"] == expected.synth.n_site_b != 360


def test_fields_marks_only_the_keys_the_config_changes(capsys):
    assert config_job.main(["--fields", "--set", "optim.lr=0.01"]) == 0
    out = capsys.readouterr().out
    changed = [line.strip() for line in out.splitlines() if "now:" in line]
    assert changed == ["optim.lr (float) = 0.001   now: 0.01"]
    assert "detector.roi_pool (top_anchors | per_location) = 'top_anchors'" in out
    assert "[optim] AdamW and early stopping" in out


def test_bad_key_is_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        config_job.main(["--show", "--set", "optim.lrr=1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["config error: optim.lrr: unknown config key"]
