"""Replay a bag into the real node, as a vehicle would run it, and record what comes back.

    python -m panoptic_ros.ros.replay [BAG] [--topic /camera/image_raw] [--out demo_output/node] [--rate 1.0]
        [--evaluate] [--device auto] [--weights W]

Starts ``panoptic_node`` as its own process (shared-memory Fast DDS profile, loopback only), plays the bag's
image topic (and its camera_info) with :class:`BagPlayer` at the recorded pace times ``--rate``, and records the
node's outputs in this process. Writes one overlay PNG per received frame and ``summary.json``: frames published,
received and dropped, end-to-end latency (player publish -> receipt of the panoptic message) and the node's own
latency. ``--evaluate`` also scores the received results against the bag's label topics and writes the report
of ``panoptic_ros.evaluate_bag`` (``python -m panoptic_ros.evaluate_bag --realtime`` runs this). ``make demo``
runs it on the embedded sample bag.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import rclpy
import torch
from rclpy.node import Node
from sensor_msgs.msg import Image

from panoptic_ros.bags import CAMERA_INFO, BagReader
from panoptic_ros.classes import TABLES, ClassTable
from panoptic_ros.evaluate_bag import DEFAULT_BAG, DEFAULT_LABEL_TOPICS, NoGroundTruth, ground_truth_from_labels
from panoptic_ros.evaluation import EvaluationAccumulator, describe_commit, percentiles, write_report
from panoptic_ros.images import image_to_array
from panoptic_ros.make_bag import DEFAULT_TOPIC
from panoptic_ros.node_config import node_config_from_parameters
from panoptic_ros.msg import PanopticSegmentation
from panoptic_ros.postprocess import Segment, ids_from_segment_map
from panoptic_ros.predictor import SHIPPED_WEIGHTS, Prediction, Predictor, mode_of_weights

from .bag_player import BagPlayer
from .env import isolate
from .panoptic_node import qos

NODE = "replay_panoptic_node"
OUTPUTS = {"panoptic": PanopticSegmentation, "semantic": Image, "instance": Image, "overlay": Image}


class Recorder:
    """Subscribes to the node's outputs and keeps each message with its receipt time, by header stamp."""

    def __init__(self, node: Node, outputs=OUTPUTS):
        self.received: dict[str, dict[int, tuple[float, object]]] = {name: {} for name in outputs}
        self.subscriptions = {name: node.create_subscription(msg_type, f"/{NODE}/{name}",
                                                             lambda msg, n=name: self._keep(n, msg), qos("reliable", 10))
                              for name, msg_type in outputs.items()}

    def _keep(self, name: str, msg) -> None:
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        self.received[name][stamp] = (time.time(), msg)

    def connected(self) -> bool:
        return all(s.get_publisher_count() > 0 for s in self.subscriptions.values())


def start_node(topic: str, info_topic: str | None, params: dict[str, str], log_path: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "panoptic_ros.ros.panoptic_node", "--ros-args", "-r", f"__node:={NODE}",
               "-r", f"image:={topic}"]
    if info_topic:
        command += ["-r", f"camera_info:={info_topic}"]
    for name, value in params.items():
        command += ["-p", f"{name}:={value}" if value != "" else f'{name}:=""']  # an empty string is "" in YAML
    log_path.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(command, stdout=log_path.open("w"), stderr=subprocess.STDOUT)


def stop_node(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGINT)
    try:
        return process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def table_of(msg: PanopticSegmentation) -> ClassTable:
    names = [c.name for c in msg.classes]
    for table in TABLES.values():
        if [c.name for c in table.classes] == names:
            return table
    raise ValueError(f"the node's classes {names} match no known class table")


