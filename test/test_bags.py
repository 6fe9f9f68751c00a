"""Bags written by rosbags and by mcap-ros2-support read back frame for frame: every camera encoding and both
compressed formats on one topic, labels matched by stamp, damaged bags and bad frames reported, not crashed on."""

import dataclasses
import json
import logging
import os
import re
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from mcap.reader import make_reader
from mcap.writer import CompressionType
from mcap.writer import Writer as McapWriter
from mcap_ros2.writer import Writer as McapRos2Writer

from panoptic_ros import bags
from panoptic_ros.bags import CAMERA_INFO, FRAME_NAMES_KEY, IMAGE, PANOPTIC, BagError, BagReader, BagWriter, TopicInfo
from panoptic_ros.classes import CAMVID
from panoptic_ros.images import (RGB_ENCODINGS, ImageError, array_to_image, compressed_to_rgb, image_to_rgb,
                                 rgb_to_compressed, rgb_to_image)
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
    """The whole error, with the allowed types. Kills their ", " join -> "XX, XX"."""
    with BagWriter(tmp_path / "bag.mcap") as bag:
        bag.write_camera_info("/camera/camera_info", SECOND, 32, 24, "camera")
    with BagReader(tmp_path / "bag.mcap") as bag, pytest.raises(BagError, match=re.escape(
            f"{tmp_path / 'bag.mcap'}: topic '/camera/camera_info' has type sensor_msgs/msg/CameraInfo; expected one "
            "of sensor_msgs/msg/Image, sensor_msgs/msg/CompressedImage")):
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


def test_early_labels_of_two_label_topics_are_held_up_to_max_pending_times_two():
    """Two label topics and ``max_pending=2``: four stamps of early labels are held, each further one drops the oldest
    and counts once. Kills ``max_pending * max(...)`` -> ``/`` (limit 1) and ``unmatched_labels += 1`` -> ``= 1``."""
    stats = bags.ReadStats()
    matcher = bags._LabelMatcher(2, 2, stats)
    for stamp in (10, 11, 12, 13):
        matcher.add_label(stamp, "semantic", np.zeros((1, 1)))
    assert stats.unmatched_labels == 0 and list(matcher.labels) == [10, 11, 12, 13]
    matcher.add_label(14, "semantic", np.zeros((1, 1)))
    matcher.add_label(15, "semantic", np.zeros((1, 1)))
    assert stats.unmatched_labels == 2 and list(matcher.labels) == [12, 13, 14, 15]


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == bags.__name__ and r.levelno == logging.WARNING]


def test_bad_label_messages_are_skipped_counted_by_kind_and_warned_once_per_kind(tmp_path, rgb, caplog):
    """Two rgb8 "semantic" labels (kind encoding) and a 16UC1 label with a short step (kind step): counted in
    ``stats.labels_skipped``, one warning (whole text) for the first of each kind, the frames keep their other labels.
    Kills ``_label``'s ``_skip`` arguments (counter, error, what) dropped or None, ``if not counter[kind]`` ->
    ``if counter[kind]`` (warns from the second on), ``counter[kind] += 1`` -> ``= 1``, every argument and the format
    of the warning, and decode_label's unknown-encoding ``ImageError`` with its kind or message dropped or changed."""
    path = tmp_path / "bag.mcap"
    semantic = np.full(rgb.shape[:2], 4, np.uint8)
    instances = np.ones(rgb.shape[:2], np.uint16)
    with BagWriter(path) as bag:
        for k in (1, 2, 3):
            bag.write_image("/camera/image_raw", k * SECOND, rgb, "rgb8", "camera")
            label = bag.image_msg(k * SECOND, "camera", semantic, "mono8") if k == 3 else \
                bag.image_msg(k * SECOND, "camera", rgb, "rgb8")
            bag.write("/labels/semantic", IMAGE, label, k * SECOND + 1)
            label = bag.image_msg(k * SECOND, "camera", instances, "16UC1")
            bag.write("/labels/instances", IMAGE, dataclasses.replace(label, step=10) if k == 1 else label,
                      k * SECOND + 2)
    caplog.set_level(logging.WARNING, logger=bags.__name__)
    with BagReader(path) as bag:
        frames = list(bag.frames("/camera/image_raw", ["/labels/semantic", "/labels/instances"]))
        assert bag.stats.labels_skipped == {"encoding": 2, "step": 1}
        assert bag.stats.skipped == {} and bag.stats.unmatched_labels == 0
    assert [sorted(f.labels) for f in frames] == [[], ["instances"], ["instances", "semantic"]]
    np.testing.assert_array_equal(frames[2].labels["semantic"], semantic)
    assert warnings_of(caplog) == [
        f"{path}: skipping label on /labels/semantic (encoding: label encoding 'rgb8' is none of semantic "
        "('mono8', '8UC1') or instances ('32SC1', '16UC1')); further ones are only counted",
        f"{path}: skipping label on /labels/instances (step: step 10 is smaller than width 32 x 2 bytes per pixel "
        "= 64 for 16UC1); further ones are only counted"]


