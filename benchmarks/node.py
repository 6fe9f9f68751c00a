"""The node's cost beyond the Predictor, and end-to-end latency as another process sees it.

1. Overhead at 2048x1024 (rgb8): the node in this process with a subscriber on every output, one frame at a
   time; the node's own stage timings give decode + publish (all six outputs, overlay rendering included) next
   to the Predictor's stages. Target: decode + publish under 5 ms per frame.
2. End to end at 1024x512: the node as its own process (as launched on a vehicle), frames published at 10 Hz by
   this process; latency = publish -> receipt of the PanopticSegmentation, and frames the node dropped because
   it was busy (it serves the newest frame).

    python -m benchmarks.node [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import rclpy
import torch
from rclpy.executors import MultiThreadedExecutor
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from panoptic_ros.datasets import read_rgb
from panoptic_ros.demo import DEFAULT_IMAGE
from panoptic_ros.evaluation import percentiles
from panoptic_ros.msg import PanopticSegmentation
from panoptic_ros.ros.conversions import image_msg
from panoptic_ros.ros.env import configure_ros_environment
from panoptic_ros.ros.panoptic_node import OUTPUTS, PanopticNode, qos
from panoptic_ros.ros.replay import NODE, Recorder, start_node, stop_node

from .common import environment, report


def rgb8_msg(rgb: np.ndarray, stamp_ns: int) -> Image:
    header = Header(frame_id="camera")
    header.stamp.sec, header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    return image_msg(rgb, "rgb8", header)


def wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return False


def subscribe_outputs(connection, domain: str, outputs: list[str]) -> None:
    """Child process: subscribe to ``outputs`` of the node (as RViz or a planner would) and report each message."""
    import os

    os.environ["ROS_DOMAIN_ID"] = domain
    configure_ros_environment()
    rclpy.init()
    node = rclpy.create_node("bench_subscriber")
    subscriptions = [node.create_subscription(OUTPUTS[name], f"/panoptic_node/{name}",
                                              lambda m, n=name: connection.send(n), 5) for name in outputs]
    connection.send("ready")
    while not all(s.get_publisher_count() for s in subscriptions):  # matched with the node now running
        rclpy.spin_once(node, timeout_sec=0.05)
    connection.send("matched")
    rclpy.spin(node)


def forward(connection, got: list) -> None:
    """Collect the subscriber process's reports until it ends."""
    try:
        while True:
            got.append(connection.recv())
    except (EOFError, OSError):
        pass


def overhead(rgb: np.ndarray, frames: int, outputs: list[str]) -> dict:
    """Median stage timings of the in-process node over ``frames`` frames, each awaited (no drops); the outputs'
    subscriber runs in another process, so its deserialisation does not compete with the node for the GIL."""
    import multiprocessing
    import os

    parent, child = multiprocessing.get_context("spawn").Pipe()
    subscriber = multiprocessing.get_context("spawn").Process(
        target=subscribe_outputs, args=(child, os.environ.get("ROS_DOMAIN_ID", "0"), outputs), daemon=True)
    subscriber.start()
    parent.recv()
    node = PanopticNode(parameter_overrides=[Parameter("device", value="cpu")])
    tester = rclpy.create_node("bench_tester")
    got = []
    threading.Thread(target=forward, args=(parent, got), daemon=True).start()
    pub = tester.create_publisher(Image, "/image", qos("reliable", 1))
    info = tester.create_publisher(CameraInfo, "/camera_info", qos("reliable", 1))
    executor = MultiThreadedExecutor()
    for n in (node, tester):
        executor.add_node(n)
    threading.Thread(target=executor.spin, daemon=True).start()
    # The subscriber's own count: the node's could still include a subscriber process of an earlier run.
    if not wait(lambda: "matched" in got and pub.get_subscription_count() and info.get_subscription_count(), 60):
        raise RuntimeError("the node and the subscriber process did not discover each other within 60 s")
    for _ in range(60):  # camera_info until it arrives: also proves the node's subscriptions are live
        info.publish(CameraInfo(width=rgb.shape[1], height=rgb.shape[0]))
        if wait(lambda: node._cameras[""].camera_info is not None, 1):
            break
    else:
        raise RuntimeError("the node received no camera_info within 60 s")
    for k in range(frames + 2):  # two warm-up frames
        got.clear()
        pub.publish(rgb8_msg(rgb, k))
        if not wait(lambda: len(got) == len(outputs), 60):
            raise RuntimeError(f"frame {k}: {len(got)} of {len(outputs)} outputs arrived within 60 s")
    latency = {stage: list(v)[2:] for stage, v in node._cameras[""].stats.latency.items()}
    executor.shutdown()
    node.stop_serving()
    node.destroy_node()
    tester.destroy_node()
    subscriber.terminate()
    median = {stage: float(np.median(v)) for stage, v in latency.items()}
    node_ms = median["decode"] + median["publish"]
    return {"frames": len(latency["total"]), "median_ms": median, "node_overhead_ms": node_ms,
            "node_overhead_share": node_ms / median["total"]}


