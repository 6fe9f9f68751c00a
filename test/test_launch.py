"""Launch files and the RViz config, checked without a ROS install: they compile, what they pass to the node are
node parameters, and RViz shows topics the node publishes."""

import importlib.util
from pathlib import Path

import pytest
import yaml

from panoptic_ros.node_config import NodeConfig, flatten, node_config_from_parameters

REPO = Path(__file__).resolve().parents[1]


def load(name):
    spec = importlib.util.spec_from_file_location(name.replace(".", "_"), REPO / "launch" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the launch imports are inside functions: none needed here
    return module


@pytest.fixture
def panoptic():
    return load("panoptic.launch.py")


def defaults(module, **values):
    return {**{name: default for name, (default, _) in module.ARGUMENTS.items()}, **values}


@pytest.mark.parametrize("name", ["panoptic.launch.py", "rviz.launch.py"])
def test_launch_files_define_a_description(name):
    module = load(name)
    assert callable(module.generate_launch_description)
    assert all(len(spec) == 2 and spec[1] for spec in module.ARGUMENTS.values())  # default and description


@pytest.mark.parametrize("values", [{}, {"device": "cuda:0", "weights": "/w.safetensors"},
                                    {"cameras": "front, rear", "mode": "accuracy"}])
def test_every_parameter_passed_exists_in_the_node(panoptic, values):
    overrides = panoptic.node_parameters(defaults(panoptic, **values))
    assert set(overrides) <= set(flatten(NodeConfig()))
    node_config_from_parameters(overrides)  # and is valid


def test_cameras_argument_and_remappings(panoptic):
    values = defaults(panoptic, cameras="front, rear")
    assert panoptic.node_parameters(values)["input.cameras"] == ["front", "rear"]
    assert panoptic.remappings(values) == []
    assert dict(panoptic.remappings(defaults(panoptic))) == {
        "image": "/camera/image_raw", "image/compressed": "/camera/image_raw/compressed",
        "camera_info": "/camera/camera_info"}
    assert panoptic.rviz_topics(defaults(panoptic, cameras="front", namespace="car", fastdds_profile="shm")) == {
        "image": "/car/front/image", "overlay": "/car/panoptic_node/front/overlay", "fastdds_profile": "shm"}


def test_autostart_and_fastdds_profile_arguments(panoptic):
    from panoptic_ros.ros.env import FASTDDS_PROFILE

    assert panoptic.node_parameters(defaults(panoptic))["autostart"] is True
    assert panoptic.node_parameters(defaults(panoptic, autostart="false"))["autostart"] is False
    assert panoptic.process_environment(defaults(panoptic)) == {}  # the deployment's network settings
    assert panoptic.process_environment(defaults(panoptic, fastdds_profile="shm")) == {
        "FASTDDS_DEFAULT_PROFILES_FILE": str(FASTDDS_PROFILE), "FASTRTPS_DEFAULT_PROFILES_FILE": str(FASTDDS_PROFILE)}
    source = (REPO / "launch" / "panoptic.launch.py").read_text()
    assert "LifecycleNode(" in source and "additional_env=process_environment(values)" in source


def test_rviz_config_shows_the_input_and_the_nodes_overlay(panoptic):
    rviz = load("rviz.launch.py")
    text = (REPO / "config" / "panoptic.rviz").read_text()
    displays = {d["Name"]: d for d in yaml.safe_load(text)["Visualization Manager"]["Displays"]}
    assert set(rviz.DISPLAYS) <= set(displays)
    topics = panoptic.rviz_topics(defaults(panoptic))
    assert displays["Camera"]["Topic"]["Value"] == topics["image"] == rviz.ARGUMENTS["image"][0]
    assert displays["Panoptic overlay"]["Topic"]["Value"] == topics["overlay"] == "/panoptic_node/overlay"
    assert all(d["Class"] == "rviz_default_plugins/Image" for d in displays.values())
    changed = yaml.safe_load(rviz.rviz_config(text, {"image": "/a/image", "overlay": "/b/overlay"}))
    assert [d["Topic"]["Value"] for d in changed["Visualization Manager"]["Displays"]] == ["/a/image", "/b/overlay"]


def test_config_and_launch_are_installed_by_cmake():
    cmake = (REPO / "CMakeLists.txt").read_text()
    assert "foreach(dir launch config)" in cmake and "panoptic_node:panoptic_ros.ros.panoptic_node" in cmake


def test_mode_accuracy_picks_the_accuracy_params_file(panoptic):
    """mode:=accuracy reads config/accuracy.yaml (a complete accuracy-mode parameter set); params_file wins."""
    path = panoptic.params_file(defaults(panoptic, mode="accuracy"), str(REPO))
    assert path == str(REPO / "config" / "accuracy.yaml")
    params = yaml.safe_load(Path(path).read_text())["/**"]["ros__parameters"]
    assert params["mode"] == "accuracy" and panoptic.node_parameters(defaults(panoptic, mode="accuracy"))["mode"] == "accuracy"
    assert panoptic.params_file(defaults(panoptic, mode="accuracy", params_file="/my.yaml"), str(REPO)) == "/my.yaml"
    assert panoptic.params_file(defaults(panoptic), str(REPO)).endswith("config/fast.yaml")
