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
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.context import Context
from rclpy.executors import MultiThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header

from panoptic_ros.checkpoint import read_weights, save_state
from panoptic_ros.images import RGB_ENCODINGS, rgb_to_compressed, rgb_to_image
from panoptic_ros.msg import PanopticSegmentation
from panoptic_ros.predictor import DEFAULT_WEIGHTS, Predictor
from panoptic_ros.ros import panoptic_node
from panoptic_ros.ros.panoptic_node import PanopticNode

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "panoptic_ros" / "data" / "samples" / "camvid_0016E5_08001.png"
TIMEOUT = 20.0
OUTPUT_TYPES = {"semantic": Image, "instance": Image, "panoptic": PanopticSegmentation, "panoptic_image": Image,
                "overlay": Image, "camera_info": CameraInfo}


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
        overrides = [Parameter(name, value=value) for name, value in {"device": "cpu", **params}.items()]
        self.node = PanopticNode(context=context, parameter_overrides=overrides)
        self.tester = rclpy.create_node("tester", context=context)
        self.received = defaultdict(list)
        self.executor = MultiThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.executor.add_node(self.tester)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def listen(self, topic, msg_type, depth=50):
        self.tester.create_subscription(msg_type, topic, self.received[topic].append, depth)

    def listen_outputs(self, prefix="/panoptic_node", outputs=OUTPUT_TYPES):
        for name, msg_type in outputs.items():
            self.listen(f"{prefix}/{name}", msg_type)

    def publisher(self, topic, msg_type=Image):
        pub = self.tester.create_publisher(msg_type, topic, 50)
        assert self.wait(lambda: pub.get_subscription_count() > 0), f"nobody subscribes to {topic}"
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


def check_outputs(h, stamp, rgb_shape, prefix="/panoptic_node", names=tuple(OUTPUT_TYPES)):
    """Every output for ``stamp``: encodings, sizes, the input header, and segments consistent with the ids."""
    height, width = rgb_shape[:2]
    sent = header(stamp)
    msgs = {name: h.wait_output(f"{prefix}/{name}", stamp) for name in names}
    for name, msg in msgs.items():
        assert msg.header == sent, name
    for name, encoding in (("semantic", "mono8"), ("instance", "mono16"), ("panoptic_image", "32SC1"),
                           ("overlay", "rgb8")):
        assert (msgs[name].encoding, msgs[name].height, msgs[name].width) == (encoding, height, width), name
    panoptic = msgs["panoptic"]
    assert panoptic.panoptic == msgs["panoptic_image"] and panoptic.mode == "fast"
    assert [c.name for c in panoptic.classes][:3] == ["sky", "building", "pole"]
    ids = np.frombuffer(panoptic.panoptic.data, np.int32).reshape(height, width)
    present = set(np.unique(ids).tolist()) - {PanopticSegmentation.VOID_ID}
    assert {s.id for s in panoptic.segments} == present and present
    for s in panoptic.segments:
        ys, xs = np.nonzero(ids == s.id)
        assert s.area == len(ys) and s.class_name == panoptic.classes[s.class_id].name
        assert (s.bbox.x_offset, s.bbox.y_offset, s.bbox.width, s.bbox.height) == (
            xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
        assert s.is_thing == (s.id >= PanopticSegmentation.INSTANCE_OFFSET)
    semantic = np.frombuffer(msgs["semantic"].data, np.uint8).reshape(height, width)
    for s in panoptic.segments:
        assert (semantic[ids == s.id] == s.class_id).all()
    assert panoptic.latency.sec > 0 or panoptic.latency.nanosec > 0
    return msgs


def test_every_encoding_gives_every_output_with_the_input_header(harness, frame):
    h = harness()
    h.listen_outputs()
    pub = h.publisher("/image")
    info_pub = h.publisher("/camera_info", CameraInfo)
    h.wait_matched(*(f"/panoptic_node/{name}" for name in OUTPUT_TYPES))
    info_pub.publish(CameraInfo(header=header(0), width=160, height=120, distortion_model="plumb_bob"))
    assert h.wait(lambda: h.node._cameras[""].camera_info is not None)
    expected = Predictor.from_weights(device="cpu")(frame).semantic.numpy()
    for stamp, encoding in enumerate(RGB_ENCODINGS, start=1):
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
    h.node._process(camera, huge, time.perf_counter())
    assert camera.errors.counts == {"too_large": 1}


def test_overload_drops_stale_frames_and_serves_the_newest(harness, frame):
    h = harness(**{"input.reliability": "reliable"})
    h.listen("/panoptic_node/panoptic", PanopticSegmentation)
    pub = h.publisher("/image")
    h.wait_matched("/panoptic_node/panoptic")
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
    assert h.node._slots.dropped[""] + camera.gaps.lost == 15 - len(stamps)  # every unprocessed frame counted


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
    h.listen("/panoptic_node/panoptic", PanopticSegmentation)
    pub = h.publisher("/image")
    h.wait_matched("/panoptic_node/panoptic")
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
    h.listen("/panoptic_node/panoptic", PanopticSegmentation)
    pub = h.publisher("/image")
    h.wait_matched("/panoptic_node/panoptic")
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


def test_params_file_sets_the_node(frame):
    context = Context()
    rclpy.init(context=context, args=["--ros-args", "--params-file", str(REPO / "config" / "fast.yaml"),
                                      "-p", "device:=cpu", "-p", "output.instance_encoding:=32SC1",
                                      "-p", "bandwidths.car:=0.8"])
    try:
        node = PanopticNode(context=context)
        assert node.get_parameter("input.cameras").value == [""]
        assert node.get_parameter("output.instance_encoding").value == "32SC1"
        assert node.get_parameter("bandwidths.bicyclist").value == 1.0
        assert node._predictor.postprocess.bandwidths[8] == 0.8 and node._config.output.instance_encoding == "32SC1"
        node.stop_serving()
        node.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)


def test_lifecycle_transitions(harness, frame):
    h = harness(autostart=False)
    assert h.node._predictor is None
    assert h.node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert h.node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    h.listen("/panoptic_node/panoptic", PanopticSegmentation)
    pub = h.publisher("/image")
    h.wait_matched("/panoptic_node/panoptic")
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
    assert h.node._predictor is None and "accuracy model" in capfd.readouterr().err
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
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0
    finally:
        process.kill()
