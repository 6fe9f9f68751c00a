"""The node's parameters as dataclasses: defaults, the shipped params files, validation messages, overrides."""

from pathlib import Path

import pytest
import yaml

from panoptic_ros.classes import CAMVID, CITYSCAPES
from panoptic_ros.config import ConfigError, DetectionPostprocessConfig, PostprocessConfig
from panoptic_ros.node_config import (
    NodeConfig,
    flatten,
    is_runtime_parameter,
    node_config_from_parameters,
)

CONFIG = Path(__file__).resolve().parents[1] / "config"


def params_file(name: str) -> dict:
    """Dotted parameter names of a shipped params file (``/**: ros__parameters:``), flattened as rcl does."""
    out = {}

    def walk(mapping: dict, prefix: str) -> None:
        for key, value in mapping.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                out[f"{prefix}{key}"] = value

    walk(yaml.safe_load((CONFIG / name).read_text())["/**"]["ros__parameters"], "")
    return out


def test_defaults_round_trip_through_parameter_names():
    assert node_config_from_parameters(flatten(NodeConfig())) == NodeConfig()
    assert {"output.overlay", "input.cameras", "filter.score_threshold", "diagnostics.period"} <= set(flatten(NodeConfig()))


@pytest.mark.parametrize("name", ["fast.yaml", "accuracy.yaml"])
def test_shipped_params_files_name_only_node_parameters(name):
    params = params_file(name)
    known = set(flatten(NodeConfig())) | {f"bandwidths.{CAMVID[c].name}" for c in CAMVID.thing_ids}
    assert set(params) <= known, set(params) - known
    config = node_config_from_parameters(params)
    assert config.mode == name.split(".")[0]


@pytest.mark.parametrize("table", [CAMVID, CITYSCAPES])
def test_fast_yaml_serves_any_class_table_with_bandwidths_from_the_weights(table):
    """fast.yaml names no class: a Cityscapes model configures with it, each bandwidth taken from its weights."""
    config = node_config_from_parameters(params_file("fast.yaml"))
    weights = PostprocessConfig(bandwidths={c: 0.5 + 0.1 * k for k, c in enumerate(table.thing_ids)})
    assert config.postprocess(weights, table).bandwidths == weights.bandwidths


def test_fast_yaml_states_every_parameter():
    params = params_file("fast.yaml")
    assert set(flatten(NodeConfig())) <= set(params)


@pytest.mark.parametrize("name, value, message", [
    ("device", "gpu", "device = 'gpu' is not allowed: expected auto, cpu, cuda or cuda:N"),
    ("input.transport", "h264", "input.transport = 'h264' is not allowed"),
    ("input.cameras", ["front", "front"], "input.cameras"),
    ("input.cameras", ["/abs"], "input.cameras"),
    ("output.overlay_alpha", 2.0, r"overlay_alpha = 2.0 is not allowed: expected a number in \[0, 1\]"),
    ("filter.score_threshold", -0.1, "score_threshold"),
    ("precision", "int8", "precision = 'int8'"),
    ("bandwidths.car", -1.0, "bandwidths.car = -1.0"),
    ("outputs.semantic", True, "unknown key"),
    ("input_scale", "big", "input_scale = 'big'"),
])
def test_bad_values_are_rejected_naming_key_and_allowed_values(name, value, message):
    with pytest.raises(ConfigError, match=message):
        node_config_from_parameters({**flatten(NodeConfig()), name: value})


def test_integer_values_for_float_parameters_are_accepted():
    assert node_config_from_parameters({"filter.score_threshold": 1, "bandwidths.car": 2}).bandwidths == {"car": 2.0}


def test_network_scale_caps_the_width():
    config = NodeConfig(input_scale=0.5, max_network_width=512)
    assert config.network_scale(800) == 0.5
    assert config.network_scale(2048) == 0.25
    assert config.network_scale(800, weights_scale=1.1) == 0.5  # the parameter, when set, over the weights'


def test_input_scale_zero_is_the_weights_own_and_the_cap_applies_to_it():
    config = NodeConfig(max_network_width=512)
    assert config.input_scale == 0.0  # the default: the scale the weights name
    assert config.network_scale(320, weights_scale=1.1) == 1.1
    assert config.network_scale(320) == 1.0  # weights that name none
    assert config.network_scale(1024, weights_scale=1.1) == 0.5
    with pytest.raises(ConfigError, match=r"input_scale = 0.01 is not allowed: expected 0 \(the weights'\) or"):
        node_config_from_parameters({"input_scale": 0.01})


def test_postprocess_overrides_by_class_name():
    weights = PostprocessConfig(bandwidths={8: 1.0, 9: 0.7}, min_instance_pixels=20, stuff_min_area=64)
    config = node_config_from_parameters({"bandwidths.pedestrian": 0.3, "filter.stuff_min_area": 0})
    post = config.postprocess(weights, CAMVID)
    assert post.bandwidths == {8: 1.0, 9: 0.3} and post.stuff_min_area == 0 and post.min_instance_pixels == 20
    with pytest.raises(ConfigError, match="bandwidths.road is not a thing class"):
        node_config_from_parameters({"bandwidths.road": 1.0}).postprocess(weights, CAMVID)


def test_runtime_parameters():
    assert all(map(is_runtime_parameter, ["filter.score_threshold", "bandwidths.car", "output.overlay", "input_scale"]))
    assert not any(map(is_runtime_parameter, ["device", "weights", "input.cameras", "output.reliability", "mode"]))


def test_readme_documents_every_parameter():
    readme = (CONFIG.parent / "README.md").read_text()
    section = readme[readme.index("### Parameters"):readme.index("### Diagnostics")]
    missing = [name for name in flatten(NodeConfig()) if f"`{name}`" not in section]
    assert not missing, missing


def test_accuracy_weights_take_stuff_min_area_and_refuse_the_fast_modes_clustering_settings():
    config = node_config_from_parameters(params_file("accuracy.yaml"))
    weights = DetectionPostprocessConfig(stuff_min_area=64)
    assert config.postprocess(weights, CAMVID) == weights
    changed = node_config_from_parameters({**params_file("accuracy.yaml"), "filter.stuff_min_area": 5})
    assert changed.postprocess(weights, CAMVID).stuff_min_area == 5
    with pytest.raises(ConfigError, match="the accuracy mode has no mean-shift clustering"):
        node_config_from_parameters({"bandwidths.car": 1.0}).postprocess(weights, CAMVID)
    with pytest.raises(ConfigError, match="filter.min_instance_pixels = 3 is not allowed"):
        node_config_from_parameters({"filter.min_instance_pixels": 3}).postprocess(weights, CAMVID)
