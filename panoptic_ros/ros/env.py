"""ROS 2 process environment: the opt-in shared-memory Fast DDS profile, and the isolation tools and tests use.

The node itself sets nothing: discovery range, domain and transport are the deployment's choice (a vehicle with a
second computer, remote RViz / Foxglove or Docker bridge networks needs the defaults).

- :func:`profile_environment` gives the variables that make Fast DDS load a profile. Fast DDS 3 (Kilted) reads
  ``FASTDDS_DEFAULT_PROFILES_FILE``; Fast DDS 2 (Humble, Jazzy) reads only ``FASTRTPS_DEFAULT_PROFILES_FILE``, so
  both are set. The launch file's ``fastdds_profile`` argument uses it.
- :func:`isolate` is for this package's tests, benchmarks and offline replay: loopback-only discovery, plus the
  shared-memory profile, where the caller has not set them.
"""

import os
from collections.abc import MutableMapping
from pathlib import Path

#: Fast DDS profile shipped with the package: a 64 MB shared-memory transport (2 MP frames arrive whole under
#: best-effort QoS) plus UDPv4 on 127.0.0.1 only. Opt-in: it confines the process to this host.
FASTDDS_PROFILE = Path(__file__).with_name("fastdds_shm.xml")
PROFILE_VARIABLES = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")


def profile_environment(profile: str) -> dict[str, str]:
    """The environment that loads ``profile``: ``""`` none, ``"shm"`` the package's :data:`FASTDDS_PROFILE`, or the
    path of an XML file. Raises ``FileNotFoundError`` for a missing file."""
    if not profile:
        return {}
    path = FASTDDS_PROFILE if profile == "shm" else Path(profile)
    if not path.is_file():
        raise FileNotFoundError(f"Fast DDS profile {path} does not exist")
    return {name: str(path) for name in PROFILE_VARIABLES}


def isolate(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Keep this process's ROS 2 traffic on this host: ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` and the
    shared-memory profile, each only where ``environ`` has no value yet. Call before ``rclpy.init()``.

    Returns:
        The variables as they are now set.
    """
    environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    profile = environ.get(PROFILE_VARIABLES[0]) or environ.get(PROFILE_VARIABLES[1]) or str(FASTDDS_PROFILE)
    for name, value in profile_environment(profile).items():
        environ.setdefault(name, value)
    return {key: environ[key] for key in ("ROS_AUTOMATIC_DISCOVERY_RANGE", *PROFILE_VARIABLES)}
