"""Start the panoptic segmentation node (a lifecycle node), and RViz with rviz:=true.

    ros2 launch panoptic_ros panoptic.launch.py image:=/camera/image_raw device:=cuda rviz:=true
    ros2 launch panoptic_ros panoptic.launch.py cameras:=front,rear params_file:=/path/to/my.yaml
    ros2 launch panoptic_ros panoptic.launch.py autostart:=false   # nav2's lifecycle_manager drives it
    ros2 launch panoptic_ros panoptic.launch.py fastdds_profile:=shm  # 2 MP frames over shared memory, this host only
    ros2 launch panoptic_ros panoptic.launch.py publication_mode:=SYNCHRONOUS  # rmw_fastrtps' own default
    ros2 launch panoptic_ros panoptic.launch.py mode:=accuracy weights:=/path/to/panoptic_fpn.safetensors

Launch arguments left empty keep the value of the parameters file (config/<mode>.yaml by default). The helpers
above generate_launch_description need no ROS install, so the tests check them directly.
"""

import os

ARGUMENTS = {  # name: (default, description)
    "mode": ("fast", "fast (PanoNet) or accuracy (Panoptic-FPN-IMP); selects config/<mode>.yaml"),
    "params_file": ("", "parameters YAML; empty: the package's config/<mode>.yaml"),
    "weights": ("", "weights file of the mode's family; empty: the params file's (the shipped checkpoint of the mode; "
                    "the accuracy mode ships none yet)"),
    "device": ("", "auto, cpu, cuda or cuda:N; empty: the params file's"),
    "cameras": ("", "comma-separated camera namespaces, each read on <camera>/image; empty: one camera on 'image'"),
    "image": ("/camera/image_raw", "input topic of the single camera (remaps 'image'; camera_info is its sibling)"),
    "namespace": ("", "namespace of the node"),
    "autostart": ("true", "true: the node configures and activates itself; false: it waits for lifecycle "
                          "transitions (nav2 lifecycle_manager)"),
    "fastdds_profile": ("", "Fast DDS profile of the node process: empty none (the deployment's environment), 'shm' "
                            "the package's shared-memory profile (loopback only), or an XML path"),
    "publication_mode": ("ASYNCHRONOUS", "rmw_fastrtps publication mode of the node process "
                                         "(RMW_FASTRTPS_PUBLICATION_MODE): ASYNCHRONOUS, a Fast DDS thread sends the "
                                         "2-4 MB outputs and the node's thread goes back to work; SYNCHRONOUS, "
                                         "rmw_fastrtps' default; AUTO; empty: the environment's. Other RMWs ignore it"),
    "rviz": ("false", "true: start RViz showing the input and the overlay"),
}
PUBLICATION_MODES = ("ASYNCHRONOUS", "SYNCHRONOUS", "AUTO")


def node_parameters(values: dict) -> dict:
    """Parameter overrides for the launch arguments that were set; they apply on top of the params file."""
    overrides = {"mode": values["mode"], "autostart": values["autostart"].lower() in ("true", "1", "yes")}
    for argument, parameter in (("weights", "weights"), ("device", "device")):
        if values[argument]:
            overrides[parameter] = values[argument]
    if values["cameras"]:
        overrides["input.cameras"] = [c.strip() for c in values["cameras"].split(",") if c.strip()]
    return overrides


def params_file(values: dict, share: str) -> str:
    """``params_file`` if set, else the package's ``config/<mode>.yaml`` (``mode:=accuracy``: config/accuracy.yaml)."""
    return values["params_file"] or os.path.join(share, "config", f"{values['mode']}.yaml")


def remappings(values: dict) -> list:
    """The single camera's input topics; with ``cameras`` the inputs are <camera>/image in the node namespace."""
    if values["cameras"]:
        return []
    image = values["image"]
    return [("image", image), ("image/compressed", f"{image}/compressed"),
            ("camera_info", f"{os.path.dirname(image).rstrip('/')}/camera_info")]


def rviz_topics(values: dict) -> dict:
    """The first camera's input image and overlay topics, and the node's Fast DDS profile, for RViz."""
    namespace = values["namespace"].strip("/")
    camera = node_parameters(values).get("input.cameras", [""])[0]
    image = values["image"] if not values["cameras"] else "/" + "/".join(p for p in (namespace, camera, "image") if p)
    return {"image": image,
            "overlay": "/" + "/".join(p for p in (namespace, "panoptic_node", camera, "overlay") if p),
            "fastdds_profile": values["fastdds_profile"]}


def process_environment(values: dict) -> dict:
    """Environment of the node process for ``fastdds_profile`` (``panoptic_ros.ros.env.profile_environment``:
    both the Fast DDS 3 and the Fast DDS 2 variable, so Humble, Jazzy and Kilted all load it) and
    ``publication_mode`` (read by rmw_fastrtps on Humble, Jazzy and Kilted alike)."""
    from panoptic_ros.ros.env import profile_environment

    environment = profile_environment(values["fastdds_profile"])
    mode = values["publication_mode"].strip().upper()
    if mode:
        if mode not in PUBLICATION_MODES:
            raise ValueError(f"publication_mode must be one of {', '.join(PUBLICATION_MODES)} or empty, "
                             f"got {values['publication_mode']!r}")
        environment["RMW_FASTRTPS_PUBLICATION_MODE"] = mode
    return environment


def _setup(context):
    from ament_index_python.packages import get_package_share_directory
    from launch.actions import IncludeLaunchDescription
    from launch.launch_description_sources import PythonLaunchDescriptionSource
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import LifecycleNode

    values = {name: LaunchConfiguration(name).perform(context) for name in ARGUMENTS}
    share = get_package_share_directory("panoptic_ros")
    actions = [LifecycleNode(package="panoptic_ros", executable="panoptic_node", name="panoptic_node",
                             namespace=values["namespace"],
                             parameters=[params_file(values, share), node_parameters(values)],
                             remappings=remappings(values), output="screen", emulate_tty=True,
                             additional_env=process_environment(values))]
    if values["rviz"].lower() in ("true", "1", "yes"):
        actions.append(IncludeLaunchDescription(
            PythonLaunchDescriptionSource(os.path.join(share, "launch", "rviz.launch.py")),
            launch_arguments=rviz_topics(values).items()))
    return actions


def generate_launch_description():
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, OpaqueFunction

    return LaunchDescription([DeclareLaunchArgument(name, default_value=default, description=description)
                              for name, (default, description) in ARGUMENTS.items()] + [OpaqueFunction(function=_setup)])
