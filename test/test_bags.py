"""Bags written by rosbags and by mcap-ros2-support read back frame for frame: every camera encoding and both
compressed formats on one topic, labels matched by stamp, damaged bags and bad frames reported, not crashed on."""

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from mcap_ros2.writer import Writer as McapRos2Writer

from panoptic_ros import bags
from panoptic_ros.bags import FRAME_NAMES_KEY, IMAGE, PANOPTIC, BagError, BagReader, BagWriter
from panoptic_ros.classes import CAMVID
from panoptic_ros.images import RGB_ENCODINGS, compressed_to_rgb, image_to_rgb, rgb_to_compressed, rgb_to_image
from panoptic_ros.postprocess import Segment

SECOND = 1_000_000_000
FORMATS = ("jpeg", "png")

# sensor_msgs/msg/Image as rosbag2 stores its schema (ros2msg, dependencies after separator lines).
IMAGE_SCHEMA = """std_msgs/Header header
uint32 height
uint32 width
string encoding
uint8 is_bigendian
uint32 step
uint8[] data
================================================================================
MSG: std_msgs/Header
builtin_interfaces/Time stamp
string frame_id
================================================================================
MSG: builtin_interfaces/Time
int32 sec
uint32 nanosec
"""


@pytest.fixture
def rgb():
    y, x = np.mgrid[0:24, 0:32]
    return np.stack([x * 8, y * 10, 255 - x * 4], -1).astype(np.uint8)


def expected_rgb(rgb, encoding):
    """What a reader must return: the images.py round trip of that encoding (lossy for yuv, bayer, mono, jpeg)."""
    if encoding in FORMATS:
        return compressed_to_rgb(encoding, rgb_to_compressed(rgb, encoding))
    return image_to_rgb(encoding, *rgb_to_image(rgb, encoding))


def write_every_encoding(path, rgb, storage=None):
    """Frames k = 0.. on /camera/image_raw, one per camera encoding then jpeg and png, stamped k seconds."""
    encodings = [*RGB_ENCODINGS, *FORMATS]
    with BagWriter(path, storage) as bag:
        for k, encoding in enumerate(encodings):
            if encoding in FORMATS:
                bag.write_compressed("/camera/image_raw", (k + 1) * SECOND, rgb, encoding, "camera")
            else:
                bag.write_image("/camera/image_raw", (k + 1) * SECOND, rgb, encoding, "camera")
    return encodings


@pytest.mark.parametrize("name,storage", [("bag.mcap", None), ("bag.db3", None), ("bag_dir", "mcap"),
                                          ("bag_dir", "sqlite3")])
def test_every_encoding_on_one_topic_reads_back(tmp_path, rgb, name, storage):
    encodings = write_every_encoding(tmp_path / name, rgb, storage)
    with BagReader(tmp_path / name) as bag:
        info = bag.topics["/camera/image_raw"]
        assert info.count == len(encodings) and info.msgtype == "sensor_msgs/msg/CompressedImage | sensor_msgs/msg/Image"
        frames = list(bag.frames("/camera/image_raw"))
    assert [f.encoding for f in frames] == encodings
    assert [f.index for f in frames] == list(range(len(encodings)))
    assert [f.stamp_ns for f in frames] == [(k + 1) * SECOND for k in range(len(encodings))]
    assert all(f.log_time_ns == f.stamp_ns and f.frame_id == "camera" and not f.labels for f in frames)
    for frame in frames:
        np.testing.assert_array_equal(frame.rgb, expected_rgb(rgb, frame.encoding), err_msg=frame.encoding)


def test_bag_written_by_mcap_ros2_support_reads(tmp_path, rgb):
    path = tmp_path / "foreign.mcap"
    with path.open("wb") as stream, McapRos2Writer(stream) as writer:
        schema = writer.register_msgdef("sensor_msgs/msg/Image", IMAGE_SCHEMA)
        for k, encoding in enumerate(("rgb8", "bgr8")):
            height, width, step, data = rgb_to_image(rgb, encoding)
            message = {"header": {"stamp": {"sec": 10 + k, "nanosec": 5}, "frame_id": "cam_optical"},
                       "height": height, "width": width, "encoding": encoding, "is_bigendian": 0, "step": step,
                       "data": data}
            writer.write_message("/cam/image", schema, message, log_time=(20 + k) * SECOND)
    with BagReader(path) as bag:
        assert bag.topics["/cam/image"].count == 2
        frames = list(bag.frames("/cam/image"))
    assert [(f.stamp_ns, f.log_time_ns, f.frame_id) for f in frames] == [
        (10 * SECOND + 5, 20 * SECOND, "cam_optical"), (11 * SECOND + 5, 21 * SECOND, "cam_optical")]
    for frame in frames:
        np.testing.assert_array_equal(frame.rgb, rgb)


