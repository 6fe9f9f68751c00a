"""The panoptic node through real rclpy: a tester node publishes images and checks what comes back."""

import array
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest
import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.context import Context
from rclpy.executors import MultiThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.serialization import serialize_message
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header

from panoptic_ros.backends import resolve_backend
from panoptic_ros.checkpoint import read_weights, save_state, save_weights
from panoptic_ros.config import config_from_dict
from panoptic_ros.images import RGB_ENCODINGS, rgb_to_compressed, rgb_to_image
from panoptic_ros.msg import PanopticSegmentation
from panoptic_ros.models import build_model
from panoptic_ros.predictor import DEFAULT_WEIGHTS, Predictor
from panoptic_ros.ros import panoptic_node
from panoptic_ros.ros.panoptic_node import PanopticNode

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "panoptic_ros" / "data" / "samples" / "camvid_0016E5_08001.png"
TIMEOUT = 20.0
OUTPUT_TYPES = {"semantic": Image, "instance": Image, "panoptic": PanopticSegmentation, "panoptic_image": Image,
                "overlay": Image, "overlay/compressed": CompressedImage, "camera_info": CameraInfo}


@pytest.fixture(scope="module")
def frame():
    """The sample CamVid frame at 120 x 160: real content, quick to segment."""
    return cv2.resize(cv2.cvtColor(cv2.imread(str(SAMPLE)), cv2.COLOR_BGR2RGB), (160, 120), interpolation=cv2.INTER_AREA)


def header(stamp: int, frame_id: str = "camera") -> Header:
    h = Header(frame_id=frame_id)
    h.stamp.sec, h.stamp.nanosec = stamp, 7
    return h


def image(rgb, encoding="rgb8", stamp=0, padding=0) -> Image:
    height, width, step, data = rgb_to_image(rgb, encoding)
    if padding:
        rows = np.frombuffer(data, np.uint8).reshape(height, step)
        data, step = np.pad(rows, ((0, 0), (0, padding))).tobytes(), step + padding
    msg = Image(header=header(stamp), height=height, width=width, encoding=encoding, step=step)
    msg.data = array.array("B", data)
    return msg


class Harness:
    """The node under test and a tester node, spun by one executor in a background thread."""

    def __init__(self, context, **params):
        # the network runs eager unless a test asks for a backend: the default, auto, exports an artefact per
        # resolution first (about 12 s for a tiny network)
        defaults = {"device": "cpu", "backend": "eager"}
        overrides = [Parameter(name, value=value) for name, value in {**defaults, **params}.items()]
        self.node = PanopticNode(context=context, parameter_overrides=overrides)
        self.tester = rclpy.create_node("tester", context=context)
        self.received = defaultdict(list)
        self.executor = MultiThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.executor.add_node(self.tester)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()
        if params.get("autostart", True):  # autostart runs once spinning: until it succeeded or failed
            assert self.wait(lambda: self.node.state == "active" or self.node._failure and
                             self.node.state == "unconfigured", 120), "autostart hung"

    def listen(self, topic, msg_type, depth=50):
        self.tester.create_subscription(msg_type, topic, self.received[topic].append, depth)

    def listen_outputs(self, prefix="/panoptic_node", outputs=OUTPUT_TYPES):
        for name, msg_type in outputs.items():
            self.listen(f"{prefix}/{name}", msg_type)

    def publisher(self, topic, msg_type=Image):
        pub = self.tester.create_publisher(msg_type, topic, 50)
        assert self.wait(lambda: pub.get_subscription_count() > 0), f"nobody subscribes to {topic}"
        return pub

    def image_publisher(self):
        """A publisher on the node's input, once the tester also listens to ~/panoptic and is matched."""
        self.listen("/panoptic_node/panoptic", PanopticSegmentation)
        pub = self.publisher("/image")
        self.wait_matched("/panoptic_node/panoptic")
        return pub

    def wait(self, predicate, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.02)
        return False

    def got(self, topic, stamp):
        return [m for m in self.received[topic] if m.header.stamp.sec == stamp]

    def wait_output(self, topic, stamp, timeout=TIMEOUT):
        assert self.wait(lambda: self.got(topic, stamp), timeout), f"no {topic} for stamp {stamp}"
        return self.got(topic, stamp)[0]

    def wait_matched(self, *topics):
        """Until the node's publishers see the tester's subscriptions (discovery)."""
        assert self.wait(lambda: all(self.tester.count_publishers(t) > 0 for t in topics)), topics
        publishers = [p for c in self.node._cameras.values() for p in c.publishers.values()]
        assert self.wait(lambda: all(p.get_subscription_count() > 0 for p in publishers
                                     if p.topic_name in topics))

    def close(self):
        self.executor.shutdown()
        self.node.stop_serving()
        self.thread.join(5)


