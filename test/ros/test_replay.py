"""The project's bag player and the realtime replay through a node process, on the embedded sample bag."""

import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import rclpy
import torch
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from sensor_msgs.msg import CameraInfo, Image

from panoptic_ros.bags import BagError, BagReader
from panoptic_ros.evaluate_bag import DEFAULT_BAG, DEFAULT_LABEL_TOPICS, ground_truth_from_labels
from panoptic_ros.evaluation import EvaluationAccumulator
from panoptic_ros.predictor import Predictor
from panoptic_ros.ros.bag_player import BagPlayer, parse_remap
from panoptic_ros.ros.replay import replay

TOPIC = "/camera/image_raw"


def test_player_publishes_every_message_in_order_at_the_recorded_pace():
    context = Context()
    rclpy.init(context=context)
    try:
        node = rclpy.create_node("player_test", context=context)
        got = []
        node.create_subscription(Image, "/replayed/image", lambda m: got.append((time.monotonic(), m)), 10)
        infos = []
        node.create_subscription(CameraInfo, "/camera/camera_info", infos.append, 10)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        thread = threading.Thread(target=executor.spin, daemon=True)
        thread.start()
        with BagReader(DEFAULT_BAG) as reader:
            now = [0.0]  # a fake clock that the player's waits advance: pacing without timing the test
            player = BagPlayer(node, reader, [TOPIC, "/camera/camera_info"], rate=0.5,
                               remap={TOPIC: "/replayed/image"}, clock=lambda: now[0])
            assert player.wait_for_subscribers(1, 10, lambda: time.sleep(0.05))
            due = []
            player.publishers[TOPIC].publish = lambda data, publish=player.publishers[TOPIC].publish: (
                due.append(now[0]), publish(data))
            assert player.play(spin=lambda seconds: now.__setitem__(0, now[0] + seconds)) == 10
            expected = [(f.stamp_ns, f.rgb) for f in reader.frames(TOPIC)]
        deadline = time.monotonic() + 5
        while len(got) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        executor.shutdown()
        stamps = [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for _, m in got]
        assert stamps == [s for s, _ in expected] and len(infos) == 5
        np.testing.assert_array_equal(np.frombuffer(got[0][1].data, np.uint8).reshape(360, 480, 3), expected[0][1])
        assert np.diff(due) == pytest.approx(np.full(4, 2 / 15))  # 15 Hz recorded, played at half speed
        assert [s for _, s in player.published[TOPIC]] == stamps
        with BagReader(DEFAULT_BAG) as reader, pytest.raises(BagError, match="no topic '/nope'; the bag has: /camera"):
            BagPlayer(node, reader, ["/nope"])
    finally:
        rclpy.try_shutdown(context=context)


def test_parse_remap():
    assert parse_remap(["/a:=/b"]) == {"/a": "/b"}
    with pytest.raises(SystemExit, match="expected FROM:=TO"):
        parse_remap(["/a=/b"])


def test_realtime_replay_through_the_node_equals_the_offline_predictor(tmp_path):
    summary = replay(DEFAULT_BAG, tmp_path, TOPIC, rate=0.2, params={"device": "cpu", "backend": "eager"},
                     evaluate=True)
    assert summary["node_exit_code"] == 0 and summary["published"] == 5
    assert summary["received"] + summary["dropped"] == 5 and summary["received"] >= 1
    assert len(list(tmp_path.glob("overlay_*.png"))) == summary["received"]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["images"] == summary["received"] and (tmp_path / "latency.png").is_file()
    assert report["latency_ms"]["end_to_end"]["p50"] >= report["latency_ms"]["node"]["p50"] > 0

    # The same frames through the Predictor in this process: the node must give identical results. With the
    # node's thread count, a fresh process's: convolution sums depend on it (one pixel of the sample's third frame
    # changes class at 1 thread against 2), and an earlier test in this process may have set another.
    fresh = int(subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], check=True,
                               capture_output=True, text=True).stdout)
    threads = torch.get_num_threads()
    predictor = Predictor.from_weights(device="cpu", backend="eager")
    received = {int(p.stem.split("_")[-1]) for p in tmp_path.glob("overlay_*.png")}
    accumulator = EvaluationAccumulator(predictor.table)
    torch.set_num_threads(fresh)
    try:
        with BagReader(DEFAULT_BAG) as reader:
            for frame in reader.frames(TOPIC, list(DEFAULT_LABEL_TOPICS)):
                if frame.stamp_ns in received:
                    truth = ground_truth_from_labels(frame.labels, predictor.table)
                    accumulator.add(predictor(frame.rgb), truth.semantic, truth.panoptic)
    finally:
        torch.set_num_threads(threads)
    direct = accumulator.metrics()
    assert report["miou"] == pytest.approx(direct["miou"], abs=1e-12)
    assert report["panoptic"]["all"]["pq"] == pytest.approx(direct["panoptic"]["all"]["pq"], abs=1e-12)
    assert report["instance_ap"]["ap"] == pytest.approx(direct["instance_ap"]["ap"], abs=1e-12, nan_ok=True)


def test_the_network_artefact_is_built_before_the_node_starts(tmp_path, tiny_weights):
    """A realtime replay must not time an export on its first frame: ``prepare_network`` builds the artefact the
    node will load, for the bag's frame size at the node's network scale (input_scale 0.5: 240x180 of the
    sample's 480x360, which PanoNet runs at 256x192, its sides rounded to multiples of 32), in the node's cache;
    nothing for eager."""
    from panoptic_ros.backends import artefact_paths
    from panoptic_ros.ros.replay import prepare_network

    params = {"device": "cpu", "weights": str(tiny_weights), "backend": "onnxruntime", "input_scale": 0.5,
              "backend_cache_dir": str(tmp_path)}
    with BagReader(DEFAULT_BAG) as reader:
        prepare_network(reader, TOPIC, params)
        prepare_network(reader, TOPIC, {**params, "backend": "eager", "backend_cache_dir": str(tmp_path / "eager")})
    predictor = Predictor.from_weights(tiny_weights, device="cpu", backend="onnxruntime", cache_dir=tmp_path)
    assert predictor.network_size(360, 480, 0.5) == (192, 256)
    model_path, key_path = artefact_paths(tmp_path, predictor.network.key(192, 256))
    assert model_path.is_file() and key_path.is_file() and not (tmp_path / "eager").exists()


def test_make_demos_replay_parameters_reach_the_node_and_the_artefact_step(tmp_path, monkeypatch):
    """``make demo`` replays with ``weights`` empty (the shipped ones): the node's command line gets ``""`` (YAML's
    empty string), and ``prepare_network`` reads the empty value as the node does (it used to get a literal
    '""' and fail: 'weights file "" does not exist')."""
    from panoptic_ros.ros import replay as module

    commands = []
    monkeypatch.setattr(module.subprocess, "Popen", lambda command, **kwargs: commands.append(command))
    module.start_node(TOPIC, None, {"device": "cpu", "weights": ""}, tmp_path / "node.log")
    assert commands[0][-4:] == ["-p", "device:=cpu", "-p", 'weights:=""']
    with BagReader(DEFAULT_BAG) as reader:
        module.prepare_network(reader, TOPIC, {"device": "cpu", "weights": "", "backend": "eager"})
