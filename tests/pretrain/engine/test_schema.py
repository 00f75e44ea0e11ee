"""The configuration schema: types refused when the config is built, choices and ranges checked once, documented."""

from __future__ import annotations

import os

import pytest

from pretrain.engine.config import ConfigError, load_config
from pretrain.engine.schema import fields_of, reference_markdown

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def test_docs_config_reference_is_current():
    with open(os.path.join(REPO, "docs", "config.md"), encoding="utf-8") as f:
        assert f.read() == reference_markdown(), "run: python -m pretrain.engine.schema > docs/config.md"


def test_every_key_is_documented():
    undocumented = [key for key, f in fields_of() if len(f.metadata.get("doc", "")) < 8]
    assert undocumented == [] and len(list(fields_of())) > 70


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.checkpoint_every=abc", r"train.checkpoint_every in command line: Value 'abc' .* Integer"),
        ("optim.epochs=abc", r"optim.epochs in command line: Value 'abc' .* Float"),
        ("crops.photometric=maybe", r"crops.photometric in command line"),
    ],
)
def test_a_value_of_the_wrong_type_names_its_key_and_source(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config([], ["train.data=x", override])


def test_a_wrong_type_in_a_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  log_every: often\n")
    with pytest.raises(ConfigError, match=rf"train.log_every in {bad}"):
        load_config([str(bad)], ["train.data=x"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.checkpoint_every=0", "train.checkpoint_every must be >= 1, got 0"),
        ("train.log_every=0", "train.log_every must be >= 1, got 0"),
        ("train.batch_size_per_gpu=-4", "train.batch_size_per_gpu must be >= 1, got -4"),
        ("masking.content_fraction=1.5", "masking.content_fraction must be <= 1, got 1.5"),
        ("optim.base_lr=nan", "optim.base_lr must be finite, got nan"),
        ("crops.n_global=3", "crops.n_global must be <= 2, got 3"),
        ("loss.targets=softmax", r"loss.targets must be one of \['sinkhorn_knopp', 'centering'\], got 'softmax'"),
    ],
)
def test_a_value_out_of_its_range_or_choices_is_refused_before_training(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config([], ["train.data=x", override])


def test_the_image_source_is_required():
    with pytest.raises(ConfigError, match=r"train.data must be set"):
        load_config([], [])


def test_integers_given_for_float_keys_become_floats():
    cfg = load_config([], ["train.data=x", "model.layerscale=0", "optim.epochs=3", "optim.warmup_epochs=1"])
    assert cfg.model.layerscale == 0.0 and isinstance(cfg.model.layerscale, float)
    assert isinstance(cfg.optim.epochs, float) and cfg.optim.epochs == 3.0
