"""RViz showing a camera image and the panoptic overlay.

    ros2 launch panoptic_ros rviz.launch.py image:=/camera/image_raw overlay:=/panoptic_node/overlay
    ros2 launch panoptic_ros rviz.launch.py fastdds_profile:=shm   # same host as the node, 2 MP frames whole

The topics of config/panoptic.rviz are replaced by the launch arguments in a temporary copy.
"""

import os
import tempfile

import yaml

ARGUMENTS = {
    "image": ("/camera/image_raw", "camera image topic"),
    "overlay": ("/panoptic_node/overlay", "the node's overlay topic"),
    "fastdds_profile": ("", "Fast DDS profile of RViz: empty none, 'shm' the package's shared-memory profile (this "
                            "host only), or an XML path"),
}
DISPLAYS = {"Camera": "image", "Panoptic overlay": "overlay"}  # RViz display name -> argument giving its topic


def rviz_config(text: str, topics: dict) -> str:
    """The RViz config ``text`` with the Topic of each display in DISPLAYS set from ``topics`` (argument -> topic)."""
    config = yaml.safe_load(text)
    for display in config["Visualization Manager"]["Displays"]:
        if display.get("Name") in DISPLAYS:
            display["Topic"]["Value"] = topics[DISPLAYS[display["Name"]]]
    return yaml.safe_dump(config, sort_keys=False)


def _setup(context):
    from ament_index_python.packages import get_package_share_directory
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node

    from panoptic_ros.ros.env import profile_environment

    share = get_package_share_directory("panoptic_ros")
    with open(os.path.join(share, "config", "panoptic.rviz")) as f:
        text = rviz_config(f.read(), {name: LaunchConfiguration(name).perform(context) for name in DISPLAYS.values()})
    path = os.path.join(tempfile.mkdtemp(prefix="panoptic_rviz_"), "panoptic.rviz")
    with open(path, "w") as f:
        f.write(text)
    environment = profile_environment(LaunchConfiguration("fastdds_profile").perform(context))
    return [Node(package="rviz2", executable="rviz2", name="rviz2", arguments=["-d", path],
                 additional_env=environment, output="screen")]


def generate_launch_description():
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, OpaqueFunction

    return LaunchDescription([DeclareLaunchArgument(name, default_value=default, description=description)
                              for name, (default, description) in ARGUMENTS.items()] + [OpaqueFunction(function=_setup)])