def test_label_images_of_every_label_encoding_decode_pixel_exact(tmp_path):
    """mono8 and 8UC1 are semantic class ids as they are; 32SC1 instance indices as they are (-1 none); 16UC1
    holds k + 1 and reads back as k, also when big-endian. Kills the 32SC1 branch's encoding ("32sc1"), kind
    ("INSTANCES") and ``_pixels(None)``, and ``_pixels`` dropping ``is_bigendian`` or passing None / bool(None)."""
    with BagWriter(tmp_path / "bag.mcap") as bag:
        classes = np.array([[0, 1], [254, 255]], np.uint8)
        for encoding in ("mono8", "8UC1"):
            kind, array = bags.decode_label(IMAGE, bag.image_msg(SECOND, "camera", classes, encoding))
            assert kind == "semantic" and array.dtype == np.uint8
            np.testing.assert_array_equal(array, classes)
        indices = np.array([[-1, 0], [1, 70000]], np.int32)
        kind, array = bags.decode_label(IMAGE, bag.image_msg(SECOND, "camera", indices, "32SC1"))
        assert kind == "instances" and array.dtype == np.int32
        np.testing.assert_array_equal(array, indices)
        plus_one = np.array([[0, 1], [0x0102, 65535]], np.uint16)
        little = bag.image_msg(SECOND, "camera", plus_one, "16UC1")
        big = dataclasses.replace(little, is_bigendian=1,
                                  data=np.frombuffer(plus_one.astype(">u2").tobytes(), np.uint8))
        for msg in (little, big):
            kind, array = bags.decode_label(IMAGE, msg)
            assert kind == "instances" and array.dtype == np.int32
            np.testing.assert_array_equal(array, np.array([[-1, 0], [0x0101, 65534]], np.int32))


def test_bad_panoptic_labels_raise_image_errors_of_their_kind(tmp_path):
    """A PanopticSegmentation whose segment map is not 16UC1 is an ``encoding`` error, one whose map points past
    its segments a ``data`` error, each with its whole message. Kills both ``ImageError``s with the kind or the
    message dropped, None or changed."""
    panoptic = np.array([[3, 8000], [-1, 3]], np.int32)
    segments = [Segment(3, 3, "road", False, 1.0, 2, (0, 0, 2, 2)), Segment(8000, 8, "car", True, 0.5, 1, (1, 0, 1, 1))]
    with BagWriter(tmp_path / "bag.mcap") as bag:
        bag.write_panoptic("/gt/panoptic", SECOND, panoptic, segments, CAMVID, "camera", "gt")
    with BagReader(tmp_path / "bag.mcap") as bag:
        ((_, msgtype, _, data),) = bag.messages({"/gt/panoptic"})
        msg = bag.store.deserialize_cdr(data, msgtype)
    assert bags.decode_label(PANOPTIC, msg)[0] == "panoptic"
    mono16 = dataclasses.replace(msg, panoptic=dataclasses.replace(msg.panoptic, encoding="mono16"))
    with pytest.raises(ImageError, match=re.escape("PanopticSegmentation.panoptic must be 16UC1, got 'mono16'")) as bad:
        bags.decode_label(PANOPTIC, mono16)
    assert bad.value.kind == "encoding"
    with pytest.raises(ImageError, match=re.escape("PanopticSegmentation: segment map holds index 2, but there are "
                                                   "only 1 segments")) as bad:
        bags.decode_label(PANOPTIC, dataclasses.replace(msg, segments=msg.segments[:1]))
    assert bad.value.kind == "data"


