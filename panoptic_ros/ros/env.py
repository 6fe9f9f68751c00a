"""Process environment for ROS 2: loopback-only discovery and the shared-memory Fast DDS profile.

Call :func:`configure_ros_environment` before ``rclpy.init()``; Fast DDS and rcl read these variables when the
first context and participant are created.
"""

import os
from collections.abc import MutableMapping
from pathlib import Path

#: Fast DDS profile shipped with the package: 64 MB shared-memory transport plus UDPv4 on 127.0.0.1 only.
FASTDDS_PROFILE = Path(__file__).with_name("fastdds_shm.xml")


def configure_ros_environment(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Set panoptic_ros's ROS 2 defaults in ``environ`` where the user has not set them.

    Sets ``FASTDDS_DEFAULT_PROFILES_FILE`` to :data:`FASTDDS_PROFILE` and ``ROS_AUTOMATIC_DISCOVERY_RANGE`` to
    ``LOCALHOST``. Values already present are kept, so a deployment can bring its own profile or range.

    Returns:
        The two variables as they are now set.
    """
    if not FASTDDS_PROFILE.is_file():
        raise FileNotFoundError(f"Fast DDS profile {FASTDDS_PROFILE} is missing from the installed package")
    environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(FASTDDS_PROFILE))
    environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    return {key: environ[key] for key in ("FASTDDS_DEFAULT_PROFILES_FILE", "ROS_AUTOMATIC_DISCOVERY_RANGE")}
