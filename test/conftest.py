"""Session-wide test environment.

ROS 2 traffic of a test run stays on loopback and in a DDS domain of its own, so concurrent runs (and robots on
the network) never see each other. Set at import, before any test module imports rclpy.
"""

import os

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
# Domains 1..100 keep Fast DDS's well-known ports out of the ephemeral range.
os.environ["ROS_DOMAIN_ID"] = str(1 + os.getpid() % 100)