def test_camera_info_fields_read_back(tmp_path):
    """Every CameraInfo field as written, uncalibrated (every matrix zero) and with an integer 3 x 3 ``k`` (r the
    identity, p = [k | 0]), and the log time given. Kills ``k``'s conversion (dtype dropped or None, reshape None / 10,
    ``or True``), every mutant of ``p`` (the condition inverted, ``and False`` aside, which gives zeros for a zero k
    too, ``or True``, shapes and axis), ``d`` of 6, ``r``'s condition and shape, distortion_model, binning, roi
    (offsets, size, do_rectify True) and ``_log(None, stamp)``."""
    k = [[500, 0, 31], [0, 400, 23], [0, 0, 1]]
    with BagWriter(tmp_path / "bag.mcap") as bag:
        bag.write_camera_info("/camera/camera_info", 2 * SECOND + 5, 32, 24, "optical", log_time_ns=7 * SECOND)
        bag.write_camera_info("/camera/camera_info", 3 * SECOND, 64, 48, "optical_2", k=k, log_time_ns=8 * SECOND)
    with BagReader(tmp_path / "bag.mcap") as bag:
        read = [(log_time, bag.store.deserialize_cdr(data, msgtype)) for _, msgtype, log_time, data in
                bag.messages({"/camera/camera_info"})]
    assert [log_time for log_time, _ in read] == [7 * SECOND, 8 * SECOND]
    fx_k = np.array(k, np.float64).reshape(9)
    fx_p = np.array([[500, 0, 31, 0], [0, 400, 23, 0], [0, 0, 1, 0]], np.float64).reshape(12)
    expected = [((2, 5, "optical"), 24, 32, np.zeros(9), np.zeros(9), np.zeros(12)),
                ((3, 0, "optical_2"), 48, 64, fx_k, np.eye(3).reshape(9), fx_p)]
    for (_, msg), (header, height, width, k_, r, p) in zip(read, expected, strict=True):
        assert (msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id) == header
        assert (msg.height, msg.width, msg.distortion_model) == (height, width, "plumb_bob")
        for name, value in (("d", np.zeros(5)), ("k", k_), ("r", r), ("p", p)):
            got = getattr(msg, name)
            assert got.dtype == np.float64, name
            np.testing.assert_array_equal(got, value, err_msg=name)
        assert (msg.binning_x, msg.binning_y) == (0, 0)
        roi = msg.roi
        assert (roi.x_offset, roi.y_offset, roi.height, roi.width, roi.do_rectify) == (0, 0, 0, 0, False)


def test_panoptic_message_defaults_classes_latency_and_log_times(tmp_path, rgb):
    """write_panoptic's defaults (mode "fast", latency 0), every class's is_thing, every segment's bbox with
    do_rectify False, a latency of 2 s + 1 ns split into sec and nanosec (a divisor of 1e9 + 1 gives 1 s and
    1e9 ns), and given log times of write_panoptic
    write_compressed and write_image, and the writer's per-topic counts. Kills the defaults "XXfastXX" / "FAST" /
    latency 1, ``is_thing=None``, ``do_rectify=True``, ``// 1000000001`` and ``% 1000000001``, ``_log(None, stamp)``
    in the three writers, ``_log``'s ``or True`` and ``counts[topic] += 1`` -> ``= 1``, ``-= 1``, ``+= 2``."""
    panoptic = np.array([[3, 8000], [-1, 3]], np.int32)
    segments = [Segment(3, 3, "road", False, 1.0, 2, (0, 0, 2, 2)), Segment(8000, 8, "car", True, 0.5, 1, (1, 0, 1, 1))]
    with BagWriter(tmp_path / "bag.mcap") as bag:
        bag.write_panoptic("/out", SECOND, panoptic, segments, CAMVID, "camera", "m", log_time_ns=5 * SECOND)
        bag.write_panoptic("/out", 6 * SECOND, panoptic, segments, CAMVID, "camera", "m", mode="full",
                           latency_ns=2 * SECOND + 1)
        bag.write_compressed("/camera/image/compressed", SECOND, rgb, "png", "camera", log_time_ns=6 * SECOND)
        bag.write_image("/camera/image_raw", SECOND, rgb, "rgb8", "camera", log_time_ns=4 * SECOND)
        assert bag.counts == {"/out": 2, "/camera/image/compressed": 1, "/camera/image_raw": 1}
    with BagReader(tmp_path / "bag.mcap") as bag:
        assert [log_time for _, _, log_time, _ in bag.messages({"/camera/image_raw"})] == [4 * SECOND]
        read = [(log_time, bag.store.deserialize_cdr(data, msgtype)) for _, msgtype, log_time, data in
                bag.messages({"/out"})]
        assert [log_time for _, _, log_time, _ in bag.messages({"/camera/image/compressed"})] == [6 * SECOND]
    assert [(log_time, msg.mode, msg.latency.sec, msg.latency.nanosec) for log_time, msg in read] == [
        (5 * SECOND, "fast", 0, 0), (6 * SECOND, "full", 2, 1)]
    for _, msg in read:
        assert [(c.id, c.name, c.is_thing) for c in msg.classes] == [(c.id, c.name, c.is_thing) for c in CAMVID.classes]
        assert [(s.id, s.class_id, s.class_name, s.is_thing, s.score, s.area) for s in msg.segments] == [
            (3, 3, "road", False, 1.0, 2), (8000, 8, "car", True, 0.5, 1)]
        assert [(s.bbox.x_offset, s.bbox.y_offset, s.bbox.width, s.bbox.height, s.bbox.do_rectify)
                for s in msg.segments] == [(0, 0, 2, 2, False), (1, 0, 1, 1, False)]


