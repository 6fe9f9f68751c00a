"""Image buffers as ROS carries them (``sensor_msgs/Image`` and ``CompressedImage`` fields) to and from numpy, without
ROS: the node, the bag reader and the bag writer share these conversions.

Encodings follow ``sensor_msgs/image_encodings.hpp``: ``yuv422`` is UYVY and ``yuv422_yuy2`` is YUYV (``uyvy`` and
``yuyv`` are their aliases); Bayer names give the pattern of the first two pixels of the first row, mapped to
OpenCV's codes as cv_bridge does. 16-bit camera images (``mono16``, ``rgb16``, ``bgr16``) become 8-bit by keeping the
top 8 of their ``bit_depth`` significant bits: 16 is cv_bridge's scaling, 12 serves a 12-bit sensor (whose frames
would otherwise be near-black), and :func:`bit_depth_of` tells it from the values. ``16UC1`` and ``32FC1`` are
depth images (REP 118) and other non-camera encodings are rejected.

Every rejection is an :class:`ImageError` whose ``kind`` names the problem, so callers can count them by kind.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image as PILImage

# encoding -> (element type, channels)
LAYOUTS: dict[str, tuple[np.dtype, int]] = {
    "rgb8": (np.uint8, 3), "bgr8": (np.uint8, 3), "8UC3": (np.uint8, 3),
    "rgba8": (np.uint8, 4), "bgra8": (np.uint8, 4), "8UC4": (np.uint8, 4),
    "rgb16": (np.uint16, 3), "bgr16": (np.uint16, 3),
    "mono8": (np.uint8, 1), "8UC1": (np.uint8, 1),
    "mono16": (np.uint16, 1), "16UC1": (np.uint16, 1),
    "16SC1": (np.int16, 1), "32SC1": (np.int32, 1), "32FC1": (np.float32, 1),
    "yuv422": (np.uint8, 2), "uyvy": (np.uint8, 2), "yuv422_yuy2": (np.uint8, 2), "yuyv": (np.uint8, 2),
    "bayer_rggb8": (np.uint8, 1), "bayer_bggr8": (np.uint8, 1),
    "bayer_gbrg8": (np.uint8, 1), "bayer_grbg8": (np.uint8, 1),
}
# How each colour-capable encoding becomes RGB: a cv2 conversion code, or None where the channels already are RGB.
_TO_RGB = {
    "rgb8": None, "rgb16": None, "bgr8": cv2.COLOR_BGR2RGB, "8UC3": cv2.COLOR_BGR2RGB, "bgr16": cv2.COLOR_BGR2RGB,
    "rgba8": cv2.COLOR_RGBA2RGB, "bgra8": cv2.COLOR_BGRA2RGB, "8UC4": cv2.COLOR_BGRA2RGB,
    "mono8": cv2.COLOR_GRAY2RGB, "8UC1": cv2.COLOR_GRAY2RGB, "mono16": cv2.COLOR_GRAY2RGB,
    "yuv422": cv2.COLOR_YUV2RGB_UYVY, "uyvy": cv2.COLOR_YUV2RGB_UYVY,
    "yuv422_yuy2": cv2.COLOR_YUV2RGB_YUY2, "yuyv": cv2.COLOR_YUV2RGB_YUY2,
    "bayer_rggb8": cv2.COLOR_BayerBG2RGB, "bayer_bggr8": cv2.COLOR_BayerRG2RGB,
    "bayer_gbrg8": cv2.COLOR_BayerGR2RGB, "bayer_grbg8": cv2.COLOR_BayerGB2RGB,
}
_FROM_RGB = {
    "bgr8": cv2.COLOR_RGB2BGR, "8UC3": cv2.COLOR_RGB2BGR, "rgba8": cv2.COLOR_RGB2RGBA, "bgra8": cv2.COLOR_RGB2BGRA,
    "8UC4": cv2.COLOR_RGB2BGRA, "mono8": cv2.COLOR_RGB2GRAY, "8UC1": cv2.COLOR_RGB2GRAY,
    "yuv422": cv2.COLOR_RGB2YUV_UYVY, "uyvy": cv2.COLOR_RGB2YUV_UYVY,
    "yuv422_yuy2": cv2.COLOR_RGB2YUV_YUY2, "yuyv": cv2.COLOR_RGB2YUV_YUY2,
}
_BAYER_OFFSETS = {"bayer_rggb8": (0, 0, 1, 1), "bayer_bggr8": (1, 1, 0, 0),  # (y, x) of R then of B in a 2x2 tile
                  "bayer_gbrg8": (1, 0, 0, 1), "bayer_grbg8": (0, 1, 1, 0)}
RGB_ENCODINGS = tuple(_TO_RGB)
BIT_DEPTHS = (10, 12, 14, 16)  # what 16-bit camera frames carry, for detection
COMPRESSED_FORMATS = ("jpeg", "png")


class ImageError(ValueError):
    """A frame that cannot be converted. ``kind``: encoding, size, step, data, too_large or decode."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def _check_size(height: int, width: int, max_pixels: int | None) -> None:
    if height <= 0 or width <= 0:
        raise ImageError("size", f"image is {width} x {height}: width and height must be positive")
    if max_pixels is not None and height * width > max_pixels:
        raise ImageError("too_large", f"image is {width} x {height} = {height * width} pixels, above the limit of "
                                      f"{max_pixels}")


