"""Round trip of each panoptic_ros message through rclpy: publish, receive in the same process, compare fields."""

import time

import numpy as np
import pytest
import rclpy
from builtin_interfaces.msg import Duration, Time
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, RegionOfInterest
from std_msgs.msg import ColorRGBA, Header

from panoptic_ros.msg import ClassInfo, PanopticSegmentation, Segment
from panoptic_ros.postprocess import VOID_ID, ids_from_segment_map, segment_map_from_ids

RECEIVE_TIMEOUT_S = 10.0

# (id, name, is_thing, rgb) -- a small Cityscapes-like class table
CLASSES = [(0, "road", False, (128, 64, 128)), (10, "sky", False, (70, 130, 180)),
           (11, "person", True, (220, 20, 60)), (13, "car", True, (0, 0, 142))]


def _float32(x: float) -> float:
    """``x`` rounded to float32, as a float32 message field stores it."""
    return float(np.float32(x))


def make_class_table() -> list[ClassInfo]:
    return [ClassInfo(id=i, name=n, is_thing=t,
                      color=ColorRGBA(r=_float32(r / 255), g=_float32(g / 255), b=_float32(b / 255), a=1.0))
            for i, n, t, (r, g, b) in CLASSES]


def make_panoptic_image() -> np.ndarray:
    """A 6x9 id image: road, sky, two cars, one person, and void pixels."""
    off = PanopticSegmentation.INSTANCE_OFFSET
    ids = np.full((6, 9), 10, dtype=np.int32)  # sky
    ids[3:, :] = 0  # road
    ids[2:5, 1:4] = 13 * off + 0  # car 0
    ids[3:5, 5:8] = 13 * off + 1  # car 1
    ids[1:4, 8] = 11 * off + 0  # person 0
    ids[0, 0] = ids[5, 8] = VOID_ID
    return ids