def test_missing_topic_lists_the_available_ones(tmp_path, rgb):
    count = len(write_every_encoding(tmp_path / "bag.mcap", rgb))
    with BagReader(tmp_path / "bag.mcap") as bag:
        with pytest.raises(BagError, match=r"bag\.mcap: no topic '/camera/image'; the bag has: /camera/image_raw "
                                           rf"\[sensor_msgs/msg/CompressedImage \| sensor_msgs/msg/Image, {count}\]"):
            next(bag.frames("/camera/image"))
        with pytest.raises(BagError, match="no topic '/labels'"):
            next(bag.frames("/camera/image_raw", ["/labels"]))


def test_topic_of_another_type_is_rejected(tmp_path):
    with BagWriter(tmp_path / "bag.mcap") as bag:
        bag.write_camera_info("/camera/camera_info", SECOND, 32, 24, "camera")
    with BagReader(tmp_path / "bag.mcap") as bag, pytest.raises(BagError, match="has type sensor_msgs/msg/CameraInfo"):
        next(bag.frames("/camera/camera_info"))


def test_missing_bag_is_named(tmp_path):
    with pytest.raises(BagError, match="no bag at .*nowhere.mcap"):
        BagReader(tmp_path / "nowhere.mcap")


def test_truncated_mcap_yields_the_frames_before_the_damage_then_names_the_file(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (360, 480, 3), dtype=np.uint8) for _ in range(8)]  # incompressible: ~2 per chunk
    with BagWriter(tmp_path / "full.mcap") as bag:
        for k, image in enumerate(images):
            bag.write_image("/camera/image_raw", (k + 1) * SECOND, image, "rgb8", "camera")
    data = (tmp_path / "full.mcap").read_bytes()
    (tmp_path / "cut.mcap").write_bytes(data[: len(data) * 2 // 3])
    read = []
    with BagReader(tmp_path / "cut.mcap") as bag:
        assert "File end magic" in bag.damage
        with pytest.raises(BagError, match=r"cut\.mcap: truncated or corrupt after \d+ readable messages"):
            for frame in bag.frames("/camera/image_raw"):
                read.append(frame)
    assert 2 <= len(read) < len(images)
    for frame in read:
        np.testing.assert_array_equal(frame.rgb, images[frame.index])


def test_recorder_killed_before_metadata_is_read_from_its_storage_file(tmp_path, rgb):
    write_every_encoding(tmp_path / "rec", rgb, "sqlite3")
    (tmp_path / "rec" / "metadata.yaml").unlink()
    with BagReader(tmp_path / "rec") as bag:
        assert len(list(bag.frames("/camera/image_raw"))) == len(RGB_ENCODINGS) + 2


def test_corrupt_sqlite_bag_is_a_clear_error(tmp_path, rgb):
    write_every_encoding(tmp_path / "bag.db3", rgb)
    data = (tmp_path / "bag.db3").read_bytes()
    (tmp_path / "cut.db3").write_bytes(data[: len(data) // 2])
    with pytest.raises(BagError, match=r"cut\.db3"):
        with BagReader(tmp_path / "cut.db3") as bag:
            list(bag.frames("/camera/image_raw"))


def test_undecodable_frames_are_skipped_and_counted_by_kind(tmp_path, rgb):
    with BagWriter(tmp_path / "bag.mcap") as bag:
        good = bag.image_msg(SECOND, "camera", rgb, "rgb8")
        bag.write("/camera/image_raw", IMAGE, good, SECOND)
        bag.write("/camera/image_raw", IMAGE, dataclasses.replace(good, step=10), 2 * SECOND)
        bag.write("/camera/image_raw", IMAGE, dataclasses.replace(good, encoding="rgb9"), 3 * SECOND)
        bag.write_compressed("/camera/image_raw", 4 * SECOND, rgb, "png", "camera")
        bag.write("/camera/image_raw", IMAGE, good, 5 * SECOND)
    with BagReader(tmp_path / "bag.mcap") as bag:
        frames = list(bag.frames("/camera/image_raw"))
        assert bag.stats.skipped == {"step": 1, "encoding": 1}
    assert [f.index for f in frames] == [0, 3, 4]


def write_labelled(path, rgb, label_order):
    """Frames 1..4 s; semantic labels for all but 3 s, instances (16UC1, k + 1) for all; ``label_order`` says
    whether labels are logged before or after their frame; an extra label at 9 s matches no frame."""
    semantic = np.full(rgb.shape[:2], 3, np.uint8)
    instances = np.zeros(rgb.shape[:2], np.uint16)
    instances[:4, :4] = 1
    with BagWriter(path) as bag:
        for k in range(1, 5):
            stamp, shift = k * SECOND, (-1 if label_order == "before" else 1) * 1000
            bag.write_image("/camera/image_raw", stamp, rgb, "rgb8", "camera")
            if k != 3:
                bag.write_image("/labels/semantic", stamp, semantic + k, "mono8", "camera", log_time_ns=stamp + shift)
            bag.write_image("/labels/instances", stamp, instances, "16UC1", "camera", log_time_ns=stamp + 2 * shift)
        bag.write_image("/labels/semantic", 9 * SECOND, semantic, "mono8", "camera")


@pytest.mark.parametrize("label_order", ["before", "after"])
def test_labels_are_matched_by_stamp(tmp_path, rgb, label_order):
    write_labelled(tmp_path / "bag.mcap", rgb, label_order)
    with BagReader(tmp_path / "bag.mcap") as bag:
        frames = list(bag.frames("/camera/image_raw", ["/labels/semantic", "/labels/instances"], max_pending=2))
        assert bag.stats.unmatched_labels == 1
    assert [f.stamp_ns for f in frames] == [k * SECOND for k in range(1, 5)]
    assert [sorted(f.labels) for f in frames] == [["instances", "semantic"]] * 2 + [["instances"]] + [
        ["instances", "semantic"]]
    assert frames[3].labels["semantic"].dtype == np.uint8 and (frames[3].labels["semantic"] == 7).all()
    instances = frames[0].labels["instances"]
    assert instances.dtype == np.int32 and instances[0, 0] == 0 and instances[-1, -1] == -1


def test_panoptic_messages_round_trip_as_labels(tmp_path, rgb):
    panoptic = np.full(rgb.shape[:2], 3, np.int32)
    panoptic[:5, :6] = 8000
    panoptic[-2:] = -1
    segments = [Segment(3, 3, "road", False, 1.0, 704, (0, 0, 32, 22)), Segment(8000, 8, "car", True, 0.75, 30, (0, 0, 6, 5))]
    with BagWriter(tmp_path / "bag.mcap") as bag:
        bag.write_image("/camera/image_raw", SECOND, rgb, "rgb8", "camera")
        bag.write_panoptic("/gt/panoptic", SECOND, panoptic, segments, CAMVID, "camera", "gt", latency_ns=1500)
    with BagReader(tmp_path / "bag.mcap") as bag:
        (frame,) = bag.frames("/camera/image_raw", ["/gt/panoptic"])
        (_, msgtype, _, data), = bag.messages({"/gt/panoptic"})
    np.testing.assert_array_equal(frame.labels["panoptic"], panoptic)
    msg = bag.store.deserialize_cdr(data, msgtype)
    assert msgtype == PANOPTIC and msg.panoptic.encoding == "16UC1" and msg.latency.nanosec == 1500
    segment_map = np.frombuffer(msg.panoptic.data, np.uint16).reshape(panoptic.shape)  # index + 1, 0 void
    assert segment_map[0, 0] == 2 and segment_map[10, 10] == 1 and segment_map[-1, -1] == 0
    car = msg.segments[1]
    assert (car.id, car.class_name, car.is_thing, car.area) == (8000, "car", True, 30)
    assert (car.bbox.x_offset, car.bbox.y_offset, car.bbox.width, car.bbox.height) == (0, 0, 6, 5)
    assert [c.name for c in msg.classes] == [c.name for c in CAMVID.classes]
    assert msg.classes[8].color.r == pytest.approx(64 / 255) and msg.classes[8].color.a == 1.0
    with BagWriter(tmp_path / "unknown.mcap") as bag, pytest.raises(ValueError, match=r"ids \[8000\] have no segment"):
        bag.write_panoptic("/gt/panoptic", SECOND, panoptic, segments[:1], CAMVID, "camera", "gt")


@pytest.mark.parametrize("name", ["bag.mcap", "bag.db3", "bag_dir"])
def test_frame_names_survive_in_custom_data(tmp_path, rgb, name):
    with BagWriter(tmp_path / name) as bag:
        bag.write_image("/camera/image_raw", SECOND, rgb, "rgb8", "camera")
        bag.set_custom_data(FRAME_NAMES_KEY, json.dumps({SECOND: "0016E5_08001"}))
    with BagReader(tmp_path / name) as bag:
        assert bag.frame_names == {SECOND: "0016E5_08001"}


def test_writer_never_overwrites_and_checks_storage(tmp_path):
    (tmp_path / "bag.mcap").write_bytes(b"")
    with pytest.raises(FileExistsError, match="never overwritten"):
        BagWriter(tmp_path / "bag.mcap")
    with pytest.raises(ValueError, match="storage 'rosbag1' is not allowed"):
        BagWriter(tmp_path / "b", "rosbag1")
    with pytest.raises(ValueError, match="cannot hold sqlite3"):
        BagWriter(tmp_path / "c.mcap", "sqlite3")


def test_message_definitions_are_found_in_an_ament_prefix(tmp_path, monkeypatch):
    share = tmp_path / "install" / "share" / "panoptic_ros" / "msg"
    share.mkdir(parents=True)
    for msg in bags.find_message_dir().glob("*.msg"):
        shutil.copy(msg, share)
    monkeypatch.setenv("AMENT_PREFIX_PATH", f"/nonexistent:{tmp_path / 'install'}")
    assert share in bags.message_dirs()
    monkeypatch.setattr(bags, "message_dirs", lambda: [tmp_path / "empty", share])
    assert bags.find_message_dir() == share
    monkeypatch.setattr(bags, "message_dirs", lambda: [tmp_path / "empty"])
    with pytest.raises(FileNotFoundError, match="PanopticSegmentation.msg.*empty.*AMENT_PREFIX_PATH"):
        bags.find_message_dir()


def test_the_installed_message_package_carries_the_definitions(monkeypatch, tmp_path):
    """setup.py copies the .msg files into the generated package, so installs without the source tree read bags."""
    import panoptic_ros.msg

    package_dir = Path(panoptic_ros.msg.__file__).parent
    assert package_dir in bags.message_dirs()
    monkeypatch.setattr(bags, "message_dirs", lambda: [tmp_path / "no_source_tree", package_dir])
    assert bags.find_message_dir() == package_dir


def matcher_frame(stamp: int) -> bags.Frame:
    return bags.Frame(stamp, stamp, stamp, "cam", "rgb8", np.zeros((1, 1, 3), np.uint8))


def test_a_frame_waits_for_exactly_max_pending_later_frames():
    """With ``max_pending=2`` a frame without its label comes out once two later frames have arrived (the queue
    exceeds 2), not after one; a frame with every label comes out as soon as the frames before it have. Kills ``len(pending) > max_pending`` -> ``>=`` and ``len(labels) >= label_count`` -> ``>``."""
    stats = bags.ReadStats()
    matcher = bags._LabelMatcher(1, 2, stats)
    assert [f.stamp_ns for f in matcher.add_frame(matcher_frame(1))] == []
    assert [f.stamp_ns for f in matcher.add_frame(matcher_frame(2))] == []
    assert [f.stamp_ns for f in matcher.add_frame(matcher_frame(3))] == [1]
    matcher.add_label(2, "semantic", np.zeros((1, 1)))
    assert [f.stamp_ns for f in matcher.add_frame(matcher_frame(4))] == [2]  # labelled: ready, 3 still waits
    two = bags._LabelMatcher(2, 5, bags.ReadStats())
    two.add_label(7, "semantic", np.zeros((1, 1)))
    assert list(two.add_frame(matcher_frame(7))) == []  # one label of two
    two.add_label(8, "semantic", np.zeros((1, 1)))
    two.add_label(8, "instances", np.zeros((1, 1)))
    assert [(f.stamp_ns, sorted(f.labels)) for f in two.add_frame(matcher_frame(8))] == []  # 7 is first in line
    assert [(f.stamp_ns, sorted(f.labels)) for f in two.flush()] == [(7, ["semantic"]), (8, ["instances", "semantic"])]


def test_labels_ahead_of_their_frames_are_kept_up_to_max_pending_per_topic():
    """Up to ``max_pending * label topics`` stamps of early labels are held (2 x 1 here): the third drops the
    oldest, counted as unmatched. Kills ``len(labels) > limit`` -> ``>=`` and ``max(label_count, 1)`` -> ``2``."""
    stats = bags.ReadStats()
    matcher = bags._LabelMatcher(1, 2, stats)
    for stamp in (10, 11):
        matcher.add_label(stamp, "semantic", np.zeros((1, 1)))
    assert stats.unmatched_labels == 0
    matcher.add_label(12, "semantic", np.zeros((1, 1)))
    assert stats.unmatched_labels == 1
    frames = [f for stamp in (10, 11, 12) for f in matcher.add_frame(matcher_frame(stamp))]
    # 10 lost its label and waits for two later frames; 11 and 12 have theirs
    assert [(f.stamp_ns, sorted(f.labels)) for f in frames] == [(10, []), (11, ["semantic"]), (12, ["semantic"])]
    assert list(matcher.flush()) == [] and stats.unmatched_labels == 1
    unlabelled = bags._LabelMatcher(0, 2, bags.ReadStats())  # no label topics: every frame is ready at once
    assert [f.stamp_ns for f in unlabelled.add_frame(matcher_frame(5))] == [5]