def image_to_array(encoding: str, height: int, width: int, step: int, data, is_bigendian: bool = False,
                   max_pixels: int | None = None) -> np.ndarray:
    """The pixels of an Image message as [H, W] or [H, W, C] of the encoding's element type (a view of ``data``
    where possible). ``step`` is bytes per row, padding included; ``data`` anything with the buffer protocol."""
    if encoding not in LAYOUTS:
        raise ImageError("encoding", f"unsupported encoding {encoding!r}; supported: {', '.join(LAYOUTS)}")
    _check_size(height, width, max_pixels)
    dtype, channels = LAYOUTS[encoding]
    dtype = np.dtype(dtype).newbyteorder(">" if is_bigendian else "<")
    if channels == 2 and width % 2:
        raise ImageError("size", f"{encoding} packs two pixels in four bytes: width {width} must be even")
    row = width * channels * dtype.itemsize
    if step < row:
        raise ImageError("step", f"step {step} is smaller than width {width} x {channels * dtype.itemsize} bytes "
                                 f"per pixel = {row} for {encoding}")
    buffer = np.frombuffer(data, np.uint8)
    if buffer.size < step * height:
        raise ImageError("data", f"data holds {buffer.size} bytes, fewer than height {height} x step {step} = "
                                 f"{step * height}")
    rows = buffer[:step * height].reshape(height, step)[:, :row]
    pixels = rows.view(dtype).reshape((height, width) if channels == 1 else (height, width, channels))
    return pixels.astype(dtype.newbyteorder("="), copy=False)


def bit_depth_of(pixels: np.ndarray) -> int:
    """The smallest of ``BIT_DEPTHS`` that holds every value of 16-bit ``pixels``."""
    top = int(pixels.max()).bit_length() if pixels.size else 0
    return next(bits for bits in BIT_DEPTHS if top <= bits)


def image_to_rgb(encoding: str, height: int, width: int, step: int, data, is_bigendian: bool = False,
                 max_pixels: int | None = None, bit_depth: int = 16) -> np.ndarray:
    """An Image message's pixels as a contiguous uint8 RGB array [H, W, 3] (a view of ``data`` for unpadded
    ``rgb8``). 16-bit encodings keep the top 8 of ``bit_depth`` bits; larger values saturate at 255."""
    if encoding in LAYOUTS and encoding not in _TO_RGB:
        kind = "a depth image (REP 118)" if encoding in ("16UC1", "32FC1") else "not a camera image"
        raise ImageError("encoding", f"encoding {encoding!r} is {kind}; supported: {', '.join(RGB_ENCODINGS)}")
    if not 9 <= bit_depth <= 16:
        raise ValueError(f"bit_depth {bit_depth} must be in [9, 16]")
    pixels = image_to_array(encoding, height, width, step, data, is_bigendian, max_pixels)
    if pixels.dtype == np.uint16:
        shifted = pixels >> (bit_depth - 8)
        pixels = (shifted if bit_depth == 16 else np.minimum(shifted, 255)).astype(np.uint8)
    code = _TO_RGB[encoding]
    return np.ascontiguousarray(pixels) if code is None else cv2.cvtColor(np.ascontiguousarray(pixels), code)


def image_buffer(array: np.ndarray, encoding: str) -> tuple[int, int, int, np.ndarray]:
    """(height, width, step, data) of an Image message holding ``array``: ``data`` is a flat uint8 view of
    ``array`` as contiguous little-endian (no copy when it already is one), rows unpadded. ``array`` must
    already have the encoding's element type and channels."""
    if encoding not in LAYOUTS:
        raise ImageError("encoding", f"unsupported encoding {encoding!r}; supported: {', '.join(LAYOUTS)}")
    dtype, channels = LAYOUTS[encoding]
    shape = array.shape[:2] + ((channels,) if channels > 1 else ())
    if array.dtype != dtype or array.ndim != len(shape) or array.shape != shape:
        raise ImageError("size", f"{encoding} needs {np.dtype(dtype).name} [H, W{', ' + str(channels) if channels > 1 else ''}],"
                                 f" got {array.dtype} {array.shape}")
    height, width = array.shape[:2]
    pixels = np.ascontiguousarray(array, np.dtype(dtype).newbyteorder("<")).reshape(-1).view(np.uint8)
    return height, width, pixels.size // max(height, 1), pixels


