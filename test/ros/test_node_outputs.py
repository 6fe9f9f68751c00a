"""The node's output encoding (``PanopticNode._publish``) on a hand-built prediction, pixel for pixel and to the
nanosecond. No DDS: the publishers are recorders (the session's conftest still keeps any ROS traffic on loopback
and in a domain of its own)."""

import threading
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from builtin_interfaces.msg import Time
from std_msgs.msg import Header

from panoptic_ros.classes import CAMVID
from panoptic_ros.node_config import NodeConfig
from panoptic_ros.postprocess import Segment
from panoptic_ros.predictor import Prediction
from panoptic_ros.ros import panoptic_node
from panoptic_ros.ros.conversions import class_infos
from panoptic_ros.ros.panoptic_node import Camera, PanopticNode
from panoptic_ros.runtime import CameraStats


class Recorder:
    """A publisher with one subscriber that keeps (message, a copy of its pixel bytes) of each publish: the node
    reuses its image messages from frame to frame."""

    def __init__(self):
        self.sent = []

    def get_subscription_count(self):
        return 1

    def publish(self, msg):
        self.sent.append((msg, bytes(getattr(msg, "data", b"")) if hasattr(msg, "height") else None))


# sky (stuff), road (stuff), two cars and a pedestrian, as index + 1 into the segments sorted by id (0 void)
SEGMENT_MAP = [[1, 1, 3, 3],
               [2, 0, 3, 4],
               [2, 2, 5, 5]]
SEGMENTS = [Segment(0, 0, "sky", False, 1.0, 2, (0, 0, 2, 1)), Segment(3, 3, "road", False, 1.0, 3, (0, 1, 2, 2)),
            Segment(8000, 8, "car", True, 0.75, 3, (2, 0, 2, 2)), Segment(8001, 8, "car", True, 0.5, 1, (3, 1, 1, 1)),
            Segment(9000, 9, "pedestrian", True, 0.25, 2, (2, 2, 2, 1))]


def publish(monkeypatch, received=0.5, now=7.75, names=("semantic", "panoptic", "panoptic_image", "instance"),
            config=None, rgb=None, camera_info=None, camera=None):
    """Run ``_publish`` for the hand-built 3 x 4 frame with the outputs ``names`` subscribed (every one but the
    overlays and camera_info by default), the clock at ``now`` s and the frame received at ``received`` s; the
    recorders by output name, and the stage timings."""
    segment_map = torch.tensor(SEGMENT_MAP, dtype=torch.int16)
    ids = torch.tensor([-1, 0, 3, 8000, 8001, 9000], dtype=torch.int32)[segment_map.long()]
    semantic = torch.tensor([[0, 0, 8, 8], [3, 5, 8, 8], [3, 3, 9, 9]], dtype=torch.uint8)
    instances = torch.tensor([[-1, -1, 0, 0], [-1, -1, 0, 1], [-1, -1, 2, 2]])
    prediction = Prediction(semantic, instances, ids, SEGMENTS, segment_map)
    camera = camera or Camera("", CameraStats())
    camera.publishers = {name: Recorder() for name in names}
    node = SimpleNamespace(_lock=threading.Lock(), _classes=class_infos(CAMVID),
                           _predictor=SimpleNamespace(name="tiny", table=CAMVID),
                           _paired_camera_info=lambda *a: camera_info)
    monkeypatch.setattr(panoptic_node, "time", SimpleNamespace(perf_counter=lambda: now))
    header = Header(stamp=Time(sec=1_700_000_000, nanosec=999_999_999), frame_id="cam")
    timings = {}
    PanopticNode._publish(node, camera, header, np.zeros((3, 4, 3), np.uint8) if rgb is None else rgb, prediction,
                          received, config or NodeConfig(), timings)
    assert set(timings) == {f"publish.{name}" for name in names}
    return camera.publishers


def pixels(sent, dtype):
    msg, data = sent
    return np.frombuffer(data, dtype).reshape(msg.height, msg.width)


def test_instance_image_holds_the_thing_indices_and_zero_on_stuff_and_void(monkeypatch):
    """~/instance by hand: the segment indices of the cars and the pedestrian (3, 4, 5), 0 on sky and road (1, 2:
    the last stuff index is the boundary) and on void. Kills ``segment_map > stuff`` -> ``>=`` (road 2 kept),
    a miscounted ``stuff`` and a publish of the segment image instead."""
    outputs = publish(monkeypatch)
    (instance,) = outputs["instance"].sent
    assert instance[0].encoding == "16UC1" and not instance[0].is_bigendian and instance[0].step == 8
    np.testing.assert_array_equal(pixels(instance, "<u2"), [[0, 0, 3, 3], [0, 0, 3, 4], [0, 0, 5, 5]])
    (image,) = outputs["panoptic_image"].sent
    np.testing.assert_array_equal(pixels(image, "<u2"), SEGMENT_MAP)
    (semantic,) = outputs["semantic"].sent
    assert semantic[0].encoding == "mono8"
    np.testing.assert_array_equal(pixels(semantic, np.uint8), [[0, 0, 8, 8], [3, 5, 8, 8], [3, 3, 9, 9]])


@pytest.mark.parametrize("received, now, latency", [(0.5, 7.75, (7, 250_000_000)), (1.0, 1.5, (0, 500_000_000)),
                                                    (0.25, 3.25, (3, 0))])
