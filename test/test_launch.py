"""Launch files and the RViz config, checked without a ROS install: they compile, what they pass to the node are
node parameters, and RViz shows topics the node publishes."""

import importlib.util
import sys
import types
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
    # no network settings of its own: the deployment's; asynchronous publication by default
    assert panoptic.process_environment(defaults(panoptic)) == {"RMW_FASTRTPS_PUBLICATION_MODE": "ASYNCHRONOUS"}
    assert panoptic.process_environment(defaults(panoptic, fastdds_profile="shm", publication_mode="")) == {
        "FASTDDS_DEFAULT_PROFILES_FILE": str(FASTDDS_PROFILE), "FASTRTPS_DEFAULT_PROFILES_FILE": str(FASTDDS_PROFILE)}
    assert panoptic.process_environment(defaults(panoptic, publication_mode="synchronous")) == {
        "RMW_FASTRTPS_PUBLICATION_MODE": "SYNCHRONOUS"}
    with pytest.raises(ValueError, match="publication_mode must be one of ASYNCHRONOUS, SYNCHRONOUS, AUTO"):
        panoptic.process_environment(defaults(panoptic, publication_mode="ASYNC"))
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


class Recorded:
    """Stands in for a launch / launch_ros class: keeps what it was constructed with."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class LaunchConfiguration:
    def __init__(self, name):
        self.name = name

    def perform(self, context):
        return context[self.name]


@pytest.fixture
def fake_launch(monkeypatch, tmp_path):
    """launch, launch_ros and ament_index_python as recorders (none has a PyPI wheel), the package share at
    tmp_path; the classes by name."""
    classes = {name: type(name, (Recorded,), {}) for name in (
        "LaunchDescription", "DeclareLaunchArgument", "OpaqueFunction", "IncludeLaunchDescription",
        "PythonLaunchDescriptionSource", "LifecycleNode", "Node")}
    modules = {"launch": ["LaunchDescription"], "launch.actions": ["DeclareLaunchArgument", "OpaqueFunction",
                                                                    "IncludeLaunchDescription"],
               "launch.launch_description_sources": ["PythonLaunchDescriptionSource"], "launch_ros": [],
               "launch_ros.actions": ["LifecycleNode", "Node"], "ament_index_python": []}
    for name, members in modules.items():
        module = types.ModuleType(name)
        module.__dict__.update({m: classes[m] for m in members})
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setitem(sys.modules, "launch.substitutions",
                        types.SimpleNamespace(LaunchConfiguration=LaunchConfiguration))
    monkeypatch.setitem(sys.modules, "ament_index_python.packages",
                        types.SimpleNamespace(get_package_share_directory=lambda package: str(tmp_path / package)))
    return classes


@pytest.mark.parametrize("name", ["panoptic.launch.py", "rviz.launch.py"])
def test_the_description_declares_every_argument_and_runs_the_setup(fake_launch, name):
    """Each argument declared with its default and description, then the setup (the test above only checked that
    ``generate_launch_description`` is callable). Kills dropping ``description=`` or an argument."""
    module = load(name)
    description = module.generate_launch_description()
    *declared, setup = description.args[0]
    assert [(d.args, d.kwargs) for d in declared] == [
        ((name,), {"default_value": default, "description": text}) for name, (default, text) in module.ARGUMENTS.items()]
    assert isinstance(setup, fake_launch["OpaqueFunction"]) and setup.kwargs == {"function": module._setup}


def test_the_setup_starts_the_lifecycle_node_with_its_parameters_and_rviz_on_request(fake_launch, panoptic, tmp_path):
    """What ``ros2 launch panoptic_ros panoptic.launch.py namespace:=car device:=cuda:0 fastdds_profile:=shm
    rviz:=true`` starts, field by field; without rviz:=true only the node. Kills a dropped namespace or
    ``emulate_tty``, a narrowed rviz:=true test and parameters in another order."""
    from panoptic_ros.ros.env import FASTDDS_PROFILE

    share = str(tmp_path / "panoptic_ros")
    values = defaults(panoptic, namespace="car", device="cuda:0", fastdds_profile="shm", rviz="true")
    node, rviz = panoptic._setup(values)
    assert isinstance(node, fake_launch["LifecycleNode"]) and node.kwargs == {
        "package": "panoptic_ros", "executable": "panoptic_node", "name": "panoptic_node", "namespace": "car",
        "parameters": [f"{share}/config/fast.yaml", {"mode": "fast", "autostart": True, "device": "cuda:0"}],
        "remappings": [("image", "/camera/image_raw"), ("image/compressed", "/camera/image_raw/compressed"),
                       ("camera_info", "/camera/camera_info")],
        "output": "screen", "emulate_tty": True,
        "additional_env": {"FASTDDS_DEFAULT_PROFILES_FILE": str(FASTDDS_PROFILE),
                           "FASTRTPS_DEFAULT_PROFILES_FILE": str(FASTDDS_PROFILE),
                           "RMW_FASTRTPS_PUBLICATION_MODE": "ASYNCHRONOUS"}}
    assert isinstance(rviz, fake_launch["IncludeLaunchDescription"])
    assert rviz.args[0].args == (f"{share}/launch/rviz.launch.py",)
    assert dict(rviz.kwargs["launch_arguments"]) == {
        "image": "/camera/image_raw", "overlay": "/car/panoptic_node/overlay", "fastdds_profile": "shm"}
    (alone,) = panoptic._setup(defaults(panoptic, params_file="/my.yaml"))
    assert alone.kwargs["parameters"] == ["/my.yaml", {"mode": "fast", "autostart": True}]
    assert alone.kwargs["namespace"] == ""
    assert alone.kwargs["additional_env"] == {"RMW_FASTRTPS_PUBLICATION_MODE": "ASYNCHRONOUS"}


def test_the_rviz_setup_writes_a_config_with_the_given_topics(fake_launch, tmp_path):
    """RViz gets ``-d`` and a copy of config/panoptic.rviz showing the given topics (kills ``arguments=[path]``)."""
    rviz = load("rviz.launch.py")
    (tmp_path / "panoptic_ros" / "config").mkdir(parents=True)
    (tmp_path / "panoptic_ros" / "config" / "panoptic.rviz").write_text((REPO / "config" / "panoptic.rviz").read_text())
    (node,) = rviz._setup({"image": "/a/image", "overlay": "/b/overlay", "fastdds_profile": ""})
    assert isinstance(node, fake_launch["Node"])
    assert {k: node.kwargs[k] for k in ("package", "executable", "name", "additional_env")} == {
        "package": "rviz2", "executable": "rviz2", "name": "rviz2", "additional_env": {}}
    flag, path = node.kwargs["arguments"]
    displays = yaml.safe_load(Path(path).read_text())["Visualization Manager"]["Displays"]
    assert flag == "-d" and [d["Topic"]["Value"] for d in displays] == ["/a/image", "/b/overlay"]
