"""The Fast DDS profile loads cleanly and configure_ros_environment() sets defaults without overriding."""

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

from panoptic_ros.ros.env import FASTDDS_PROFILE, configure_ros_environment

NS = {"dds": "http://www.eprosima.com"}


def test_defaults_are_set_when_unset():
    environ = {}
    assert configure_ros_environment(environ) == {
        "FASTDDS_DEFAULT_PROFILES_FILE": str(FASTDDS_PROFILE),
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
    }
    assert environ["FASTDDS_DEFAULT_PROFILES_FILE"] == str(FASTDDS_PROFILE)


def test_values_already_set_are_kept():
    environ = {"FASTDDS_DEFAULT_PROFILES_FILE": "/etc/site_profile.xml", "ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET"}
    configure_ros_environment(environ)
    assert environ == {"FASTDDS_DEFAULT_PROFILES_FILE": "/etc/site_profile.xml",
                       "ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET"}


def test_profile_is_loopback_only_with_a_64mb_shared_memory_segment():
    root = ET.parse(FASTDDS_PROFILE).getroot()
    transports = {t.findtext("dds:transport_id", namespaces=NS): t
                  for t in root.iterfind(".//dds:transport_descriptor", NS)}
    kinds = {t.findtext("dds:type", namespaces=NS) for t in transports.values()}
    assert kinds == {"SHM", "UDPv4"}
    for t in transports.values():
        if t.findtext("dds:type", namespaces=NS) == "SHM":
            assert int(t.findtext("dds:segment_size", namespaces=NS)) == 64 * 1024 * 1024
        else:
            allowed = [i.get("name") for i in t.iterfind("dds:interfaces/dds:allowlist/dds:interface", NS)]
            assert allowed == ["127.0.0.1"]
    participant = root.find(".//dds:participant", NS)
    assert participant.get("is_default_profile") == "true"
    assert participant.findtext("dds:rtps/dds:useBuiltinTransports", namespaces=NS) == "false"
    used = [t.text for t in participant.iterfind("dds:rtps/dds:userTransports/dds:transport_id", NS)]
    assert sorted(used) == sorted(transports)


PROBE = """
import time, rclpy
from panoptic_ros.ros.env import configure_ros_environment
configure_ros_environment()
from std_msgs.msg import String
rclpy.init()
node = rclpy.create_node("profile_probe")
got = []
node.create_subscription(String, "probe", got.append, 10)
pub = node.create_publisher(String, "probe", 10)
deadline = time.monotonic() + 10
while not got and time.monotonic() < deadline:
    pub.publish(String(data="hello"))
    rclpy.spin_once(node, timeout_sec=0.05)
print("received", len(got))
rclpy.shutdown()
"""


def test_fast_dds_accepts_the_profile():
    """Fast DDS reports XML errors on stderr and then silently uses its defaults, so look for them there."""
    env = {k: v for k, v in os.environ.items() if k != "FASTDDS_DEFAULT_PROFILES_FILE"}
    result = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "XMLPARSER" not in result.stderr and "Error" not in result.stderr, result.stderr
    assert re.search(r"^received [1-9]", result.stdout, re.M), result.stdout + result.stderr
