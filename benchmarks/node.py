"""The node's cost beyond the Predictor, and end-to-end latency as another process sees it.

1. Overhead at 2048x1024 (rgb8): the node in this process, one frame at a time, its outputs subscribed by another
   process. The node's own stage timings give decode (from the serialised bytes its raw subscription hands over:
   deserialisation, checks, conversion) + publish (building and publishing each subscribed output, timed one by
   one) next to the Predictor's stages. Target: under 5 ms per frame for the default outputs (~/semantic and
   ~/panoptic), with rmw_fastrtps' publication mode as launch/panoptic.launch.py sets it (``publication_mode``,
   ASYNCHRONOUS); every other output is measured too, and the default outputs also with SYNCHRONOUS publication.
2. End to end at 1024x512: the node as its own process (as launched on a vehicle), frames published at 10 Hz by
   this process; latency = publish -> receipt of the PanopticSegmentation, and frames the node dropped because
   it was busy (it serves the newest frame).

    python -m benchmarks.node [--quick]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import rclpy
import torch
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from panoptic_ros.datasets import read_rgb
from panoptic_ros.demo import DEFAULT_IMAGE
from panoptic_ros.evaluation import percentiles
from panoptic_ros.msg import PanopticSegmentation
from panoptic_ros.ros.conversions import ImageBuffer
from panoptic_ros.ros.env import isolate
from panoptic_ros.ros.panoptic_node import OUTPUTS, PanopticNode, qos
from panoptic_ros.ros.replay import NODE, Recorder, start_node, stop_node

from .common import environment, report

REPO = Path(__file__).resolve().parents[1]
# The node's network runs eager here: this benchmark measures the node around the Predictor, whose backends
# benchmarks.panonet and benchmarks.baseline compare (the default, auto, would first export an artefact).
NETWORK = "eager"


def rgb8_msg(rgb: np.ndarray, stamp_ns: int) -> Image:
    header = Header(frame_id="camera")
    header.stamp.sec, header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    return ImageBuffer("rgb8").fill(rgb, header)


def wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return False


def subscribe_outputs(connection, domain: str, outputs: list[str]) -> None:
    """Child process: subscribe to ``outputs`` of the node (as RViz or a planner would) and report each frame's
    stamp once all of them have arrived, so that the node's process is woken once per frame, after publishing."""
    os.environ["ROS_DOMAIN_ID"] = domain
    isolate()
    rclpy.init()
    node = rclpy.create_node("bench_subscriber")
    arrived: dict[tuple[int, int], set[str]] = {}

    def record(msg, name: str) -> None:
        stamp = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        names = arrived.setdefault(stamp, set())
        names.add(name)
        if len(names) == len(outputs):
            connection.send(stamp)
            del arrived[stamp]

    subscriptions = [node.create_subscription(OUTPUTS[name][0], f"/panoptic_node/{name}",
                                              lambda m, n=name: record(m, n), 5) for name in outputs]
    connection.send("ready")
    while not all(s.get_publisher_count() for s in subscriptions):  # matched with the node now running
        rclpy.spin_once(node, timeout_sec=0.05)
    connection.send("matched")
    try:
        rclpy.spin(node)
    except ExternalShutdownException:  # the benchmark terminates this process when it is done
        pass


def receive(connection, timeout: float):
    """The subscriber process's next report, waiting without holding the GIL; None after ``timeout`` s."""
    return connection.recv() if connection.poll(timeout) else None