def make_segments(ids: np.ndarray, classes: list[ClassInfo]) -> list[Segment]:
    by_id = {c.id: c for c in classes}
    segments = []
    for segment_id in np.unique(ids):
        if segment_id == VOID_ID:
            continue
        cls = by_id[int(segment_id) // PanopticSegmentation.INSTANCE_OFFSET if segment_id >= 1000 else int(segment_id)]
        ys, xs = np.nonzero(ids == segment_id)
        segments.append(Segment(
            id=int(segment_id), class_id=cls.id, class_name=cls.name, is_thing=cls.is_thing,
            score=0.875 if cls.is_thing else 1.0, area=len(xs),
            bbox=RegionOfInterest(x_offset=int(xs.min()), y_offset=int(ys.min()),
                                  width=int(xs.max() - xs.min() + 1), height=int(ys.max() - ys.min() + 1))))
    return segments


def make_panoptic_segmentation() -> PanopticSegmentation:
    ids = make_panoptic_image()
    header = Header(stamp=Time(sec=1_700_000_000, nanosec=123_456_789), frame_id="camera_optical")
    classes = make_class_table()
    segments = make_segments(ids, classes)
    index = segment_map_from_ids(ids, [s.id for s in segments])
    image = Image(header=header, height=ids.shape[0], width=ids.shape[1], encoding="16UC1", is_bigendian=0,
                  step=ids.shape[1] * 2, data=index.astype("<u2").tobytes())
    return PanopticSegmentation(header=header, panoptic=image, segments=segments,
                                classes=classes, model="panonet_r18_cityscapes", mode="fast",
                                latency=Duration(sec=0, nanosec=41_500_000))


def assert_fields_equal(received, sent, path: str = "msg") -> None:
    """Compare two messages field by field, naming the first field that differs."""
    assert type(received) is type(sent), path
    if not hasattr(sent, "get_fields_and_field_types"):
        if isinstance(sent, (list, tuple)):
            assert len(received) == len(sent), f"{path}: length"
            for i, (r, s) in enumerate(zip(received, sent)):
                assert_fields_equal(r, s, f"{path}[{i}]")
        else:
            assert received == sent, path
        return
    for field in sent.get_fields_and_field_types():
        assert_fields_equal(getattr(received, field), getattr(sent, field), f"{path}.{field}")


@pytest.fixture(scope="module")
def ros_context():
    context = Context()
    rclpy.init(context=context)
    yield context
    rclpy.shutdown(context=context)


def round_trip(context: Context, msg_type, sent):
    """Publish ``sent`` from one node until another node receives it; return what was received."""
    pub_node = rclpy.create_node("round_trip_pub", context=context)
    sub_node = rclpy.create_node("round_trip_sub", context=context)
    executor = SingleThreadedExecutor(context=context)
    received = []
    topic = f"round_trip_{msg_type.__name__}"
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    try:
        sub_node.create_subscription(msg_type, topic, received.append, qos)
        publisher = pub_node.create_publisher(msg_type, topic, qos)
        executor.add_node(pub_node)
        executor.add_node(sub_node)
        # Messages published before discovery completes are lost, so publish until one arrives.
        deadline = time.monotonic() + RECEIVE_TIMEOUT_S
        while not received and time.monotonic() < deadline:
            publisher.publish(sent)
            executor.spin_once(timeout_sec=0.05)
    finally:
        executor.shutdown()
        pub_node.destroy_node()
        sub_node.destroy_node()
    assert received, f"no {msg_type.__name__} received within {RECEIVE_TIMEOUT_S} s"
    return received[0]


def test_constants():
    assert PanopticSegmentation.VOID == 0
    assert PanopticSegmentation.INSTANCE_OFFSET == 1000


def test_class_info_round_trip(ros_context):
    sent = make_class_table()[3]
    assert_fields_equal(round_trip(ros_context, ClassInfo, sent), sent)


def test_segment_round_trip(ros_context):
    sent = Segment(id=13_002, class_id=13, class_name="car", is_thing=True, score=0.625, area=4321,
                   bbox=RegionOfInterest(x_offset=640, y_offset=300, width=120, height=64))
    assert_fields_equal(round_trip(ros_context, Segment, sent), sent)


def test_panoptic_segmentation_round_trip(ros_context):
    sent = make_panoptic_segmentation()
    assert len(sent.segments) == 5 and len(sent.classes) == 4
    received = round_trip(ros_context, PanopticSegmentation, sent)
    assert_fields_equal(received, sent)
    # The segment image decodes back to the same ids, and each segment's pixels are where it holds index + 1.
    index = np.frombuffer(bytes(received.panoptic.data), dtype="<u2").reshape(received.panoptic.height,
                                                                               received.panoptic.width)
    np.testing.assert_array_equal(ids_from_segment_map(index, [s.id for s in received.segments]),
                                  make_panoptic_image())
    for k, segment in enumerate(received.segments):
        assert np.count_nonzero(index == k + 1) == segment.area


def test_image_buffer_is_reused_resized_and_checked():
    from panoptic_ros.images import ImageError
    from panoptic_ros.ros.conversions import ImageBuffer

    buffer = ImageBuffer("16UC1")
    header = Header(frame_id="camera")
    first = np.arange(12, dtype=np.uint16).reshape(3, 4) * 1000
    msg = buffer.fill(first, header)
    data = msg.data
    assert (msg.height, msg.width, msg.step, msg.encoding, msg.header) == (3, 4, 8, "16UC1", header)
    np.testing.assert_array_equal(np.frombuffer(msg.data, "<u2").reshape(3, 4), first)
    assert buffer.fill(first[::-1].copy(), header).data is data  # same size: written in place
    smaller = buffer.fill(np.ones((2, 2), np.uint16), header)
    assert (smaller.height, smaller.width, smaller.step, len(smaller.data)) == (2, 2, 4, 8)
    with pytest.raises(ImageError, match="16UC1 needs uint16"):
        buffer.fill(np.ones((2, 2), np.int32), header)