def test_panoptic_message_stamp_and_latency_to_the_nanosecond(monkeypatch, received, now, latency):
    """Every output carries the input stamp unchanged (1_700_000_000 s + 999_999_999 ns), and ~/panoptic's latency
    is receipt to publication split into whole seconds and nanoseconds. Kills mutants of ``latency_ns // 1e9`` /
    ``% 1e9`` (e.g. 1_000_000_001) and of ``perf_counter() - received``."""
    outputs = publish(monkeypatch, received, now)
    for name, recorder in outputs.items():
        (msg, _), = recorder.sent
        assert (msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id) == (1_700_000_000, 999_999_999,
                                                                                         "cam"), name
    (panoptic, _), = outputs["panoptic"].sent
    assert (panoptic.latency.sec, panoptic.latency.nanosec) == latency
    assert (panoptic.model, panoptic.mode, len(panoptic.classes)) == ("tiny", "fast", len(CAMVID))
    assert [(s.id, s.class_id, s.class_name, s.is_thing, s.score, s.area,
             (s.bbox.x_offset, s.bbox.y_offset, s.bbox.width, s.bbox.height)) for s in panoptic.segments] == [
        (s.id, s.class_id, s.class_name, s.is_thing, s.score, s.area, s.bbox) for s in SEGMENTS]
    np.testing.assert_array_equal(np.frombuffer(bytes(panoptic.panoptic.data), "<u2").reshape(3, 4), SEGMENT_MAP)


def test_panoptic_message_carries_the_class_table_with_colours_in_0_to_1(monkeypatch):
    """~/panoptic's class table, every field: CamVid's ids, names, thing flags and colours scaled from 0-255 to
    0-1, alpha 1 (by hand for building (128, 0, 0) and car (64, 0, 128)). Kills the ``class_infos`` mutants that
    drop or alter a field or a colour channel's scaling."""
    (panoptic, _), = publish(monkeypatch)["panoptic"].sent
    got = [(c.id, c.name, c.is_thing, (c.color.r, c.color.g, c.color.b, c.color.a)) for c in panoptic.classes]
    assert got == [(c.id, c.name, c.is_thing, (pytest.approx(c.color[0] / 255), pytest.approx(c.color[1] / 255),
                                                pytest.approx(c.color[2] / 255), 1.0)) for c in CAMVID.classes]
    assert got[1][:3] == (1, "building", False) and got[1][3] == pytest.approx((128 / 255, 0.0, 0.0, 1.0))
    assert got[8][:3] == (8, "car", True) and got[8][3] == pytest.approx((64 / 255, 0.0, 128 / 255, 1.0))


def test_overlays_blend_with_the_configured_alpha_and_compress_at_the_configured_quality(monkeypatch):
    """~/overlay is ``render_panoptic`` of this frame with ``output.overlay_alpha``, ~/overlay/compressed its JPEG
    at ``output.jpeg_quality`` with image_transport's format string; camera_info is published when the input's
    pairs with the frame and skipped (its stage still timed) when none does. Non-default alpha and quality, so that
    a setting dropped or swapped for its default fails."""
    from sensor_msgs.msg import CameraInfo

    from panoptic_ros.images import rgb_to_compressed
    from panoptic_ros.visualize import render_panoptic

    rgb = np.arange(36, dtype=np.uint8).reshape(3, 4, 3) * 7
    config = NodeConfig()
    config.output.overlay_alpha, config.output.jpeg_quality = 0.25, 37
    info = CameraInfo(width=4, height=3)
    outputs = publish(monkeypatch, names=("overlay", "overlay/compressed", "camera_info"), config=config, rgb=rgb,
                      camera_info=info)
    panoptic = np.array([-1, 0, 3, 8000, 8001, 9000])[np.array(SEGMENT_MAP)]
    expected = render_panoptic(rgb, np.array([[0, 0, 8, 8], [3, 5, 8, 8], [3, 3, 9, 9]], np.uint8), panoptic, CAMVID,
                               0.25)
    assert not np.array_equal(expected, render_panoptic(rgb, np.array([[0, 0, 8, 8], [3, 5, 8, 8], [3, 3, 9, 9]],
                                                                      np.uint8), panoptic, CAMVID, 0.5))
    (overlay,) = outputs["overlay"].sent
    assert overlay[0].encoding == "rgb8"
    np.testing.assert_array_equal(np.frombuffer(overlay[1], np.uint8).reshape(3, 4, 3), expected)
    ((compressed, _),) = outputs["overlay/compressed"].sent
    assert compressed.format == "rgb8; jpeg compressed bgr8"
    assert bytes(compressed.data) == rgb_to_compressed(expected, "jpeg", 37) != rgb_to_compressed(expected, "jpeg", 80)
    assert (compressed.header.stamp.sec, compressed.header.frame_id) == (1_700_000_000, "cam")
    assert [msg for msg, _ in outputs["camera_info"].sent] == [info]
    assert publish(monkeypatch, names=("camera_info",), camera_info=None)["camera_info"].sent == []
    # ~/overlay/compressed alone is rendered too (mutants 112 and 113 of _publish rendered only for ~/overlay)
    alone = publish(monkeypatch, names=("overlay/compressed",), config=config, rgb=rgb)["overlay/compressed"]
    ((alone, _),) = alone.sent
    assert bytes(alone.data) == bytes(compressed.data)


def test_the_segment_image_is_built_for_panoptic_image_alone_and_for_no_output_that_does_not_use_it(monkeypatch):
    """~/panoptic_image subscribed alone still gets the segment image (it used to need ~/panoptic too under
    mutants 31 and 32 of ``_publish``), and with only ~/semantic subscribed the segment buffer is never filled
    (mutant 32 built it for nothing)."""
    (image,) = publish(monkeypatch, names=("panoptic_image",))["panoptic_image"].sent
    np.testing.assert_array_equal(pixels(image, "<u2"), SEGMENT_MAP)
    camera = Camera("", CameraStats())
    publish(monkeypatch, names=("semantic",), camera=camera)
    assert len(camera.buffers["segments"].msg.data) == 0 and len(camera.buffers["semantic"].msg.data) == 12