def overhead(rgb: np.ndarray, frames: int, outputs: list[str]) -> dict:
    """Median stage timings of the in-process node over ``frames`` frames, each awaited (no drops). The outputs'
    subscriber runs in another process, so its deserialisation does not compete with the node for the GIL, and it
    reports a frame once, when all its outputs are in: no thread of this process wakes while the node publishes."""
    import multiprocessing

    parent, child = multiprocessing.get_context("spawn").Pipe()
    subscriber = multiprocessing.get_context("spawn").Process(
        target=subscribe_outputs, args=(child, os.environ.get("ROS_DOMAIN_ID", "0"), outputs), daemon=True)
    subscriber.start()
    parent.recv()
    node = PanopticNode(parameter_overrides=[Parameter("device", value="cpu"), Parameter("backend", value=NETWORK),
                                             Parameter("autostart", value=False)])
    node.trigger_configure()
    node.trigger_activate()
    tester = rclpy.create_node("bench_tester")
    pub = tester.create_publisher(Image, "/image", qos("reliable", 1))
    info = tester.create_publisher(CameraInfo, "/camera_info", qos("reliable", 1))
    executor = MultiThreadedExecutor()
    for n in (node, tester):
        executor.add_node(n)
    threading.Thread(target=executor.spin, daemon=True).start()
    # The subscriber's own count: the node's could still include a subscriber process of an earlier run.
    if receive(parent, 60) != "matched" or not wait(
            lambda: pub.get_subscription_count() and info.get_subscription_count(), 60):
        raise RuntimeError("the node and the subscriber process did not discover each other within 60 s")
    camera = node._cameras[""]
    for k in range(frames + 2):  # two warm-up frames
        msg = rgb8_msg(rgb, k)
        if "camera_info" in outputs:  # the frame's own camera_info first, as a camera driver sends it
            info.publish(CameraInfo(header=msg.header, width=rgb.shape[1], height=rgb.shape[0]))
            if not wait(lambda: camera.camera_infos and camera.camera_infos[-1].header == msg.header, 60):
                raise RuntimeError(f"frame {k}: the node received no camera_info within 60 s")
        pub.publish(msg)
        if receive(parent, 60) != (0, k):
            raise RuntimeError(f"frame {k}: its {len(outputs)} outputs did not all arrive within 60 s")
    latency = {stage: list(v)[2:] for stage, v in camera.stats.latency.items()}
    executor.shutdown()
    node.stop_serving()
    node.destroy_node()
    tester.destroy_node()
    subscriber.terminate()
    median = {stage: float(np.median(v)) for stage, v in latency.items()}
    per_frame = np.add(latency["decode"], latency["publish"])
    node_ms = float(np.median(per_frame))
    return {"frames": len(latency["total"]), "outputs": outputs, "median_ms": median, "node_overhead_ms": node_ms,
            "node_overhead_share": node_ms / median["total"], "node_overhead_ms_per_frame": per_frame.tolist()}


def repeated(runs: list[dict]) -> dict:
    """Several overhead runs (each a fresh node) as one: the median over all their frames, and each run's median,
    since the run-to-run spread on a shared machine is larger than the spread within a run."""
    frames = [ms for run in runs for ms in run["node_overhead_ms_per_frame"]]
    stages = {stage: float(np.median([run["median_ms"][stage] for run in runs])) for stage in runs[0]["median_ms"]}
    node_ms = float(np.median(frames))
    return {"frames": len(frames), "outputs": runs[0]["outputs"], "median_ms": stages, "node_overhead_ms": node_ms,
            "node_overhead_share": node_ms / stages["total"],
            "node_overhead_ms_per_run": [run["node_overhead_ms"] for run in runs], "node_overhead_ms_per_frame": frames}


def end_to_end(rgb: np.ndarray, frames: int, rate_hz: float) -> dict:
    """Latency and drops with the node in its own process, frames published at ``rate_hz``."""
    log = Path(tempfile.mkdtemp(prefix="bench_node_")) / "node.log"
    process = start_node("/bench/image", None, {"device": "cpu", "backend": NETWORK}, log)
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


DEFAULT_OUTPUTS = ["semantic", "panoptic"]