def array_to_image(array: np.ndarray, encoding: str) -> tuple[int, int, int, bytes]:
    """As :func:`image_buffer`, with the pixels copied into ``bytes``."""
    height, width, step, pixels = image_buffer(array, encoding)
    return height, width, step, pixels.tobytes()


def rgb_to_image(rgb: np.ndarray, encoding: str) -> tuple[int, int, int, bytes]:
    """Encode a uint8 RGB image [H, W, 3] as any camera encoding (16-bit ones repeat the byte: v * 257)."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageError("size", f"expected a uint8 RGB image [H, W, 3], got {rgb.dtype} {rgb.shape}")
    if encoding in _BAYER_OFFSETS:
        ry, rx, by, bx = _BAYER_OFFSETS[encoding]
        mosaic = rgb[..., 1].copy()
        mosaic[ry::2, rx::2] = rgb[ry::2, rx::2, 0]
        mosaic[by::2, bx::2] = rgb[by::2, bx::2, 2]
        return array_to_image(mosaic, encoding)
    if encoding in ("rgb8", "rgb16"):
        pixels = rgb
    elif encoding in ("bgr16", "mono16"):
        pixels = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR if encoding == "bgr16" else cv2.COLOR_RGB2GRAY)
    elif encoding in _FROM_RGB:
        pixels = cv2.cvtColor(rgb, _FROM_RGB[encoding])
    else:
        raise ImageError("encoding", f"cannot encode RGB as {encoding!r}; supported: {', '.join(RGB_ENCODINGS)}")
    if LAYOUTS[encoding][0] == np.uint16:
        pixels = pixels.astype(np.uint16) * 257
    return array_to_image(pixels, encoding)


def compressed_format(format_field: str) -> str:
    """``jpeg`` or ``png`` from a CompressedImage ``format`` ("jpeg", "png", "rgb8; jpeg compressed bgr8", ...)."""
    text = format_field.lower()
    if "compresseddepth" in text:
        raise ImageError("encoding", f"compressedDepth images ({format_field!r}) are not camera images")
    for name, aliases in (("jpeg", ("jpeg", "jpg")), ("png", ("png",))):
        if any(alias in text for alias in aliases):
            return name
    raise ImageError("encoding", f"unsupported compressed format {format_field!r}; supported: jpeg, png")


def compressed_to_rgb(format_field: str, data, max_pixels: int | None = None) -> np.ndarray:
    """A CompressedImage's jpeg or png bytes as uint8 RGB [H, W, 3]. The size is read from the header before
    decoding, so an oversized image is rejected without allocating it."""
    compressed_format(format_field)
    buffer = np.frombuffer(data, np.uint8)
    try:
        width, height = PILImage.open(io.BytesIO(buffer.tobytes())).size
    except Exception as error:  # PIL raises several types for undecodable headers
        raise ImageError("decode", f"cannot read the {format_field!r} header: {error}") from None
    _check_size(height, width, max_pixels)
    pixels = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    if pixels is None or pixels.shape[:2] != (height, width):
        raise ImageError("decode", f"cannot decode {buffer.size} bytes of {format_field!r} data")
    if pixels.dtype == np.uint16:
        pixels = (pixels >> 8).astype(np.uint8)
    if pixels.ndim == 2:
        return cv2.cvtColor(pixels, cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(pixels, cv2.COLOR_BGRA2RGB if pixels.shape[2] == 4 else cv2.COLOR_BGR2RGB)


def rgb_to_compressed(rgb: np.ndarray, fmt: str = "jpeg", quality: int = 95) -> bytes:
    """jpeg or png bytes of a uint8 RGB image (the ``format`` field to send is ``fmt``)."""
    if fmt not in COMPRESSED_FORMATS:
        raise ImageError("encoding", f"unsupported compressed format {fmt!r}; supported: {', '.join(COMPRESSED_FORMATS)}")
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if fmt == "jpeg" else []
    ok, encoded = cv2.imencode(f".{'jpg' if fmt == 'jpeg' else 'png'}", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ImageError("decode", f"OpenCV could not encode a {rgb.shape} image as {fmt}")
    return encoded.tobytes()