def write_two_topics(path, rgb):
    """Frames 0 (rgb8), 1 (png), 2 (rgb8) on /camera/image_raw at 1, 2, 3 s, a CameraInfo at 2 s between them."""
    with BagWriter(path) as bag:
        bag.write_image("/camera/image_raw", SECOND, rgb, "rgb8", "camera")
        bag.write_compressed("/camera/image_raw", 2 * SECOND, rgb, "png", "camera")
        bag.write_camera_info("/camera/camera_info", 2 * SECOND, 32, 24, "camera")
        bag.write_image("/camera/image_raw", 3 * SECOND, rgb, "rgb8", "camera")


@pytest.mark.parametrize("layout", ["file", "directory"])
def test_mcap_cut_before_its_end_magic_is_read_whole_then_named(tmp_path, rgb, caplog, layout):
    """An .mcap missing only its closing magic (a bag file, or the one storage file of a recording directory without
    metadata.yaml) is read record by record: the topics with their types and counts, every frame, then the whole
    error with the count of messages read on the frame topic. Kills ``damage`` with "NoneType", the warning's
    arguments and format, the salvage topic counts (``= 1``, ``-= 1``,
    ``+= 2``), names and counts None, the " | " join, describe_topics' ", " join, the message count (start 1, ``= 1``,
    ``+= 2``), every part of the error ("NoneType", ``and``, ``str(None)``, 'unexpected end of file' changed),
    ``iter_messages`` without the topics and ``messages``' ``_salvaged(None)`` (the CameraInfo would reach the label
    decoder) and the directory's
    ``glob("*.mcap")`` (None, "XX*.mcapXX", "*.MCAP")."""
    if layout == "file":
        write_two_topics(tmp_path / "full.mcap", rgb)
        bag_path = damaged = tmp_path / "cut.mcap"
        damaged.write_bytes((tmp_path / "full.mcap").read_bytes()[:-8])
    else:
        bag_path = tmp_path / "rec"
        write_two_topics(bag_path, rgb)
        (bag_path / "metadata.yaml").unlink()
        (damaged,) = bag_path.glob("*.mcap")
        damaged.write_bytes(damaged.read_bytes()[:-8])
    caplog.set_level(logging.WARNING, logger=bags.__name__)
    with BagReader(bag_path) as bag:
        assert bag.damage == "ReaderError: File end magic is invalid."
        assert warnings_of(caplog) == [f"{bag_path}: cannot be opened as a whole (ReaderError: File end magic is "
                                       "invalid.); reading it record by record"]
        assert bag.topics == {
            "/camera/camera_info": TopicInfo("/camera/camera_info", CAMERA_INFO, 1),
            "/camera/image_raw": TopicInfo("/camera/image_raw",
                                           "sensor_msgs/msg/CompressedImage | sensor_msgs/msg/Image", 3)}
        assert bag.describe_topics() == ("/camera/camera_info [sensor_msgs/msg/CameraInfo, 1], /camera/image_raw "
                                         "[sensor_msgs/msg/CompressedImage | sensor_msgs/msg/Image, 3]")
        frames = []
        with pytest.raises(BagError) as error:
            for frame in bag.frames("/camera/image_raw"):
                frames.append(frame)
    assert str(error.value) == (f"{damaged}: truncated or corrupt after 3 readable messages (EndOfFile: unexpected "
                                "end of file); opening it failed with ReaderError: File end magic is invalid.")
    assert [(f.index, f.stamp_ns, f.encoding) for f in frames] == [(0, SECOND, "rgb8"), (1, 2 * SECOND, "png"),
                                                                   (2, 3 * SECOND, "rgb8")]
    for frame in frames:
        np.testing.assert_array_equal(frame.rgb, rgb)


