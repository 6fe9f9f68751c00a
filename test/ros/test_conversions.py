"""panoptic_ros.ros.conversions without a node: ``decode_frame`` on serialised frames as the node's raw subscription
hands them over, ``diagnostic_array`` and ``ImageBuffer``, each checked field by field against values built by hand
(issue #14: before these, only the slow node tests reached the first two, so mutmut could not run them per
mutant)."""

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from rclpy.serialization import serialize_message
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from panoptic_ros.images import ImageError, rgb_to_compressed
from panoptic_ros.ros.conversions import ImageBuffer, decode_frame, diagnostic_array
from panoptic_ros.runtime import ERROR, OK, STALE, WARN, Status


def header(sec=1_700_000_123, nanosec=999_999_999, frame_id="cam_front") -> Header:
    return Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id=frame_id)


def raw(pixels: np.ndarray, encoding: str, big_endian: bool = False, pad: int = 0) -> bytes:
    """A serialised Image of ``pixels`` ([H, W] or [H, W, C]) with ``pad`` bytes after each row."""
    height, width = pixels.shape[:2]
    dtype = pixels.dtype.newbyteorder(">" if big_endian else "<")
    rows = pixels.astype(dtype).reshape(height, -1).view(np.uint8)
    rows = np.concatenate([rows, np.full((height, pad), 0xEE, np.uint8)], 1)
    msg = Image(header=header(), height=height, width=width, encoding=encoding, is_bigendian=big_endian,
                step=rows.shape[1], data=rows.tobytes())
    return serialize_message(msg)


RGB = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 13


def test_rgb8_frame_keeps_stamp_frame_id_and_pixels_to_the_nanosecond():
    stamp, frame_id, rgb, seen = decode_frame(raw(RGB, "rgb8"), "raw", seen_bit_depth=11)
    assert stamp == (1_700_000_123, 999_999_999) and frame_id == "cam_front"
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 3, 3)
    np.testing.assert_array_equal(rgb, RGB)
    assert seen == 11  # an 8-bit frame leaves the 16-bit depth seen so far as it was


def test_bgr8_and_padded_rows_become_rgb():
    _, _, rgb, _ = decode_frame(raw(RGB[..., ::-1], "bgr8", pad=5), "raw")
    np.testing.assert_array_equal(rgb, RGB)
    _, _, grey, _ = decode_frame(raw(np.array([[0, 7], [200, 255]], np.uint8), "mono8"), "raw")
    np.testing.assert_array_equal(grey, np.repeat(np.array([[0, 7], [200, 255]], np.uint8)[..., None], 3, 2))


@pytest.mark.parametrize("big_endian", [False, True])
def test_12_bit_mono16_is_scaled_by_its_detected_depth_which_is_remembered(big_endian):
    """4095 (12 bits) maps to 255: the top 8 of 12 bits (>> 4), not of 16 (a near-black frame)."""
    pixels = np.array([[0, 16, 4095], [2048, 100, 17]], np.uint16)
    stamp, _, rgb, seen = decode_frame(raw(pixels, "mono16", big_endian), "raw")
    assert seen == 12
    np.testing.assert_array_equal(rgb[..., 0], [[0, 1, 255], [128, 6, 1]])
    assert (rgb == rgb[..., :1]).all()
    # a later darker frame keeps the depth seen so far (12 > its own 10 bits)
    _, _, rgb, seen = decode_frame(raw(np.array([[1023, 64]], np.uint16), "mono16", big_endian), "raw",
                                   seen_bit_depth=seen)
    assert seen == 12
    np.testing.assert_array_equal(rgb[0, :, 0], [63, 4])


def test_a_configured_bit_depth_is_used_as_is_and_not_detected():
    pixels = np.array([[4095, 256]], np.uint16)
    _, _, rgb, seen = decode_frame(raw(pixels, "mono16"), "raw", bit_depth=16, seen_bit_depth=0)
    np.testing.assert_array_equal(rgb[0, :, 0], [15, 1])  # 4095 >> 8, 256 >> 8
    assert seen == 0
    _, _, rgb, _ = decode_frame(raw(pixels, "mono16"), "raw", bit_depth=10)
    np.testing.assert_array_equal(rgb[0, :, 0], [255, 64])  # 4095 >> 2 saturates; 256 >> 2


def test_depth_images_are_rejected_as_not_camera_images():
    with pytest.raises(ImageError, match="depth image") as error:
        decode_frame(raw(np.ones((2, 2), np.uint16), "16UC1"), "raw")
    assert error.value.kind == "encoding"


def test_max_pixels_is_a_limit_that_the_frame_may_reach():
    frame = raw(np.zeros((4, 4, 3), np.uint8), "rgb8")
    assert decode_frame(frame, "raw", max_pixels=16)[2].shape == (4, 4, 3)
    with pytest.raises(ImageError) as error:
        decode_frame(frame, "raw", max_pixels=15)
    assert error.value.kind == "too_large"


