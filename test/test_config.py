"""Configs load into typed dataclasses; bad keys and values are rejected with the key, value and what is allowed."""

from pathlib import Path

import pytest

from panoptic_ros.config import ConfigError, config_from_dict, load_config

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("panonet_*.yaml")), ids=lambda p: p.name)
def test_shipped_training_configs_load(path):
    cfg = load_config(path)
    assert cfg.model.architecture == "panonet" and cfg.model.depths == tuple(cfg.model.depths)


def test_defaults_are_the_paper_schedule():
    cfg = config_from_dict({})
    assert cfg.train.optimizer == "adadelta" and cfg.train.lr == 0.003 and cfg.model.embedding_dim == 12


@pytest.mark.parametrize(
    "data, message",
    [
        ({"model": {"widht": 0.5}}, r"config.model: unknown key\(s\) \['widht'\]"),
        ({"model": {"width": -1.0}}, r"model.width = -1.0 is not allowed: expected a number in \(0, 4\]"),
        ({"model": {"depths": [1, 1]}}, r"model.depths = \(1, 1\) is not allowed: expected four integers"),
        ({"train": {"optimizer": "lion"}}, r"train.optimizer = 'lion' is not allowed: expected one of"),
        ({"train": {"epochs": "ten"}}, r"train.epochs = 'ten' is not allowed: expected int"),
        ({"train": {"epochs": 5, "coordinate_epoch": 9}}, r"train.coordinate_epoch = 9"),
        ({"train": {"epochs": 5, "swa_epochs": 5, "swa_lr": 0.001}},
         r"train.swa_epochs = 5 is not allowed: expected an integer in \[0, epochs = 5\) \(0 = off\)"),
        ({"train": {"swa_epochs": -1}}, r"train.swa_epochs = -1 is not allowed"),
        ({"train": {"swa_epochs": 2}}, r"train.swa_lr = 0.0 is not allowed: expected a number > 0 with swa_epochs"),
        ({"postprocess": {"bandwidths": {8: 0}}}, r"postprocess.bandwidths.8 = 0.0 is not allowed"),
        ({"data": []}, r"config.data must be a mapping"),
    ],
)
def test_bad_values_name_key_value_and_allowed(data, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data)


def test_unreadable_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(bad)
