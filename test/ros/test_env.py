"""The Fast DDS profile loads cleanly on Fast DDS 2 and 3; tools isolate themselves, the node sets nothing."""

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from panoptic_ros.ros import panoptic_node
from panoptic_ros.ros.env import FASTDDS_PROFILE, PROFILE_VARIABLES, isolate, profile_environment

NS = {"dds": "http://www.eprosima.com"}


def test_isolate_sets_loopback_and_both_profile_variables_where_unset():
    environ = {}
    assert isolate(environ) == {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
                                "FASTDDS_DEFAULT_PROFILES_FILE": str(FASTDDS_PROFILE),
                                "FASTRTPS_DEFAULT_PROFILES_FILE": str(FASTDDS_PROFILE)}


def test_isolate_keeps_what_is_set_and_completes_a_half_set_profile(tmp_path):
    site = tmp_path / "site.xml"
    site.write_text("<profiles/>")
    environ = {"FASTRTPS_DEFAULT_PROFILES_FILE": str(site), "ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET"}
    isolate(environ)  # a Jazzy user's own profile also reaches Fast DDS 3
    assert environ == {"FASTDDS_DEFAULT_PROFILES_FILE": str(site), "FASTRTPS_DEFAULT_PROFILES_FILE": str(site),
                       "ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET"}


def test_profile_environment_is_opt_in(tmp_path):
    assert profile_environment("") == {}
    assert profile_environment("shm") == {name: str(FASTDDS_PROFILE) for name in PROFILE_VARIABLES}
    with pytest.raises(FileNotFoundError, match="missing.xml does not exist"):
        profile_environment(str(tmp_path / "missing.xml"))


def test_the_node_process_sets_no_network_variables(monkeypatch):
    """main() leaves discovery range and transport to the deployment (here it stops before spinning)."""
    for name in ("ROS_AUTOMATIC_DISCOVERY_RANGE", *PROFILE_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    before = dict(os.environ)

    def stop(node):
        raise KeyboardInterrupt

    monkeypatch.setattr(panoptic_node.rclpy, "spin", stop)
    panoptic_node.main(["--ros-args", "-p", "autostart:=false"])
    assert dict(os.environ) == before


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
from panoptic_ros.ros.env import isolate
isolate()
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
    env = {k: v for k, v in os.environ.items() if k not in PROFILE_VARIABLES}
    result = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "XMLPARSER" not in result.stderr and "Error" not in result.stderr, result.stderr
    assert re.search(r"^received [1-9]", result.stdout, re.M), result.stdout + result.stderr
