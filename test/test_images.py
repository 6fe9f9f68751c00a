"""Image message buffers <-> numpy for every supported encoding, with row padding and bad input."""

import cv2
import numpy as np
import pytest

from panoptic_ros.images import (
    bit_depth_of,
    RGB_ENCODINGS,
    ImageError,
    array_to_image,
    compressed_to_rgb,
    image_to_array,
    image_to_rgb,
    rgb_to_compressed,
    rgb_to_image,
)

LOSSLESS = ("rgb8", "bgr8", "8UC3", "rgba8", "bgra8", "8UC4", "rgb16", "bgr16")


@pytest.fixture
def rgb():
    """Smooth colour ramps: chroma subsampling (yuv422) and Bayer interpolation change them only slightly."""
    y, x = np.mgrid[0:48, 0:64]
    return np.stack([x * 4, y * 5, 255 - x * 2], -1).astype(np.uint8)


def pad(height, step, data, extra):
    rows = np.frombuffer(data, np.uint8).reshape(height, step)
    return step + extra, np.pad(rows, ((0, 0), (0, extra)), constant_values=77).tobytes()


@pytest.mark.parametrize("encoding", RGB_ENCODINGS)
@pytest.mark.parametrize("padding", [0, 13])
def test_every_encoding_round_trips_with_row_padding(rgb, encoding, padding):
    height, width, step, data = rgb_to_image(rgb, encoding)
    step, data = pad(height, step, data, padding)
    out = image_to_rgb(encoding, height, width, step, data)
    assert out.shape == rgb.shape and out.dtype == np.uint8 and out.flags.c_contiguous
    if encoding in LOSSLESS:
        np.testing.assert_array_equal(out, rgb)
    elif encoding in ("mono8", "8UC1", "mono16"):
        np.testing.assert_array_equal(out[..., 0], cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    else:  # yuv422 / bayer: colours survive, within interpolation error
        assert np.abs(out.astype(int) - rgb).mean() < 6, encoding


def test_12_bit_mono16_keeps_its_top_8_bits():
    """A 12-bit sensor's mono16 frame (values < 4096): the default 16-bit scaling makes it near-black (cv_bridge's
    behaviour); bit_depth 12 keeps its top 8 bits, and bit_depth_of tells the depth from the values."""
    values = np.array([[0, 15, 16, 2048, 4095, 65535]], np.uint16)
    data = values.tobytes()
    assert image_to_rgb("mono16", 1, 6, 12, data)[0, :, 0].tolist() == [0, 0, 0, 8, 15, 255]
    assert image_to_rgb("mono16", 1, 6, 12, data, bit_depth=12)[0, :, 0].tolist() == [0, 0, 1, 128, 255, 255]
    assert image_to_rgb("rgb16", 1, 2, 12, data, bit_depth=12)[0].tolist() == [[0, 0, 1], [128, 255, 255]]
    assert [bit_depth_of(np.array([v], np.uint16)) for v in (0, 1023, 1024, 4095, 4096, 16384)] == [10, 10, 12, 12, 14, 16]
    with pytest.raises(ValueError, match="bit_depth 8"):
        image_to_rgb("mono16", 1, 6, 12, data, bit_depth=8)


def test_bayer_pattern_names_follow_ros(rgb):
    red = np.zeros_like(rgb)
    red[..., 0] = 200
    for encoding in ("bayer_rggb8", "bayer_bggr8", "bayer_gbrg8", "bayer_grbg8"):
        out = image_to_rgb(encoding, *rgb_to_image(red, encoding))
        assert out[8:-8, 8:-8, 0].min() > 150 and out[8:-8, 8:-8, 2].max() < 50, encoding


def test_big_endian_16_bit():
    values = np.array([[0x1234, 0xABCD]], np.uint16)
    data = values.astype(">u2").tobytes()
    np.testing.assert_array_equal(image_to_array("mono16", 1, 2, 4, data, is_bigendian=True), values)
    np.testing.assert_array_equal(image_to_rgb("mono16", 1, 2, 4, data, is_bigendian=True)[..., 0], [[0x12, 0xAB]])


def test_label_images_keep_their_values():
    ids = np.array([[-1, 8001], [3, 2147483647]], np.int32)
    np.testing.assert_array_equal(image_to_array("32SC1", *array_to_image(ids, "32SC1")), ids)
    with pytest.raises(ImageError, match="32SC1 needs int32"):
        array_to_image(ids.astype(np.int64), "32SC1")


@pytest.mark.parametrize("kind, args, message", [
    ("encoding", ("nv12", 4, 4, 4, bytes(24)), "unsupported encoding 'nv12'"),
    ("size", ("rgb8", 0, 4, 12, b""), "width and height must be positive"),
    ("step", ("rgb8", 4, 4, 11, bytes(48)), "step 11 is smaller than width 4 x 3"),
    ("data", ("rgb8", 4, 4, 12, bytes(47)), "fewer than height 4 x step 12 = 48"),
    ("size", ("yuv422", 2, 3, 6, bytes(12)), "width 3 must be even"),
    ("too_large", ("mono8", 8192, 8192, 8192, b""), "above the limit"),
    ("encoding", ("32SC1", 1, 1, 4, bytes(4)), "not a camera image"),
    ("encoding", ("16UC1", 1, 1, 2, bytes(2)), r"a depth image \(REP 118\)"),
    ("encoding", ("32FC1", 1, 1, 4, bytes(4)), r"a depth image \(REP 118\)"),
])
def test_bad_images_raise_with_a_kind(kind, args, message):
    with pytest.raises(ImageError, match=message) as error:
        image_to_rgb(*args, max_pixels=4096 * 4096)
    assert error.value.kind == kind


@pytest.mark.parametrize("fmt", ["jpeg", "png", "rgb8; jpeg compressed bgr8"])
def test_compressed_round_trip(rgb, fmt):
    data = rgb_to_compressed(rgb, "png" if "png" in fmt else "jpeg")
    out = compressed_to_rgb(fmt, data)
    assert out.shape == rgb.shape
    assert np.abs(out.astype(int) - rgb).mean() < (0.01 if fmt == "png" else 3)


def test_sixteen_bit_png_is_scaled():
    gray = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    out = compressed_to_rgb("png", cv2.imencode(".png", gray)[1])
    np.testing.assert_array_equal(out[..., 1], (gray >> 8).astype(np.uint8))


def test_bad_compressed_images(rgb):
    jpeg = rgb_to_compressed(rgb)
    with pytest.raises(ImageError, match="cannot") as error:
        compressed_to_rgb("jpeg", jpeg[:40])
    assert error.value.kind == "decode"
    with pytest.raises(ImageError) as error:
        compressed_to_rgb("jpeg", b"\x00" * 100)
    assert error.value.kind == "decode"
    with pytest.raises(ImageError, match="above the limit") as error:
        compressed_to_rgb("png", rgb_to_compressed(np.zeros((300, 300, 3), np.uint8), "png"), max_pixels=1000)
    assert error.value.kind == "too_large"
    with pytest.raises(ImageError, match="unsupported compressed format 'tiff'"):
        compressed_to_rgb("tiff", jpeg)
    with pytest.raises(ImageError, match="compressedDepth"):
        compressed_to_rgb("16UC1; compressedDepth png", jpeg)


# Exact kinds and messages of every rejection (issue #14: mutants that changed a kind or a message survived the
# tests above, which matched fragments), with the values at each limit.
from panoptic_ros.images import LAYOUTS, compressed_format, image_buffer  # noqa: E402

_LAYOUTS, _RGB = ", ".join(LAYOUTS), ", ".join(RGB_ENCODINGS)


@pytest.mark.parametrize("call, kind, message", [
    (lambda: image_to_array("nv12", 4, 4, 4, bytes(24)), "encoding", f"unsupported encoding 'nv12'; supported: {_LAYOUTS}"),
    (lambda: image_to_array("rgb8", 0, 4, 12, b""), "size", "image is 4 x 0: width and height must be positive"),
    (lambda: image_to_array("rgb8", 4, 0, 12, b""), "size", "image is 0 x 4: width and height must be positive"),
    (lambda: image_to_array("mono8", 3, 5, 5, bytes(15), max_pixels=14), "too_large",
     "image is 5 x 3 = 15 pixels, above the limit of 14"),
    (lambda: image_to_array("rgb16", 2, 4, 23, bytes(48)), "step",
     "step 23 is smaller than width 4 x 6 bytes per pixel = 24 for rgb16"),
    (lambda: image_to_array("rgb8", 4, 4, 12, bytes(47)), "data", "data holds 47 bytes, fewer than height 4 x step 12 = 48"),
    (lambda: image_to_array("yuv422", 2, 3, 6, bytes(12)), "size", "yuv422 packs two pixels in four bytes: width 3 must be even"),
    (lambda: image_to_rgb("32SC1", 1, 1, 4, bytes(4)), "encoding", f"encoding '32SC1' is not a camera image; supported: {_RGB}"),
    (lambda: image_to_rgb("16UC1", 1, 1, 2, bytes(2)), "encoding",
     f"encoding '16UC1' is a depth image (REP 118); supported: {_RGB}"),
    (lambda: array_to_image(np.zeros((2, 2), np.uint8), "nv12"), "encoding", f"unsupported encoding 'nv12'; supported: {_LAYOUTS}"),
    (lambda: array_to_image(np.zeros((2, 2, 4), np.uint8), "rgb8"), "size", "rgb8 needs uint8 [H, W, 3], got uint8 (2, 2, 4)"),
    (lambda: array_to_image(np.zeros((2, 2), np.int64), "mono8"), "size", "mono8 needs uint8 [H, W], got int64 (2, 2)"),
    (lambda: rgb_to_image(np.zeros((2, 2, 4), np.uint8), "rgb8"), "size",
     "expected a uint8 RGB image [H, W, 3], got uint8 (2, 2, 4)"),
    (lambda: rgb_to_image(np.zeros((2, 2, 3), np.float32), "rgb8"), "size",
     "expected a uint8 RGB image [H, W, 3], got float32 (2, 2, 3)"),
    (lambda: rgb_to_image(np.zeros((2, 2, 3), np.uint8), "32SC1"), "encoding", f"cannot encode RGB as '32SC1'; supported: {_RGB}"),
    (lambda: compressed_format("16UC1; compressedDepth png"), "encoding",
     "compressedDepth images ('16UC1; compressedDepth png') are not camera images"),
    (lambda: compressed_format("tiff"), "encoding", "unsupported compressed format 'tiff'; supported: jpeg, png"),
    (lambda: rgb_to_compressed(np.zeros((2, 2, 3), np.uint8), "bmp"), "encoding",
     "unsupported compressed format 'bmp'; supported: jpeg, png"),
    (lambda: compressed_to_rgb("png", b"\x89PNG\r\n\x1a\n" + bytes(40)), "decode", None),  # PIL's message
    (lambda: compressed_to_rgb("png", rgb_to_compressed(np.full((16, 16, 3), 9, np.uint8), "png")[:60]), "decode",
     "cannot decode 60 bytes of 'png' data"),  # a whole header (PIL reads the size), no pixels
])
def test_every_rejection_has_its_exact_kind_and_message(call, kind, message):
    with pytest.raises(ImageError) as error:
        call()
    assert error.value.kind == kind
    if message is not None:
        assert str(error.value) == message


def test_limits_are_inclusive_and_bit_depths_9_to_16_are_accepted():
    assert image_to_array("mono8", 3, 5, 5, bytes(15), max_pixels=15).shape == (3, 5)
    assert image_to_array("mono8", 1, 1, 1, bytes(1)).shape == (1, 1)
    data = np.array([[5000, 65535]], "<u2").tobytes()
    for depth in (9, 16):
        image_to_rgb("mono16", 1, 2, 4, data, bit_depth=depth)
    for depth in (8, 17):
        with pytest.raises(ValueError, match=rf"^bit_depth {depth} must be in \[9, 16\]$"):
            image_to_rgb("mono16", 1, 2, 4, data, bit_depth=depth)
    # 12-bit: 5000 >> 4 = 312 saturates at 255 (it would wrap to 56); 16-bit keeps the top byte
    np.testing.assert_array_equal(image_to_rgb("mono16", 1, 2, 4, data, bit_depth=12)[0, :, 0], [255, 255])
    np.testing.assert_array_equal(image_to_rgb("mono16", 1, 2, 4, data, bit_depth=16)[0, :, 0], [19, 255])
    assert bit_depth_of(np.zeros((0, 0), np.uint16)) == 10 and bit_depth_of(np.array([1023], np.uint16)) == 10


def test_little_endian_pixels_are_a_view_and_image_buffer_steps_are_exact():
    data = bytearray(np.arange(8, dtype="<u2").tobytes())
    pixels = image_to_array("mono16", 2, 4, 8, data)
    assert np.shares_memory(pixels, np.frombuffer(data, np.uint8))  # no copy where the layout allows
    height, width, step, flat = image_buffer(np.zeros((1, 5, 3), np.uint8), "rgb8")
    assert (height, width, step, flat.size) == (1, 5, 15, 15)


def test_compressed_formats_quality_and_channels():
    assert [compressed_format(f) for f in ("JPG", "rgb8; jpeg compressed bgr8", "png", "bgra8; PNG compressed")] == [
        "jpeg", "jpeg", "png", "png"]
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    low, high = rgb_to_compressed(noise, "jpeg", quality=10), rgb_to_compressed(noise, "jpeg", quality=95)
    assert low[:3] == high[:3] == b"\xff\xd8\xff" and len(low) < len(high) / 2
    assert rgb_to_compressed(noise, "png")[:8] == b"\x89PNG\r\n\x1a\n"
    # four-channel png (BGRA on disk) and grey png come back as RGB
    bgra = np.dstack([noise[..., ::-1], np.full((32, 32), 128, np.uint8)])
    np.testing.assert_array_equal(compressed_to_rgb("png", cv2.imencode(".png", bgra)[1]), noise)
    grey = noise[..., 0]
    np.testing.assert_array_equal(compressed_to_rgb("png", cv2.imencode(".png", grey)[1]), np.dstack([grey] * 3))