def launch_publication_mode() -> str:
    """The ``publication_mode`` default of launch/panoptic.launch.py: the node as launched on a vehicle."""
    spec = importlib.util.spec_from_file_location("panoptic_launch", REPO / "launch" / "panoptic.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ARGUMENTS["publication_mode"][0]


def synchronous_overhead(frames: int) -> dict:
    """The default outputs' overhead with rmw_fastrtps' own default, synchronous publication (the node started
    without the launch file, e.g. ``ros2 run``): publish returns once the sample is handed to the transport. The
    mode is read when the process's participant is created, so this runs in a child process."""
    env = dict(os.environ, RMW_FASTRTPS_PUBLICATION_MODE="SYNCHRONOUS")
    result = subprocess.run([sys.executable, "-m", "benchmarks.node", "--overhead-only", str(frames)], env=env,
                            capture_output=True, text=True, timeout=1200)
    if result.returncode:
        raise RuntimeError(f"the synchronous run failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--overhead-only", type=int, metavar="FRAMES",
                        help="only the default outputs' overhead over FRAMES frames, as JSON on stdout")
    opts = parser.parse_args()
    isolate()
    os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))
    # as launch/panoptic.launch.py starts the node (the --overhead-only child keeps the mode it is given)
    os.environ.setdefault("RMW_FASTRTPS_PUBLICATION_MODE", launch_publication_mode())
    rclpy.init()
    frame = read_rgb(DEFAULT_IMAGE)
    frames = 3 if opts.quick else 20
    big = cv2.resize(frame, (2048, 1024), interpolation=cv2.INTER_LINEAR)
    try:
        if opts.overhead_only:
            print(json.dumps(overhead(big, opts.overhead_only, DEFAULT_OUTPUTS)))
            return
        runs = {"default": repeated([overhead(big, frames, DEFAULT_OUTPUTS) for _ in range(1 if opts.quick else 3)]),
                "all": overhead(big, frames, list(OUTPUTS))}
        e2e = end_to_end(cv2.resize(frame, (1024, 512), interpolation=cv2.INTER_LINEAR), 10 if opts.quick else 100, 10.0)
    finally:
        rclpy.try_shutdown()
    runs["default_synchronous"] = synchronous_overhead(frames)
    cpu = torch.device("cpu")
    payload = {**environment(cpu), "quick": opts.quick, "publication_mode": os.environ["RMW_FASTRTPS_PUBLICATION_MODE"],
               "overhead_2048x1024": runs, "end_to_end_1024x512": e2e}
    default, every, synchronous = runs["default"], runs["all"], runs["default_synchronous"]
    mode = payload["publication_mode"]
    stages = ", ".join(f"{k} {v:.1f}" for k, v in default["median_ms"].items() if not k.startswith("publish."))
    lat = e2e["latency_ms"]
    lines = [f"# panoptic node on {payload['cpu']} ({payload['commit']})", "",
             "| measurement | result | target |", "|---|---|---|",
             f"| node overhead (decode + publish), default outputs ({' + '.join(DEFAULT_OUTPUTS)}), 2048x1024 rgb8, "
             f"as launched (`RMW_FASTRTPS_PUBLICATION_MODE={mode}`) | "
             f"{default['node_overhead_ms']:.1f} ms (median of {default['frames']} frames in "
             f"{len(default['node_overhead_ms_per_run'])} runs; run medians "
             f"{', '.join(f'{ms:.1f}' for ms in default['node_overhead_ms_per_run'])}), "
             f"{100 * default['node_overhead_share']:.1f}% of {default['median_ms']['total']:.0f} ms total | < 5 ms |",
             f"| the same with `RMW_FASTRTPS_PUBLICATION_MODE=SYNCHRONOUS` (rmw_fastrtps' default, e.g. `ros2 run`) | "
             f"{synchronous['node_overhead_ms']:.1f} ms | report |",
             f"| the same with every output subscribed (overlay rendering and JPEG included) | "
             f"{every['node_overhead_ms']:.1f} ms, {100 * every['node_overhead_share']:.1f}% | report |",
             f"| end to end at {e2e['rate_hz']:g} Hz, 1024x512, node process | p50 {lat['p50']:.0f} / p90 {lat['p90']:.0f} / "
             f"p99 {lat['p99']:.0f} ms; {e2e['frames_dropped']} of {e2e['frames_published']} frames dropped "
             f"(newest served) | report |", "",
             "median ms per output at 2048x1024 (every output subscribed; decode is the input's):", "",
             "| stage | ms |", "|---|---|",
             f"| decode (deserialise + convert the rgb8 frame) | {every['median_ms']['decode']:.2f} |",
             *[f"| {k} | {v:.2f} |" for k, v in every["median_ms"].items() if k.startswith("publish.")], "",
             f"median ms per stage at 2048x1024, default outputs (median of the runs): {stages}", ""]
    report("node", cpu, payload, lines)


if __name__ == "__main__":
    main()