@pytest.fixture
def context():
    ctx = Context()
    rclpy.init(context=ctx)
    yield ctx
    rclpy.try_shutdown(context=ctx)


@pytest.fixture
def harness(context):
    made = []

    def make(**params):
        made.append(Harness(context, **params))
        return made[-1]

    yield make
    for h in made:
        h.close()


def check_outputs(h, stamp, rgb_shape, prefix="/panoptic_node", names=tuple(OUTPUT_TYPES), mode="fast"):
    """Every output for ``stamp``: encodings, sizes, the input header, and segments consistent with the ids."""
    height, width = rgb_shape[:2]
    sent = header(stamp)
    msgs = {name: h.wait_output(f"{prefix}/{name}", stamp) for name in names}
    for name, msg in msgs.items():
        assert msg.header == sent, name
    for name, encoding in (("semantic", "mono8"), ("instance", "16UC1"), ("panoptic_image", "16UC1"),
                           ("overlay", "rgb8")):
        if name in msgs:
            assert (msgs[name].encoding, msgs[name].height, msgs[name].width) == (encoding, height, width), name
    panoptic = msgs["panoptic"]
    assert panoptic.mode == mode and [c.name for c in panoptic.classes][:3] == ["sky", "building", "pole"]
    assert (panoptic.panoptic.encoding, panoptic.panoptic.height, panoptic.panoptic.width) == ("16UC1", height, width)
    index = np.frombuffer(panoptic.panoptic.data, np.uint16).reshape(height, width)  # index + 1, 0 void
    assert set(np.unique(index).tolist()) - {PanopticSegmentation.VOID} == set(range(1, len(panoptic.segments) + 1))
    assert [s.id for s in panoptic.segments] == sorted(s.id for s in panoptic.segments) and panoptic.segments
    semantic = np.frombuffer(msgs["semantic"].data, np.uint8).reshape(height, width)
    for k, s in enumerate(panoptic.segments):
        ys, xs = np.nonzero(index == k + 1)
        assert s.area == len(ys) and s.class_name == panoptic.classes[s.class_id].name
        assert (s.bbox.x_offset, s.bbox.y_offset, s.bbox.width, s.bbox.height) == (
            xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
        assert s.is_thing == (s.id >= PanopticSegmentation.INSTANCE_OFFSET)
        assert (semantic[ys, xs] == s.class_id).all()
    if "panoptic_image" in msgs:
        assert msgs["panoptic_image"] == panoptic.panoptic
    if "instance" in msgs:  # the same indices, on thing segments only
        instance = np.frombuffer(msgs["instance"].data, np.uint16).reshape(height, width)
        things = np.array([0] + [k + 1 if s.is_thing else 0 for k, s in enumerate(panoptic.segments)])
        np.testing.assert_array_equal(instance, things[index])
    if "overlay/compressed" in msgs:
        jpeg = cv2.imdecode(np.frombuffer(msgs["overlay/compressed"].data, np.uint8), cv2.IMREAD_COLOR)
        # image_transport's compressed format string, whole ("jpeg" in it let a mangled one pass: _publish mutant 153)
        assert jpeg.shape == (height, width, 3) and msgs["overlay/compressed"].format == "rgb8; jpeg compressed bgr8"
    assert panoptic.latency.sec > 0 or panoptic.latency.nanosec > 0
    return msgs


def test_every_encoding_gives_every_output_with_the_input_header(harness, frame):
    h = harness()
    h.listen_outputs()
    pub = h.publisher("/image")
    info_pub = h.publisher("/camera_info", CameraInfo)
    h.wait_matched(*(f"/panoptic_node/{name}" for name in OUTPUT_TYPES))
    expected = Predictor.from_weights(device="cpu", backend="eager")(frame).semantic.numpy()
    camera = h.node._cameras[""]
    for stamp, encoding in enumerate(RGB_ENCODINGS, start=1):
        info_pub.publish(CameraInfo(header=header(stamp), width=160, height=120, distortion_model="plumb_bob"))
        assert h.wait(lambda: any(i.header.stamp.sec == stamp for i in camera.camera_infos))
        pub.publish(image(frame, encoding, stamp, padding=8 if stamp % 2 else 0))
        msgs = check_outputs(h, stamp, frame.shape)
        assert msgs["camera_info"].distortion_model == "plumb_bob"
        if encoding in ("rgb8", "bgr8", "rgba8", "bgra8"):  # lossless: the node's result is the Predictor's
            semantic = np.frombuffer(msgs["semantic"].data, np.uint8).reshape(120, 160)
            np.testing.assert_array_equal(semantic, expected)


def test_compressed_input_and_a_corrupt_jpeg(harness, frame):
    h = harness(**{"input.transport": "compressed"})
    h.listen_outputs()
    pub = h.publisher("/image/compressed", CompressedImage)
    h.wait_matched("/panoptic_node/panoptic")
    jpeg = rgb_to_compressed(frame, "jpeg")
    for stamp, (fmt, data) in enumerate([("jpeg", jpeg), ("jpeg", jpeg[: len(jpeg) // 3]), ("png", rgb_to_compressed(frame, "png")),
                                         ("rgb8; jpeg compressed bgr8", jpeg)], start=1):
        pub.publish(CompressedImage(header=header(stamp), format=fmt, data=data))
        if stamp == 2:
            assert h.wait(lambda: h.node._cameras[""].errors.counts["decode"] == 1)
        else:  # no camera_info is published here, so none is passed through
            check_outputs(h, stamp, frame.shape, names=[n for n in OUTPUT_TYPES if n != "camera_info"])
    assert not h.got("/panoptic_node/panoptic", 2)
    assert h.node._cameras[""].errors.counts["decode"] == 1


def bad_frames(frame):
    good = image(frame)
    short = image(frame)
    short.data = good.data[:-1]
    step = image(frame)
    step.step = 100
    empty = Image(header=header(0), height=0, width=0, encoding="rgb8", step=0)
    encoding = image(frame)
    encoding.encoding = "nv12"
    large = image(np.zeros((256, 256, 3), np.uint8))
    return {"data": short, "step": step, "size": empty, "encoding": encoding, "too_large": large}


def test_bad_frames_are_dropped_counted_and_the_next_frame_served(harness, frame):
    h = harness(**{"input.max_pixels": 160 * 120, "diagnostics.period": 0.2})
    h.listen_outputs()
    h.listen("/diagnostics", DiagnosticArray)
    pub = h.publisher("/image")
    h.wait_matched("/panoptic_node/panoptic")
    stamp = 0
    for kind, bad in bad_frames(frame).items():
        stamp += 1
        bad.header = header(stamp)
        pub.publish(bad)
        assert h.wait(lambda: h.node._cameras[""].errors.counts[kind] == 1), kind
        stamp += 1
        pub.publish(image(frame, stamp=stamp))
        h.wait_output("/panoptic_node/panoptic", stamp)
        assert not h.got("/panoptic_node/panoptic", stamp - 1), kind
    # a resolution change mid-stream is just another good frame
    stamp += 1
    smaller = cv2.resize(frame, (96, 64))
    pub.publish(image(smaller, stamp=stamp))
    check_outputs(h, stamp, smaller.shape, names=[n for n in OUTPUT_TYPES if n != "camera_info"])
    counts = h.node._cameras[""].errors.counts
    assert counts == {"data": 1, "step": 1, "size": 1, "encoding": 1, "too_large": 1}

    def diagnosed():
        for array in h.received["/diagnostics"]:
            for status in array.status:
                values = {kv.key: kv.value for kv in status.values}
                if values.get("rejected") == "5" and values.get("processed") == "6":
                    return values
    assert h.wait(diagnosed, 5)
    values = diagnosed()
    assert values["rejected.too_large"] == "1" and values["received"] == "11"
    assert {"latency_ms.model.p50", "latency_ms.decode.p90", "latency_ms.publish.p99", "latency_ms.total.p50"} <= set(values)


def test_a_huge_frame_is_rejected_before_decoding(harness, frame):
    h = harness()
    camera = h.node._cameras[""]
    huge = Image(header=header(1), height=8192, width=8192, encoding="rgb8", step=8192 * 3)
    huge.data = array.array("B", bytes(8192 * 8192 * 3))
    h.node._process(camera, serialize_message(huge), time.perf_counter())
    assert camera.errors.counts == {"too_large": 1}


def test_overload_drops_stale_frames_and_serves_the_newest(harness, frame):
    h = harness(**{"input.reliability": "reliable"})
    pub = h.image_publisher()
    large = cv2.resize(frame, (480, 360))
    pub.publish(image(large, stamp=1))  # the first frame gives the sequence numbers a start
    h.wait_output("/panoptic_node/panoptic", 1)
    for stamp in range(2, 16):
        pub.publish(image(large, stamp=stamp))
    h.wait_output("/panoptic_node/panoptic", 15)
    time.sleep(0.5)
    stamps = [m.header.stamp.sec for m in h.received["/panoptic_node/panoptic"]]
    assert stamps == sorted(stamps) and len(stamps) < 15 and stamps[-1] == 15
    camera = h.node._cameras[""]
    assert camera.stats.dropped + camera.stats.lost == 15 - len(stamps)  # every unprocessed frame counted


def test_multiple_cameras_share_one_model(harness, frame):
    h = harness(**{"input.cameras": ["front", "rear"]})
    for camera in ("front", "rear"):
        h.listen_outputs(f"/panoptic_node/{camera}", {"panoptic": PanopticSegmentation, "semantic": Image})
    pubs = {camera: h.publisher(f"/{camera}/image") for camera in ("front", "rear")}
    h.wait_matched("/panoptic_node/front/panoptic", "/panoptic_node/rear/panoptic")
    pubs["front"].publish(image(frame, stamp=1))
    pubs["rear"].publish(image(cv2.resize(frame, (96, 64)), stamp=2))
    assert h.wait_output("/panoptic_node/front/panoptic", 1).panoptic.width == 160
    assert h.wait_output("/panoptic_node/rear/semantic", 2).width == 96
    assert not h.got("/panoptic_node/front/panoptic", 2) and not h.got("/panoptic_node/rear/panoptic", 1)


def test_outputs_without_subscribers_cost_nothing(harness, frame, monkeypatch):
    renders = []
    monkeypatch.setattr(panoptic_node, "render_panoptic", lambda *a: renders.append(1) or a[0])
    h = harness()
    pub = h.image_publisher()
    pub.publish(image(frame, stamp=1))
    h.wait_output("/panoptic_node/panoptic", 1)
    assert renders == []
    h.listen("/panoptic_node/overlay", Image)
    h.wait_matched("/panoptic_node/overlay")
    pub.publish(image(frame, stamp=2))
    h.wait_output("/panoptic_node/overlay", 2)
    assert renders == [1]


def test_runtime_parameter_changes_are_validated_and_applied(harness, frame):
    # At 160 x 120 the frame's cars and cyclist are clusters of a few cells at 1/4: keep clusters of any size.
    h = harness(**{"filter.min_instance_pixels": 1})
    pub = h.image_publisher()
    pub.publish(image(frame, stamp=1))
    before = h.wait_output("/panoptic_node/panoptic", 1)
    assert any(s.is_thing for s in before.segments)
    results = h.node.set_parameters([Parameter("filter.score_threshold", value=1.0),
                                     Parameter("bandwidths.pedestrian", value=0.3)])
    assert all(r.successful for r in results)
    assert h.node._predictor.postprocess.bandwidths[9] == 0.3
    pub.publish(image(frame, stamp=2))
    after = h.wait_output("/panoptic_node/panoptic", 2)
    assert not any(s.is_thing for s in after.segments)  # no cluster scores a full 1.0
    rejected = {
        "device": ("cuda", "takes effect at configure"),
        "output.overlay_alpha": (3.0, "overlay_alpha = 3.0 is not allowed"),
        "bandwidths.car": (0.0, "bandwidths.car = 0.0 is not allowed"),
    }
    for name, (value, reason) in rejected.items():
        (result,) = h.node.set_parameters([Parameter(name, value=value)])
        assert not result.successful and reason in result.reason, (name, result.reason)
    assert h.node.get_parameter("device").value == "cpu"
    (result,) = h.node.set_parameters([Parameter("use_sim_time", value=False)])  # rclpy's own parameter
    assert result.successful
    h.listen("/panoptic_node/overlay", Image)
    h.wait_matched("/panoptic_node/overlay")
    (result,) = h.node.set_parameters([Parameter("output.overlay", value=False)])
    assert result.successful and "overlay" not in h.node._cameras[""].publishers
    pub.publish(image(frame, stamp=3))
    h.wait_output("/panoptic_node/panoptic", 3)
    time.sleep(0.3)
    assert not h.received["/panoptic_node/overlay"]


def test_params_file_reaches_a_namespaced_renamed_node():
    """config/fast.yaml is keyed /**: under namespace:=front and another node name, every value of the file is
    an override of this node (a file keyed panoptic_node: would be silently ignored here) and took effect."""
    import yaml

    def walk(tree, prefix=""):
        for key, value in tree.items():
            yield from walk(value, f"{prefix}{key}.") if isinstance(value, dict) else [(prefix + key, value)]

    values = dict(walk(yaml.safe_load((REPO / "config" / "fast.yaml").read_text())["/**"]["ros__parameters"]))
    context = Context()
    rclpy.init(context=context, args=["--ros-args", "--params-file", str(REPO / "config" / "fast.yaml"),
                                      "-r", "__ns:=/front", "-r", "__node:=segmenter", "-p", "autostart:=false",
                                      "-p", "device:=cpu", "-p", "output.jpeg_quality:=55", "-p", "bandwidths.car:=0.8"])
    try:
        node = PanopticNode(context=context)
        assert node.get_fully_qualified_name() == "/front/segmenter"
        assert set(values) <= set(node._parameter_overrides)
        for name, value in values.items():
            if name not in ("autostart", "device", "output.jpeg_quality"):  # set on the command line above
                assert node.get_parameter(name).value == value, name
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.get_parameter("bandwidths.bicyclist").value == 1.0  # from the weights
        assert node._predictor.postprocess.bandwidths[8] == 0.8 and node._config.output.jpeg_quality == 55
        node.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)


def test_lifecycle_transitions(harness, frame):
    h = harness(autostart=False)
    assert h.node._predictor is None
    assert h.node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert h.node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    pub = h.image_publisher()
    pub.publish(image(frame, stamp=1))
    h.wait_output("/panoptic_node/panoptic", 1)
    assert h.node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    assert h.node._predictor.device.type == "cpu" and pub.get_subscription_count() == 0 or h.wait(
        lambda: pub.get_subscription_count() == 0)
    pub.publish(image(frame, stamp=2))
    time.sleep(1.0)
    assert not h.got("/panoptic_node/panoptic", 2)
    assert h.node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    assert h.wait(lambda: pub.get_subscription_count() > 0)
    pub.publish(image(frame, stamp=3))
    h.wait_output("/panoptic_node/panoptic", 3)
    assert h.node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    assert h.node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
    assert h.node._predictor is None


def broken_weights(tmp_path):
    state, model_cfg, post_cfg, info = read_weights(DEFAULT_WEIGHTS)
    nan = dict(state)
    key = next(k for k, v in state.items() if v.is_floating_point())
    nan[key] = state[key].clone().fill_(float("nan"))
    save_state(nan, model_cfg, post_cfg, info, tmp_path / "nan.safetensors")
    shapes = {k: (v[:1] if v.dim() and v.shape[0] > 1 else v) for k, v in state.items()}
    save_state(shapes, model_cfg, post_cfg, info, tmp_path / "mismatch.safetensors")
    (tmp_path / "text.safetensors").write_text("not weights")
    return {"missing.safetensors": "does not exist", "nan.safetensors": "NaN or infinite",
            "mismatch.safetensors": "the network expects", "text.safetensors": "not a readable safetensors"}


def test_bad_weights_fail_configure_with_the_reason(harness, tmp_path, capfd):
    for name, reason in broken_weights(tmp_path).items():
        h = harness(weights=str(tmp_path / name))
        assert h.node._predictor is None and h.node._state_machine.current_state[1] == "unconfigured"
        assert reason in capfd.readouterr().err, name
    h = harness(mode="accuracy")
    assert h.node._predictor is None and "'accuracy' has no shipped weights" in capfd.readouterr().err
    h = harness(class_table="cityscapes")
    assert h.node._predictor is None and "'cityscapes' has 19 classes" in capfd.readouterr().err


def test_node_process_exits_cleanly_on_sigint(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen([sys.executable, "-m", "panoptic_ros.ros.panoptic_node", "--ros-args", "-p", "device:=cpu",
                                "-r", "__node:=sigint_node"], stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any("active on cpu" in line for line in lines):
            lines.append(process.stderr.readline())
        assert any("active on cpu" in line for line in lines), "".join(lines)
        auto = resolve_backend("auto", torch.device("cpu"), "fp32")  # the default, as the node process resolved it
        assert any(f"(backend {auto})" in line for line in lines), "".join(lines)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0, process.stderr.read()[-3000:]
    finally:
        process.kill()


def statuses(h, name):
    """Every DiagnosticStatus named ``name`` received so far, oldest first."""
    return [s for array in h.received["/diagnostics"] for s in array.status if s.name == name]


def wait_level(h, name, level, timeout=TIMEOUT):
    assert h.wait(lambda: statuses(h, name) and statuses(h, name)[-1].level == bytes([level]), timeout), (
        name, level, [(s.level, s.message) for s in statuses(h, name)[-3:]])
    return statuses(h, name)[-1]


def test_diagnostics_levels_ok_stale_error_warn(harness, frame):
    # STALE is checked with stale_after 1 s, then switched off (0) while OK, ERROR and WARN are checked, and back on
    # at the end: a frame takes seconds on a loaded 2-core CPU (the first one even more, oneDNN's set-up), and any
    # fixed stale_after raced with it (at 3 s, CI's Jazzy run saw frame 10 come out too late for its WARN)
    h = harness(**{"diagnostics.period": 0.1, "diagnostics.stale_after": 1.0, "diagnostics.window": 4})
    h.listen("/diagnostics", DiagnosticArray)
    pub = h.image_publisher()
    camera = "panoptic_node: image"
    assert wait_level(h, camera, 3).message.endswith("(since activation)")  # STALE: nothing came since activation
    assert h.node.set_parameters([Parameter("diagnostics.stale_after", value=0.0)])[0].successful
    pub.publish(image(frame, stamp=1))
    h.wait_output("/panoptic_node/panoptic", 1)
    assert wait_level(h, camera, 0).values  # OK
    bad = image(frame)
    bad.encoding = "nv12"
    for stamp in range(2, 5):  # three rejected: the processed frame is still in the window of 4
        bad.header = header(stamp)
        pub.publish(bad)
        assert h.wait(lambda: h.node._cameras[""].stats.rejected == stamp - 1)
    time.sleep(0.3)
    assert statuses(h, camera)[-1].level == bytes([0])
    bad.header = header(5)
    pub.publish(bad)  # now every frame of the window is rejected
    assert "every frame rejected: the last 4 (encoding 4)" in wait_level(h, camera, 2).message  # ERROR
    assert h.node.set_parameters([Parameter("diagnostics.expected_rate_hz", value=50.0)])[0].successful
    pub.publish(image(frame, stamp=10))
    h.wait_output("/panoptic_node/panoptic", 10)
    assert "below the expected 50 Hz" in wait_level(h, camera, 1).message  # WARN
    assert h.node.set_parameters([Parameter("diagnostics.stale_after", value=1.0)])[0].successful
    assert wait_level(h, camera, 3).message.endswith("(since the last one)")  # STALE again
    model = statuses(h, "panoptic_node: model")[-1]
    assert model.level == bytes([0]) and {kv.key: kv.value for kv in model.values}["state"] == "active"


def test_a_failed_configure_publishes_error_diagnostics(harness, tmp_path):
    h = harness(autostart=False, **{"diagnostics.period": 0.1}, weights=str(tmp_path / "missing.safetensors"))
    h.listen("/diagnostics", DiagnosticArray)
    assert wait_level(h, "panoptic_node: model", 0).message == "unconfigured"
    assert h.node.trigger_configure() == TransitionCallbackReturn.FAILURE
    error = wait_level(h, "panoptic_node: model", 2)
    assert "configure failed" in error.message and "does not exist" in error.message


def test_model_failure_is_an_error_until_a_frame_succeeds(harness, frame, monkeypatch):
    h = harness(**{"diagnostics.period": 0.1})
    h.listen("/diagnostics", DiagnosticArray)
    pub = h.image_publisher()
    predictor = h.node._predictor
    run = type(predictor).__call__
    monkeypatch.setattr(type(predictor), "__call__", lambda *a: (_ for _ in ()).throw(RuntimeError("CUDA OOM")))
    pub.publish(image(frame, stamp=1))
    assert "RuntimeError: CUDA OOM" in wait_level(h, "panoptic_node: model", 2).message
    assert h.node._cameras[""].errors.counts == {"model": 1}
    monkeypatch.setattr(type(predictor), "__call__", run)
    pub.publish(image(frame, stamp=2))
    h.wait_output("/panoptic_node/panoptic", 2)
    wait_level(h, "panoptic_node: model", 0)


def test_camera_info_is_paired_by_stamp_and_checked_against_the_size(harness, frame):
    h = harness()
    h.listen_outputs(outputs={"panoptic": PanopticSegmentation, "camera_info": CameraInfo})
    pub = h.publisher("/image")
    info_pub = h.publisher("/camera_info", CameraInfo)
    h.wait_matched("/panoptic_node/panoptic", "/panoptic_node/camera_info")
    camera = h.node._cameras[""]
    cases = {1: (header(1), 160, 120), 2: (header(99), 160, 120), 3: (header(3), 640, 480)}  # paired, unpaired, stale K
    for stamp, (info_header, width, height) in cases.items():
        info_pub.publish(CameraInfo(header=info_header, width=width, height=height, k=[float(width)] + [0.0] * 8))
        assert h.wait(lambda: camera.camera_infos and camera.camera_infos[-1].header == info_header)
        pub.publish(image(frame, stamp=stamp))
        h.wait_output("/panoptic_node/panoptic", stamp)
    time.sleep(0.3)
    (info,) = h.received["/panoptic_node/camera_info"]
    assert info.header == header(1) and info.k[0] == 160.0
    assert camera.info_problems.counts == {"unpaired": 1, "wrong_size": 1}
    assert camera.errors.counts == {} and camera.stats.rejected == 0  # the frames themselves were fine


def test_depth_garbage_and_12_bit_frames(harness, frame):
    """REP 118 depth (16UC1) and undeserialisable bytes are rejected and counted; a 12-bit mono16 camera (values
    < 4096) gives the result of its 8-bit equivalent once its bit depth is detected, not a near-black frame."""
    h = harness()
    h.listen("/panoptic_node/semantic", Image)
    pub = h.publisher("/image")
    h.wait_matched("/panoptic_node/semantic")
    depth = Image(header=header(1), height=120, width=160, encoding="16UC1", step=320)
    depth.data = array.array("B", bytes(120 * 320))
    pub.publish(depth)
    assert h.wait(lambda: h.node._cameras[""].errors.counts["encoding"] == 1)
    pub.publish(b"\x00\x01\x00\x00garbage")  # a serialised message no Image decodes from
    assert h.wait(lambda: h.node._cameras[""].errors.counts["cdr"] == 1)
    gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    eight = image(cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB), "mono8", stamp=2)
    twelve = Image(header=header(3), height=120, width=160, encoding="mono16", step=320)
    twelve.data = array.array("B", (gray.astype(np.uint16) << 4 | 0xF).tobytes())  # 12 significant bits
    pub.publish(eight)
    reference = h.wait_output("/panoptic_node/semantic", 2)
    pub.publish(twelve)
    assert h.wait_output("/panoptic_node/semantic", 3).data == reference.data
    assert h.node._cameras[""].bit_depth == 12


def test_humble_callbacks_without_message_info(harness, frame, monkeypatch):
    """Humble's rclpy calls subscription callbacks with the message only: the node subscribes that way there."""
    monkeypatch.setattr(panoptic_node, "MESSAGE_INFO", False)
    h = harness()
    pub = h.image_publisher()
    pub.publish(image(frame, stamp=1))
    h.wait_output("/panoptic_node/panoptic", 1)
    # the worker counts a frame after publishing it: wait for the count, not only the message
    assert h.wait(lambda: h.node._cameras[""].stats.processed == 1) and h.node._cameras[""].stats.lost == 0


def test_sequence_gaps_without_publisher_gid_do_not_merge_publishers(harness, frame):
    """Jazzy's MessageInfo has only the sequence number: with one publisher its gaps count, with two they cannot be
    told apart, so none are counted (interleaved numbers would otherwise look like losses)."""
    h = harness(autostart=False)
    node = h.node
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    camera = node._cameras[""]
    data = serialize_message(image(frame, stamp=1))
    jazzy = lambda n: {"source_timestamp": 0, "received_timestamp": 0, "publication_sequence_number": n}  # noqa: E731
    for sequence in (1, 2, 5):  # no publisher yet: the subscription sees none, so nothing is counted
        node._on_image(camera, data, jazzy(sequence))
    assert camera.stats.lost == 0
    one = h.publisher("/image")
    for sequence in (1, 2, 5):
        node._on_image(camera, data, jazzy(sequence))
    assert camera.stats.lost == 2
    two = h.tester.create_publisher(Image, "/image", 1)
    assert h.wait(lambda: camera.subscriptions[0].get_publisher_count() == 2)
    for sequence in (6, 1, 7, 2):  # two publishers interleaved
        node._on_image(camera, data, jazzy(sequence))
    assert camera.stats.lost == 2 and one and two
    kilted = {"publisher_gid": {"data": b"a" * 16}, "publication_sequence_number": 9}
    node._on_image(camera, data, kilted)
    node._on_image(camera, data, {**kilted, "publication_sequence_number": 12})
    assert camera.stats.lost == 4


def test_a_parameter_change_waits_for_the_frame_being_published(harness, frame, monkeypatch):
    """Turning an output off destroys its publisher; while the worker is publishing a frame, the change waits until
    the frame is out, instead of destroying a publisher in use (which failed that frame)."""
    h = harness()
    h.listen_outputs(outputs={"panoptic": PanopticSegmentation, "overlay": Image})
    pub = h.publisher("/image")
    h.wait_matched("/panoptic_node/panoptic", "/panoptic_node/overlay")
    held = []

    def render(rgb, *args):  # runs inside _publish: change the outputs from another thread meanwhile
        change = threading.Thread(target=h.node.set_parameters, args=([Parameter("output.overlay", value=False)],))
        change.start()
        change.join(0.5)
        held.append(change.is_alive())
        return rgb

    monkeypatch.setattr(panoptic_node, "render_panoptic", render)
    pub.publish(image(frame, stamp=1))
    assert h.wait_output("/panoptic_node/overlay", 1).width == 160
    assert held == [True] and h.node._cameras[""].errors.counts == {}
    assert h.wait(lambda: "overlay" not in h.node._cameras[""].publishers)


def test_frames_replaced_in_the_slot_are_never_deserialised(harness, frame, monkeypatch):
    decoded = []
    decode = panoptic_node.decode_frame
    monkeypatch.setattr(panoptic_node, "decode_frame", lambda data, *a: decoded.append(1) or decode(data, *a))
    h = harness(**{"input.reliability": "reliable"})
    pub = h.image_publisher()
    release = threading.Event()
    run = type(h.node._predictor).__call__
    monkeypatch.setattr(type(h.node._predictor), "__call__", lambda self, *a: release.wait(30) and run(self, *a))
    camera = h.node._cameras[""]
    for stamp in range(1, 7):  # the first is taken by the worker, which then waits in the model
        pub.publish(image(frame, stamp=stamp))
        assert h.wait(lambda: camera.stats.received + camera.stats.lost == stamp)
    release.set()
    h.wait_output("/panoptic_node/panoptic", 6)
    stats = camera.stats
    # frame 6 is counted after it is published (CI's Jazzy run, loaded, read processed 1 before that)
    assert h.wait(lambda: stats.processed + stats.dropped + stats.lost == 6) and stats.processed == 2
    assert len(decoded) == stats.processed  # frames 2-5 were replaced (or lost) without being decoded


def test_reactivation_resets_counters_and_a_busy_worker_does_not_block_deactivate(harness, frame, monkeypatch, capfd):
    h = harness()
    pub = h.image_publisher()
    pub.publish(image(frame, stamp=1))
    h.wait_output("/panoptic_node/panoptic", 1)
    camera = h.node._cameras[""]
    assert h.wait(lambda: camera.stats.processed == 1) and camera.stats.received == 1  # counted after publishing
    release = threading.Event()
    run = type(h.node._predictor).__call__
    monkeypatch.setattr(type(h.node._predictor), "__call__", lambda self, *a: release.wait(30) and run(self, *a))
    monkeypatch.setattr(panoptic_node, "STOP_TIMEOUT", 0.2)
    pub.publish(image(frame, stamp=2))
    assert h.wait(lambda: camera.stats.received == 2)
    time.sleep(0.2)  # the worker is inside the model now
    start = time.monotonic()
    assert h.node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    assert time.monotonic() - start < 5 and "still busy" in capfd.readouterr().err
    release.set()
    assert h.node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    stats = h.node._cameras[""].stats
    assert (stats.received, stats.processed, stats.dropped, stats.rejected, stats.lost) == (0, 0, 0, 0, 0)


def test_changing_weights_replaces_the_bandwidth_parameters(harness, tmp_path):
    """CamVid's thing classes (car, pedestrian, bicyclist) give way to Cityscapes' after cleanup + new weights."""
    cfg = config_from_dict({"model": {"num_classes": 19, "width": 0.125, "depths": [1, 1, 1, 1]},
                            "data": {"dataset": "cityscapes"}})
    cityscapes = save_weights(build_model("panonet", **cfg.model.kwargs()), cfg, tmp_path / "cityscapes.safetensors")
    h = harness()
    assert h.node.has_parameter("bandwidths.bicyclist")
    assert h.node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    assert h.node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
    assert not any(name.startswith("bandwidths.") for name in h.node._parameters)
    assert h.node.set_parameters([Parameter("weights", value=str(cityscapes))])[0].successful
    assert h.node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    names = {name for name in h.node._parameters if name.startswith("bandwidths.")}
    assert "bandwidths.rider" in names and "bandwidths.bicyclist" not in names


def test_onnxruntime_backend_and_a_refused_missing_artefact(harness, frame, tmp_path, capfd):
    """backend:=onnxruntime serves frames through an exported artefact; with backend_build_missing:=false a frame
    of a size without an artefact is rejected with the export command, and diagnostics say ERROR."""
    h = harness(backend="onnxruntime", backend_cache_dir=str(tmp_path), **{"diagnostics.period": 0.1})
    h.listen("/diagnostics", DiagnosticArray)
    pub = h.image_publisher()
    pub.publish(image(frame, stamp=1))
    assert h.wait_output("/panoptic_node/panoptic", 1, timeout=120).segments
    assert h.node._predictor.backend == "onnxruntime" and "exporting the network" in capfd.readouterr().err
    refusing = harness(backend="onnxruntime", backend_cache_dir=str(tmp_path / "empty"), backend_build_missing=False,
                       **{"diagnostics.period": 0.1})
    camera = refusing.node._cameras[""]
    refusing.node._process(camera, serialize_message(image(frame, stamp=2)), time.perf_counter())
    assert camera.errors.counts == {"model": 1}
    assert "python -m panoptic_ros.export" in refusing.node._model_error