def test_compressed_png_frame_is_exact_and_passes_the_seen_depth_through():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    msg = CompressedImage(header=header(sec=3, nanosec=4, frame_id="c"), format="rgb8; png compressed bgr8",
                          data=rgb_to_compressed(rgb, "png"))
    stamp, frame_id, decoded, seen = decode_frame(serialize_message(msg), "compressed", seen_bit_depth=14)
    assert (stamp, frame_id, seen) == ((3, 4), "c", 14)
    np.testing.assert_array_equal(decoded, rgb)


def test_a_truncated_buffer_is_a_cdr_error_naming_the_type_and_size():
    frame = raw(RGB, "rgb8")
    with pytest.raises(ImageError, match=rf"sensor_msgs/msg/Image of 10 bytes") as error:
        decode_frame(frame[:10], "raw")
    assert error.value.kind == "cdr"
    with pytest.raises(ImageError, match="sensor_msgs/msg/CompressedImage of 10 bytes"):
        decode_frame(frame[:10], "compressed")


def test_diagnostic_array_carries_every_status_field():
    statuses = [Status(OK, "panoptic_node: front", "serving", {"fps": "9.5", "dropped": "0"}),
                Status(WARN, "panoptic_node: rear", "input rate 3.0 Hz under 10 Hz", {}),
                Status(ERROR, "panoptic_node", "configure failed: no weights", {"reason": "x"}),
                Status(STALE, "panoptic_node: side", "no input for 2.0 s", {"since": "2.0"})]
    stamp = Time(sec=12, nanosec=34)
    msg = diagnostic_array(statuses, stamp, "panoptic_ros@host")
    assert msg.header.stamp == stamp and msg.header.frame_id == ""
    assert [s.level for s in msg.status] == [b"\x00", b"\x01", b"\x02", b"\x03"]
    assert [(s.name, s.message, s.hardware_id) for s in msg.status] == [
        (st.name, st.message, "panoptic_ros@host") for st in statuses]
    assert [[(v.key, v.value) for v in s.values] for s in msg.status] == [
        [("fps", "9.5"), ("dropped", "0")], [], [("reason", "x")], [("since", "2.0")]]
    assert diagnostic_array([], stamp, "h").status == []


def test_image_buffer_writes_little_endian_unpadded_rows_of_multichannel_encodings():
    buffer = ImageBuffer("rgb8")
    pixels = np.arange(2 * 5 * 3, dtype=np.uint8).reshape(2, 5, 3)
    msg = buffer.fill(pixels, header())
    assert (msg.height, msg.width, msg.step, msg.is_bigendian, msg.encoding) == (2, 5, 15, False, "rgb8")
    assert bytes(msg.data) == pixels.tobytes()
    view = buffer.pixels(header(), 3, 1)  # a new size: a new buffer of exactly 3 x 1 x 3 bytes
    assert view.shape == (3, 1, 3) and len(buffer.msg.data) == 9 and buffer.msg.step == 3
    with pytest.raises(ImageError, match=r"rgb8 needs uint8 \(3,\)"):
        buffer.fill(np.zeros((2, 5), np.uint8), header())
    wide = ImageBuffer("16UC1").fill(np.array([[1, 258]], np.uint16), header())
    assert bytes(wide.data) == b"\x01\x00\x02\x01"


def test_image_buffer_refuses_other_pixels_by_kind_and_message_and_does_not_copy_its_own(monkeypatch):
    """A refusal is an ImageError of kind "size" with the whole message, for a multichannel and a single-channel
    encoding (mutants 11, 15, 16 and 19 of ``ImageBuffer.fill`` changed the kind or the empty channel part), and
    pixels written through :meth:`ImageBuffer.pixels` are not copied onto themselves (21 and 22 dropped the
    ``shares_memory`` check's arguments: a copy every frame)."""
    for encoding, pixels, message in [
            ("rgb8", np.zeros((2, 5), np.uint8), "rgb8 needs uint8 (3,) pixels, got uint8 (2, 5)"),
            ("16UC1", np.zeros((2, 5), np.uint8), "16UC1 needs uint16  pixels, got uint8 (2, 5)")]:
        with pytest.raises(ImageError) as refused:
            ImageBuffer(encoding).fill(pixels, header())
        assert (refused.value.kind, str(refused.value)) == ("size", message)
    copies = []
    real_copyto = np.copyto
    monkeypatch.setattr(np, "copyto", lambda dst, src, **kw: (copies.append(src), real_copyto(dst, src, **kw)))
    buffer = ImageBuffer("mono8")
    own = buffer.pixels(header(), 2, 3)
    own[:] = [[1, 2, 3], [4, 5, 6]]
    assert bytes(buffer.fill(own, header()).data) == bytes([1, 2, 3, 4, 5, 6]) and copies == []
    other = np.full((2, 3), 9, np.uint8)
    assert bytes(buffer.fill(other, header()).data) == bytes([9] * 6) and len(copies) == 1
