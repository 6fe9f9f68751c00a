"""Play a bag's topics through rclpy at the recorded pace: what `ros2 bag play` does, for machines without rosbag2
(none of rosbag2, the ros2 CLI or launch is installable from PyPI), and what `make demo` feeds the node with.

    python -m panoptic_ros.ros.bag_player BAG [--topics /camera/image_raw /camera/camera_info] [--rate 0.5]
        [--remap /camera/image_raw:=/image] [--wait-subscribers 1] [--loop] [--reliability best_effort]

Messages are published as the bag stores them (serialised CDR, header stamps unchanged), at their recorded log-time
spacing divided by ``--rate``. Reading the bag uses ``panoptic_ros.bags`` (rosbags), without decoding images.
"""

from __future__ import annotations

import argparse
import importlib
import time
from collections.abc import Callable
from pathlib import Path

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.serialization import deserialize_message

from panoptic_ros.bags import BagError, BagReader
from panoptic_ros.evaluate_bag import DEFAULT_BAG

from .panoptic_node import qos


def message_class(msgtype: str):
    """The rclpy class of a ``pkg/msg/Name`` type."""
    package, _, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{package}.msg"), name)


class BagPlayer:
    """Publishers for ``topics`` of ``reader`` on ``node`` (renamed by ``remap``), and a paced replay."""

    def __init__(self, node: Node, reader: BagReader, topics: list[str] | None = None, *, rate: float = 1.0,
                 remap: dict[str, str] | None = None, reliability: str = "reliable", depth: int = 10,
                 clock: Callable[[], float] = time.monotonic, record: bool = True):
        if rate <= 0:
            raise ValueError(f"rate {rate} must be > 0")
        available = reader.topics
        topics = topics or sorted(available)
        missing = [name for name in topics if name not in available]
        if missing:
            raise BagError(f"{reader.path}: no topic {missing[0]!r}; the bag has: {reader.describe_topics()}")
        self.reader, self.rate, self.topics, self.clock, self.record = reader, rate, topics, clock, record
        remap = remap or {}
        self._classes = {name: message_class(available[name].msgtype) for name in topics}
        self.publishers = {name: node.create_publisher(self._classes[name], remap.get(name, name),
                                                       qos(reliability, depth)) for name in topics}
        # per topic: (wall-clock publish time, header stamp in ns or None) of the latest pass only, so a looping
        # player holds one pass's records, not every pass's (it would grow without bound with --loop)
        self.published: dict[str, list[tuple[float, int | None]]] = {name: [] for name in topics}
        self.passes = 0  # calls of play() so far

    def wait_for_subscribers(self, count: int, timeout: float, spin: Callable[[], None]) -> bool:
        """Until every publisher has ``count`` subscribers (``spin`` runs between checks)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(p.get_subscription_count() >= count for p in self.publishers.values()):
                return True
            spin()
        return False

    def play(self, spin: Callable[[float], None] | None = None) -> int:
        """Publish every message once, paced by log time / rate; ``spin(seconds)`` is called instead of sleeping
        (so a caller can service its own subscriptions). Returns the number published. With ``record`` (the
        default), ``published`` holds when each message of this pass was handed to ``publish`` and its header
        stamp; the records of an earlier pass are dropped when a new one starts."""
        start_wall = start_log = None
        count = 0
        self.published = {name: [] for name in self.topics}
        self.passes += 1
        for topic, _, log_time, data in self.reader.messages(set(self.topics)):
            if start_log is None:
                start_wall, start_log = self.clock(), log_time
            due = start_wall + (log_time - start_log) / 1e9 / self.rate
            while (wait := due - self.clock()) > 0:
                (spin or time.sleep)(min(wait, 0.05))
            sent = time.time()  # before publish: a synchronous publish of a big frame may return after its receipt
            self.publishers[topic].publish(data)
            if self.record:
                self.published[topic].append((sent, self._stamp(topic, data)))
            count += 1
        return count

    def _stamp(self, topic: str, data: bytes) -> int | None:
        header = getattr(deserialize_message(data, self._classes[topic]), "header", None)
        return None if header is None else header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


def parse_remap(items: list[str]) -> dict[str, str]:
    pairs = [item.split(":=") for item in items]
    bad = [item for item, pair in zip(items, pairs) if len(pair) != 2 or not all(pair)]
    if bad:
        raise SystemExit(f"--remap {bad[0]!r}: expected FROM:=TO")
    return dict(pairs)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bag", nargs="?", type=Path, default=DEFAULT_BAG, help="bag (default: the embedded sample)")
    parser.add_argument("--topics", nargs="+", help="topics to play (default: all)")
    parser.add_argument("--rate", type=float, default=1.0, help="speed factor of the recorded pace")
    parser.add_argument("--remap", nargs="+", default=[], metavar="FROM:=TO")
    parser.add_argument("--reliability", choices=("reliable", "best_effort"), default="reliable")
    parser.add_argument("--wait-subscribers", type=int, default=0, help="wait until each topic has this many")
    parser.add_argument("--loop", action="store_true")
    opts, ros_args = parser.parse_known_args(argv)
    rclpy.init(args=ros_args)
    node = rclpy.create_node("bag_player")
    try:
        with BagReader(opts.bag) as reader:
            player = BagPlayer(node, reader, opts.topics, rate=opts.rate, remap=parse_remap(opts.remap),
                               reliability=opts.reliability, record=False)  # the CLI reads no records
            spin = lambda seconds=0.1: rclpy.spin_once(node, timeout_sec=seconds)  # noqa: E731
            if opts.wait_subscribers and not player.wait_for_subscribers(opts.wait_subscribers, 60, spin):
                raise SystemExit(f"no {opts.wait_subscribers} subscriber(s) on {player.topics} within 60 s")
            while True:
                count = player.play(spin)
                node.get_logger().info(f"published {count} messages from {opts.bag}")
                if not opts.loop:
                    break
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