def test_salvage_checks_chunk_crcs(tmp_path, rgb):
    """An uncompressed .mcap (mcap-ros2-support, CRCs on) with one flipped pixel byte in its only chunk, cut before
    its end magic: the chunk fails its CRC, so no message of it is listed or read and the error names the CRC. Kills
    ``validate_crcs`` None, False or dropped (both messages would come out, one pixel wrong)."""
    path = tmp_path / "flipped.mcap"
    with path.open("wb") as stream, McapRos2Writer(stream, compression=CompressionType.NONE) as writer:
        schema = writer.register_msgdef("sensor_msgs/msg/Image", IMAGE_SCHEMA)
        for k in range(2):
            height, width, step, data = rgb_to_image(rgb, "rgb8")
            message = {"header": {"stamp": {"sec": 1 + k, "nanosec": 0}, "frame_id": "camera"}, "height": height,
                       "width": width, "encoding": "rgb8", "is_bigendian": 0, "step": step, "data": data}
            writer.write_message("/cam/image", schema, message, log_time=(1 + k) * SECOND)
    data = bytearray(path.read_bytes()[:-8])
    data[data.index(rgb.tobytes())] ^= 0xFF
    path.write_bytes(bytes(data))
    read = []
    with BagReader(path) as bag:
        assert bag.topics == {}
        with pytest.raises(BagError, match=re.escape(
                f"{path}: truncated or corrupt after 0 readable messages (CRCValidationError: ")):
            for message in bag.messages({"/cam/image"}):
                read.append(message)
    assert read == []


def test_salvaged_channel_without_schema_has_an_empty_type(tmp_path):
    """A damaged .mcap whose channel has no schema (schema id 0, allowed by MCAP) lists the topic with type "".
    Kills ``schema.name if schema or True`` (None.name: the salvage fails, the topic vanishes) and "" -> "XXXX"."""
    path = tmp_path / "raw.mcap"
    with path.open("wb") as stream:
        writer = McapWriter(stream)
        writer.start()
        channel = writer.register_channel("/raw", "cdr", 0)
        for k in range(2):
            writer.add_message(channel, (k + 1) * SECOND, b"\x00\x01\x00\x00", (k + 1) * SECOND)
        writer.finish()
    path.write_bytes(path.read_bytes()[:-8])
    with BagReader(path) as bag:
        assert bag.topics == {"/raw": TopicInfo("/raw", "", 2)}