def prediction_from_messages(panoptic: PanopticSegmentation, semantic: Image, instance: Image) -> Prediction:
    """The node's result for one frame as a Prediction (what the evaluators score): segment ids from the 16UC1
    segment image, instance k for the pixels of segment index k (``~/instance``)."""
    pixels = {name: image_to_array(m.encoding, m.height, m.width, m.step, m.data, bool(m.is_bigendian))
              for name, m in (("panoptic", panoptic.panoptic), ("semantic", semantic), ("instance", instance))}
    segments = [Segment(s.id, s.class_id, s.class_name, s.is_thing, float(s.score), s.area,
                        (s.bbox.x_offset, s.bbox.y_offset, s.bbox.width, s.bbox.height)) for s in panoptic.segments]
    ids = ids_from_segment_map(pixels["panoptic"], [s.id for s in segments])
    return Prediction(torch.from_numpy(pixels["semantic"].copy()),
                      torch.from_numpy(pixels["instance"].astype(np.int64) - 1), torch.from_numpy(ids), segments,
                      torch.from_numpy(pixels["panoptic"].view(np.int16).copy()))


def replay(bag: Path, out: Path, topic: str = DEFAULT_TOPIC, rate: float = 1.0, params: dict | None = None,
           evaluate: bool = False, label_topics=DEFAULT_LABEL_TOPICS, startup_timeout: float = 120.0) -> dict:
    """Play ``bag`` into a fresh node process and record its outputs; returns the summary (see module doc)."""
    isolate()  # an offline evaluation: its node and player stay on this host, off the vehicle's network
    with BagReader(bag) as reader:
        topics = reader.topics
        info = next((t for t, i in topics.items() if i.msgtype == CAMERA_INFO and
                     t.rsplit("/", 1)[0] == topic.rsplit("/", 1)[0]), None)
        reader.check_topic(topic, ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage"))
        params = {"device": "auto", **(params or {})}
        prepare_network(reader, topic, params)
        process = start_node(topic, info, params, out / "node.log")
        rclpy.init()
        node = rclpy.create_node("replay")
        spin = lambda seconds=0.05: rclpy.spin_once(node, timeout_sec=seconds)  # noqa: E731
        try:
            recorder = Recorder(node)
            player = BagPlayer(node, reader, [topic] + ([info] if info else []), rate=rate)
            deadline = time.monotonic() + startup_timeout
            while not (recorder.connected() and player.wait_for_subscribers(1, 0.1, spin)):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the node did not come up (exit code {process.poll()}); see {out / 'node.log'}")
            time.sleep(0.5)  # let the node's publishers match the recorder before the first frame
            player.play(spin)
            last = max((stamp for _, stamp in player.published[topic]), default=None)
            settle = time.monotonic() + 10.0  # the newest frame is always processed: wait for its result
            while last is not None and last not in recorder.received["panoptic"] and time.monotonic() < settle:
                spin()
            for _ in range(10):
                spin()
        finally:
            code = stop_node(process)
            node.destroy_node()
            rclpy.try_shutdown()
        latency_ms = latencies(recorder, player, topic)
        summary = summarize(recorder, player, topic, code, latency_ms,
                            f"node process, device {params.get('device', 'auto')}")
        write_overlays(recorder, out)
        if evaluate:
            summary["evaluation"] = evaluate_received(reader, topic, label_topics, recorder, out, summary, latency_ms)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def prepare_network(reader: BagReader, topic: str, params: dict) -> None:
    """Build the node's network artefact for the bag's frame size before the node starts (loaded from the cache
    if current), so that a realtime replay never times an export in its first frame: the backend, device,
    precision, weights, cache and network scale of ``params`` as the node reads them. Nothing for eager."""
    config = node_config_from_parameters(params, NODE)
    weights = config.weights or SHIPPED_WEIGHTS.get(config.mode)
    first = next(reader.frames(topic), None)
    if weights is None or first is None:
        return  # the node reports these itself
    predictor = Predictor.from_weights(weights, device=config.device, precision=config.precision,
                                       backend=config.backend, cache_dir=config.backend_cache_dir or None,
                                       build_missing=config.backend_build_missing)
    if predictor.backend != "eager" and config.backend_build_missing:
        height, width = first.rgb.shape[:2]
        predictor.network.prepare(*predictor.network_size(height, width, config.network_scale(width, predictor.scale)))


def latencies(recorder: Recorder, player: BagPlayer, topic: str) -> dict[str, list[float]]:
    """ms per received frame: ``end_to_end`` (player publish -> receipt of the panoptic message) and ``node``
    (the message's own latency field: node receipt -> publication)."""
    received = recorder.received["panoptic"]
    sent = {stamp: sent_at for sent_at, stamp in player.published[topic]}
    return {"end_to_end": [(received[s][0] - sent[s]) * 1e3 for s in sent if s in received],
            "node": [m.latency.sec * 1e3 + m.latency.nanosec / 1e6 for _, m in received.values()]}


def summarize(recorder: Recorder, player: BagPlayer, topic: str, exit_code: int, latency_ms: dict[str, list[float]],
              device: str) -> dict:
    published, received = len(player.published[topic]), len(recorder.received["panoptic"])
    return {"published": published, "received": received, "dropped": published - received,
            "latency_ms": {k: percentiles(v) for k, v in latency_ms.items()},
            "device": device, "node_exit_code": exit_code, "rate_factor": player.rate}


def write_overlays(recorder: Recorder, out: Path) -> None:
    for k, stamp in enumerate(sorted(recorder.received["overlay"])):
        msg = recorder.received["overlay"][stamp][1]
        rgb = image_to_array(msg.encoding, msg.height, msg.width, msg.step, msg.data)
        cv2.imwrite(str(out / f"overlay_{k:03d}_{stamp}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def evaluate_received(reader: BagReader, topic: str, label_topics, recorder: Recorder, out: Path, summary: dict,
                      latency_ms: dict[str, list[float]]) -> dict:
    """Score the node's received results against the bag's labels; frames the node dropped are not scored."""
    received = {name: recorder.received[name] for name in ("panoptic", "semantic", "instance")}
    table = None
    accumulator = None
    missing = 0
    for frame in reader.frames(topic, [t for t in label_topics if t in reader.topics]):
        if not all(frame.stamp_ns in r for r in received.values()):
            continue
        messages = [received[name][frame.stamp_ns][1] for name in ("panoptic", "semantic", "instance")]
        if table is None:
            table = table_of(messages[0])
            accumulator = EvaluationAccumulator(table)
        try:
            truth = ground_truth_from_labels(frame.labels, table)
        except NoGroundTruth:
            missing += 1
            continue
        accumulator.add(prediction_from_messages(*messages), truth.semantic, truth.panoptic)
    report = {**(accumulator.metrics() if accumulator else {"images": 0}), "realtime": summary,
              "latency_ms": summary["latency_ms"], "device": summary["device"],
              "frames_without_ground_truth": missing, "bag": str(reader.path), "topic": topic,
              "commit": describe_commit()}
    write_report(report, f"Realtime replay of {reader.path.name} through the node", out, latency_ms)
    return {k: report[k] for k in ("images", "miou", "panoptic") if k in report}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bag", nargs="?", type=Path, default=DEFAULT_BAG, help="bag (default: the embedded sample)")
    parser.add_argument("--topic", default=DEFAULT_TOPIC, help="image topic to play")
    parser.add_argument("--out", type=Path, default=Path("demo_output/node"))
    parser.add_argument("--rate", type=float, default=1.0, help="speed factor of the recorded pace")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--weights", default="", help="weights for the node (default: shipped)")
    parser.add_argument("--evaluate", action="store_true", help="score the received results against the bag's labels")
    parser.add_argument("--label-topics", nargs="+", default=list(DEFAULT_LABEL_TOPICS))
    opts = parser.parse_args(argv)
    params = {"device": opts.device, "weights": opts.weights}
    if opts.weights:  # the node's mode is the weights' (fast or accuracy)
        params["mode"] = mode_of_weights(opts.weights)
    summary = replay(opts.bag, opts.out, opts.topic, opts.rate, params, opts.evaluate, opts.label_topics)
    print(json.dumps(summary, indent=2))
    print(f"wrote {summary['received']} overlays and summary.json to {opts.out}/")


if __name__ == "__main__":
    main()