def end_to_end(rgb: np.ndarray, frames: int, rate_hz: float) -> dict:
    """Latency and drops with the node in its own process, frames published at ``rate_hz``."""
    log = Path(tempfile.mkdtemp(prefix="bench_node_")) / "node.log"
    process = start_node("/bench/image", None, {"device": "cpu"}, log)
    node = rclpy.create_node("bench_e2e")
    recorder = Recorder(node, {"panoptic": PanopticSegmentation})
    pub = node.create_publisher(Image, "/bench/image", qos("reliable", 1))
    spin = lambda: rclpy.spin_once(node, timeout_sec=0.01)  # noqa: E731
    deadline = time.monotonic() + 120
    while not (recorder.connected() and pub.get_subscription_count()) and time.monotonic() < deadline:
        spin()
    if process.poll() is not None or time.monotonic() >= deadline:
        raise RuntimeError(f"node process did not come up; see {log}")
    for _ in range(20):
        spin()
    sent = {}
    start = time.monotonic()
    for k in range(frames):
        while time.monotonic() < start + k / rate_hz:
            spin()
        stamp = 1_000_000_000 + k
        msg = rgb8_msg(rgb, stamp)
        sent[stamp] = time.time()
        pub.publish(msg)
    settle = time.monotonic() + 5
    while time.monotonic() < settle and max(sent) not in recorder.received["panoptic"]:
        spin()
    stop_node(process)
    received = recorder.received["panoptic"]
    latency = [(received[s][0] - t) * 1e3 for s, t in sent.items() if s in received]
    node.destroy_node()
    return {"frames_published": frames, "frames_received": len(latency), "frames_dropped": frames - len(latency),
            "rate_hz": rate_hz, "latency_ms": percentiles(latency), "node_log": str(log)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    opts = parser.parse_args()
    configure_ros_environment()
    rclpy.init()
    frame = read_rgb(DEFAULT_IMAGE)
    try:
        big = cv2.resize(frame, (2048, 1024), interpolation=cv2.INTER_LINEAR)
        cost = overhead(big, 3 if opts.quick else 20, list(OUTPUTS))
        no_overlay = overhead(big, 3 if opts.quick else 20, [name for name in OUTPUTS if name != "overlay"])
        e2e = end_to_end(cv2.resize(frame, (1024, 512), interpolation=cv2.INTER_LINEAR), 10 if opts.quick else 100, 10.0)
    finally:
        rclpy.try_shutdown()
    cpu = torch.device("cpu")
    payload = {**environment(cpu), "overhead_2048x1024": cost, "overhead_2048x1024_without_overlay": no_overlay,
               "end_to_end_1024x512": e2e}
    stages = ", ".join(f"{k} {v:.1f}" for k, v in cost["median_ms"].items())
    lat = e2e["latency_ms"]
    lines = [f"# panoptic node on {payload['cpu']} ({payload['commit']})", "",
             "| measurement | result | target |", "|---|---|---|",
             f"| node overhead (decode + publish of all outputs), 2048x1024 rgb8 | {cost['node_overhead_ms']:.1f} ms, "
             f"{100 * cost['node_overhead_share']:.1f}% of {cost['median_ms']['total']:.0f} ms total | < 5 ms |",
             f"| the same without an overlay subscriber (rendered only while subscribed) | "
             f"{no_overlay['node_overhead_ms']:.1f} ms, {100 * no_overlay['node_overhead_share']:.1f}% | < 5 ms |",
             f"| end to end at {e2e['rate_hz']:g} Hz, 1024x512, node process | p50 {lat['p50']:.0f} / p90 {lat['p90']:.0f} / "
             f"p99 {lat['p99']:.0f} ms; {e2e['frames_dropped']} of {e2e['frames_published']} frames dropped "
             f"(newest served) | report |", "", f"median ms per stage at 2048x1024: {stages}", ""]
    report("node", cpu, payload, lines)


if __name__ == "__main__":
    main()