def test_corrupt_sqlite_bag_fails_to_open_and_is_not_salvaged(tmp_path, rgb):
    """Only .mcap files are read record by record: a cut .db3 is a ``BagError`` of the constructor. Kills
    ``_mcap_files``'s ``path.suffix == ".mcap" or True``."""
    write_every_encoding(tmp_path / "bag.db3", rgb)
    data = (tmp_path / "bag.db3").read_bytes()
    (tmp_path / "cut.db3").write_bytes(data[: len(data) // 2])
    with pytest.raises(BagError, match=re.escape(f"{tmp_path / 'cut.db3'}: cannot open the bag: ")):
        BagReader(tmp_path / "cut.db3")


def test_an_empty_bag_has_no_topics(tmp_path):
    """A bag with no messages lists "(none)" in the missing-topic error. Kills "(none)" -> "XX(none)XX" / "(NONE)"."""
    with BagWriter(tmp_path / "empty.mcap"):
        pass
    with BagReader(tmp_path / "empty.mcap") as bag:
        assert bag.topics == {}
        with pytest.raises(BagError, match=re.escape(f"{tmp_path / 'empty.mcap'}: no topic '/camera/image_raw'; the "
                                                     "bag has: (none)")):
            bag.frames("/camera/image_raw")


def test_custom_data_of_a_directory_comes_from_metadata_yaml(tmp_path, rgb):
    """A bag directory's custom data is its metadata.yaml's, not the copy in the storage file (edited here to tell
    them apart). Kills "metadata.yaml" -> "XXmetadata.yamlXX" / "METADATA.YAML" in ``read_custom_data``."""
    with BagWriter(tmp_path / "bag_dir") as bag:
        bag.write_image("/camera/image_raw", SECOND, rgb, "rgb8", "camera")
        bag.set_custom_data(FRAME_NAMES_KEY, json.dumps({SECOND: "from_storage"}))
    metadata = tmp_path / "bag_dir" / "metadata.yaml"
    assert "from_storage" in metadata.read_text()
    metadata.write_text(metadata.read_text().replace("from_storage", "from_yaml"))
    with BagReader(tmp_path / "bag_dir") as bag:
        assert bag.frame_names == {SECOND: "from_yaml"}


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_custom_data_of_a_directory_without_metadata_comes_from_its_one_storage_file(tmp_path, rgb, storage):
    """A recording directory without metadata.yaml: the custom data its one storage file embeds; with two storage
    files, none. Kills the storage-file list (None, ``sorted(None)``, ``not in SUFFIXES``), ``len(files) == 1``
    (``and False``, ``or True``, ``!= 1``, ``== 2``) and ``files[0]`` (None, ``files[1]``)."""
    path = tmp_path / "rec"
    with BagWriter(path, storage) as bag:
        bag.write_image("/camera/image_raw", SECOND, rgb, "rgb8", "camera")
        bag.set_custom_data(FRAME_NAMES_KEY, json.dumps({SECOND: "0016E5_08001"}))
    (path / "metadata.yaml").unlink()
    with BagReader(path) as bag:
        assert bag.frame_names == {SECOND: "0016E5_08001"}
    (storage_file,) = path.iterdir()
    shutil.copy(storage_file, path / f"second{storage_file.suffix}")
    assert bags.read_custom_data(path) == {}


def test_bags_without_custom_data_read_as_empty_without_a_warning(tmp_path, rgb, caplog):
    """A foreign .mcap without a rosbag2 metadata record and a .db3 whose metadata table is empty have no custom
    data, and that is no reason for a warning. Kills ``if text or True`` (YAML of None) and ``if row or True``
    (None[0]) in the embedded-metadata readers."""
    write_every_encoding(tmp_path / "bag.db3", rgb)
    with sqlite3.connect(tmp_path / "bag.db3") as db:
        db.execute("DELETE FROM metadata")
    db.close()
    with (tmp_path / "foreign.mcap").open("wb") as stream, McapRos2Writer(stream) as writer:
        schema = writer.register_msgdef("sensor_msgs/msg/Image", IMAGE_SCHEMA)
        height, width, step, data = rgb_to_image(rgb, "rgb8")
        writer.write_message("/cam/image", schema, {"header": {"stamp": {"sec": 1, "nanosec": 0}, "frame_id": "c"},
                                                    "height": height, "width": width, "encoding": "rgb8",
                                                    "is_bigendian": 0, "step": step, "data": data}, log_time=SECOND)
    caplog.set_level(logging.WARNING, logger=bags.__name__)
    assert bags.read_custom_data(tmp_path / "bag.db3") == {}
    assert bags.read_custom_data(tmp_path / "foreign.mcap") == {}
    assert warnings_of(caplog) == []


def test_unreadable_metadata_is_a_warning_naming_the_bag(tmp_path, caplog):
    """metadata.yaml without ``rosbag2_bagfile_information``: no custom data, and one warning with the path and the
    error. Kills every argument and the format string of that warning."""
    (tmp_path / "bag").mkdir()
    (tmp_path / "bag" / "metadata.yaml").write_text("something_else: 1\n")
    caplog.set_level(logging.WARNING, logger=bags.__name__)
    assert bags.read_custom_data(tmp_path / "bag") == {}
    assert warnings_of(caplog) == [
        f"{tmp_path / 'bag'}: cannot read the bag's custom data: 'rosbag2_bagfile_information'"]


def test_message_dirs_are_the_source_tree_the_package_then_each_ament_prefix(monkeypatch):
    """Without AMENT_PREFIX_PATH only the source tree's msg/ and the package's; empty entries of the variable are
    skipped. Kills the default "" -> "XXXX" and the source tree's "msg" -> "XXmsgXX" / "MSG"."""
    here = Path(bags.__file__).resolve().parent
    monkeypatch.delenv("AMENT_PREFIX_PATH", raising=False)
    assert bags.message_dirs() == [here.parent / "msg", here / "msg"]
    monkeypatch.setenv("AMENT_PREFIX_PATH", f"/opt/a{os.pathsep}{os.pathsep}/opt/b")
    assert bags.message_dirs() == [here.parent / "msg", here / "msg", Path("/opt/a/share/panoptic_ros/msg"),
                                   Path("/opt/b/share/panoptic_ros/msg")]


def test_missing_message_definitions_error_in_full(tmp_path, monkeypatch):
    """The whole error when no folder holds the .msg files. Kills both ", " joins -> "XX, XX"."""
    monkeypatch.setattr(bags, "message_dirs", lambda: [tmp_path / "a", tmp_path / "b"])
    with pytest.raises(FileNotFoundError, match=re.escape(
            "panoptic_ros message definitions (ClassInfo, Segment, PanopticSegmentation.msg) not found; looked in "
            f"{tmp_path / 'a'}, {tmp_path / 'b'} (set AMENT_PREFIX_PATH to an install prefix)")):
        bags.find_message_dir()


def test_big_endian_frames_decode_like_little_endian_ones(tmp_path):
    """An rgb16 and a mono16 frame sent big-endian (bytes swapped, ``is_bigendian`` 1) decode to the RGB of the same
    pixels sent little-endian. Kills ``decode_frame`` passing None, bool(None) or nothing for ``is_bigendian``."""
    values = np.array([[0x1234, 0xFF00, 0x00FF], [0x8001, 0x0102, 0xFEDC]], np.uint16)
    with BagWriter(tmp_path / "bag.mcap") as bag:
        for encoding, pixels in (("mono16", values), ("rgb16", np.stack([values, values[::-1], values[:, ::-1]], -1))):
            little = bag.image_msg(SECOND, "camera", pixels, encoding)
            swapped = pixels.astype(pixels.dtype.newbyteorder(">")).tobytes()
            big = dataclasses.replace(little, is_bigendian=1, data=np.frombuffer(swapped, np.uint8))
            expected = image_to_rgb(encoding, *array_to_image(pixels, encoding))
            for msg in (little, big):
                assert bags.decode_frame(IMAGE, msg)[0] == encoding
                np.testing.assert_array_equal(bags.decode_frame(IMAGE, msg)[1], expected, err_msg=encoding)


def test_undeserialisable_frames_are_skipped_as_message_errors(tmp_path, rgb, caplog):
    """A frame whose CDR bytes are cut short is skipped as kind ``message``, with one warning naming the frame
    and the deserialiser's error in full. Kills that ``ImageError``'s kind and message (None, dropped, "XXmessageXX",
    "MESSAGE", "NoneType") and ``_frame``'s ``_skip(..., None)``; a fresh reader's stats are empty (kills
    ``self.stats = None``) and an intact bag has no damage (kills ``self.damage = ""``)."""
    path = tmp_path / "foreign.mcap"
    with BagWriter(tmp_path / "source.mcap") as source:
        good = source.store.serialize_cdr(source.image_msg(SECOND, "camera", rgb, "rgb8"), IMAGE)
    cut = bytes(good[:40])
    with pytest.raises(Exception) as deserialising:
        bags.typestore().deserialize_cdr(cut, IMAGE)
    with path.open("wb") as stream:
        writer = McapWriter(stream)
        writer.start(profile="ros2")
        schema = writer.register_schema("sensor_msgs/msg/Image", "ros2msg", IMAGE_SCHEMA.encode())
        channel = writer.register_channel("/cam/image", "cdr", schema)
        for k, data in enumerate((good, cut, good)):
            writer.add_message(channel, (k + 1) * SECOND, bytes(data), (k + 1) * SECOND)
        writer.finish()
    caplog.set_level(logging.WARNING, logger=bags.__name__)
    with BagReader(path) as bag:
        assert bag.stats == bags.ReadStats() and bag.damage is None
        frames = list(bag.frames("/cam/image"))
        assert bag.stats.skipped == {"message": 1}
    assert [f.index for f in frames] == [0, 2]
    error = deserialising.value
    assert warnings_of(caplog) == [f"{path}: skipping frame 1 (message: cannot deserialise sensor_msgs/msg/Image: "
                                   f"{type(error).__name__}: {error}); further ones are only counted"]


def test_a_chunk_failing_its_crc_ends_reading_an_intact_bag_with_the_count(tmp_path, rgb):
    """A whole .mcap (one message per uncompressed chunk) whose third chunk has a flipped pixel byte: rosbags opens
    it, the first two frames come out, then the whole error with the count. Kills ``messages``' count (start 1,
    ``= 1``, ``-= 1``, ``+= 2``) and every part of its error (None, ``sorted(None)``, "NoneType")."""
    path = tmp_path / "flipped.mcap"
    images = [rgb + k for k in range(4)]
    with path.open("wb") as stream, McapRos2Writer(stream, chunk_size=1, compression=CompressionType.NONE) as writer:
        schema = writer.register_msgdef("sensor_msgs/msg/Image", IMAGE_SCHEMA)
        for k, image in enumerate(images):
            height, width, step, data = rgb_to_image(image, "rgb8")
            message = {"header": {"stamp": {"sec": 1 + k, "nanosec": 0}, "frame_id": "camera"}, "height": height,
                       "width": width, "encoding": "rgb8", "is_bigendian": 0, "step": step, "data": data}
            writer.write_message("/cam/image", schema, message, log_time=(1 + k) * SECOND)
    data = bytearray(path.read_bytes())
    data[data.index(images[2].tobytes())] ^= 0xFF
    path.write_bytes(bytes(data))
    frames = []
    with BagReader(path) as bag:
        assert bag.damage is None
        with pytest.raises(BagError) as error:
            for frame in bag.frames("/cam/image"):
                frames.append(frame)
    assert str(error.value) == (f"{path}: reading failed after 2 messages of ['/cam/image']: ReaderError: Chunk "
                                "checksum mismatch.")
    assert [f.index for f in frames] == [0, 1]
    for frame in frames:
        np.testing.assert_array_equal(frame.rgb, images[frame.index])


def test_the_default_max_pending_is_30_frames(tmp_path):
    """With the default ``max_pending`` frame 0 leaves without its label once 30 later frames have arrived, so its
    label, logged after frame 30, is unmatched, while frame 1's, logged at the same time, still finds its frame.
    Kills the default 30 -> 31."""
    pixel = np.zeros((1, 1, 3), np.uint8)
    label = np.zeros((1, 1), np.uint8)
    with BagWriter(tmp_path / "bag.mcap") as bag:
        for k in range(31):
            bag.write_image("/camera/image_raw", (k + 1) * SECOND, pixel, "rgb8", "camera")
        for k in range(2):
            bag.write_image("/labels/semantic", (k + 1) * SECOND, label, "mono8", "camera", log_time_ns=40 * SECOND)
    with BagReader(tmp_path / "bag.mcap") as bag:
        frames = list(bag.frames("/camera/image_raw", ["/labels/semantic"]))
        assert bag.stats.unmatched_labels == 1
    assert [sorted(f.labels) for f in frames[:3]] == [[], ["semantic"], []]
    assert len(frames) == 31 and not any(f.labels for f in frames[2:])


def test_a_label_after_its_frame_left_is_not_attached_to_it():
    """Once a frame has left the matcher, a label of its stamp no longer reaches it: it is held, and unmatched at
    the end. Kills ``_pop``'s ``by_stamp.get(None) is frame`` and ``is not frame`` (the frame stays findable)."""
    stats = bags.ReadStats()
    matcher = bags._LabelMatcher(1, 1, stats)
    assert list(matcher.add_frame(matcher_frame(1))) == []
    (first,) = matcher.add_frame(matcher_frame(2))
    assert first.stamp_ns == 1 and matcher.by_stamp.keys() == {2}
    matcher.add_label(1, "semantic", np.zeros((1, 1)))
    assert first.labels == {}
    assert [f.stamp_ns for f in matcher.flush()] == [2] and stats.unmatched_labels == 1


def test_single_file_bags_are_written_in_a_hidden_folder_beside_them_and_parents_are_made(tmp_path, rgb):
    """``a/b/bag.mcap`` (folders made) is written as a rosbag2 directory in one ``.bag-*`` folder beside it, which is
    gone after close, leaving only the file; its chunks are zstd-compressed. Kills ``mkdir(parents=...)`` None,
    False or dropped, ``mkdtemp``'s prefix (None, dropped, "XX.bag-XX", ".BAG-") and dir (None, dropped), and
    ``storage == "mcap"`` -> "XXmcapXX" / "MCAP" (no compression)."""
    path = tmp_path / "a" / "b" / "bag.mcap"
    with BagWriter(path) as bag:
        bag.write_image("/camera/image_raw", SECOND, rgb, "rgb8", "camera")
        (folder,) = path.parent.iterdir()
        assert folder.is_dir() and folder.name.startswith(".bag-")
    assert [p.name for p in path.parent.iterdir()] == ["bag.mcap"]
    with path.open("rb") as stream:
        chunks = make_reader(stream).get_summary().chunk_indexes
    assert chunks and {c.compression for c in chunks} == {"zstd"}
