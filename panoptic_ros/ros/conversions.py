"""numpy / Prediction <-> ROS 2 messages. The pixel work is in ``panoptic_ros.images``; this module only fills
message fields."""

from __future__ import annotations

import array

import numpy as np
from builtin_interfaces.msg import Duration
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from sensor_msgs.msg import CompressedImage, Image, RegionOfInterest
from std_msgs.msg import ColorRGBA, Header

from panoptic_ros.bags import COMPRESSED_IMAGE, IMAGE, typestore
from panoptic_ros.classes import ClassTable
from panoptic_ros.images import LAYOUTS, ImageError, bit_depth_of, compressed_to_rgb, image_to_array, image_to_rgb
from panoptic_ros.msg import ClassInfo, PanopticSegmentation, Segment
from panoptic_ros.postprocess import Segment as SegmentRecord
from panoptic_ros.runtime import Status


# input.transport -> (message class, topic suffix)
FRAME_TYPES = {"raw": (Image, "image"), "compressed": (CompressedImage, "image/compressed")}
_TYPE_NAMES = {"raw": IMAGE, "compressed": COMPRESSED_IMAGE}


def decode_frame(data: bytes, transport: str, max_pixels: int | None = None, bit_depth: int = 0,
                 seen_bit_depth: int = 0) -> tuple[tuple[int, int], str, np.ndarray, int]:
    """A serialised Image (``transport`` raw) or CompressedImage (compressed) as (stamp (sec, nanosec), frame_id,
    uint8 RGB [H, W, 3], bit depth). rosbags deserialises it with the pixels as a view of ``data``, so an
    ``rgb8`` frame is never copied. 16-bit frames use ``bit_depth``, or with 0 the largest of ``seen_bit_depth``
    and the frame's own (``images.bit_depth_of``), which is returned for the next frame. Raises ``ImageError``."""
    try:
        msg = typestore().deserialize_cdr(memoryview(data), _TYPE_NAMES[transport])  # bytes would be sliced: a copy
    except Exception as error:  # rosbags raises several types for a truncated or garbled buffer
        raise ImageError("cdr", f"cannot deserialise a {_TYPE_NAMES[transport]} of {len(data)} bytes: {error}") \
            from None
    stamp = (msg.header.stamp.sec, msg.header.stamp.nanosec)
    if transport == "compressed":
        return stamp, msg.header.frame_id, compressed_to_rgb(msg.format, msg.data, max_pixels), seen_bit_depth
    depth = bit_depth or 16
    if not bit_depth and LAYOUTS.get(msg.encoding, (None,))[0] == np.uint16 and msg.encoding != "16UC1":
        pixels = image_to_array(msg.encoding, msg.height, msg.width, msg.step, msg.data, bool(msg.is_bigendian),
                                max_pixels)
        depth = seen_bit_depth = max(seen_bit_depth, bit_depth_of(pixels))
    rgb = image_to_rgb(msg.encoding, msg.height, msg.width, msg.step, msg.data, bool(msg.is_bigendian), max_pixels,
                       depth)
    return stamp, msg.header.frame_id, rgb, seen_bit_depth


class ImageBuffer:
    """One output's Image message, reused frame after frame: :meth:`fill` copies the pixels into its ``data`` in
    place (memory already mapped, no new buffer), in the encoding's element type, little-endian, unpadded. Only
    the worker thread fills and publishes it, and rclpy copies a message when publishing, so reuse is safe."""

    def __init__(self, encoding: str):
        self.encoding = encoding
        self.msg = Image(encoding=encoding, is_bigendian=False)
        self.msg.data = array.array("B")

    def pixels(self, header: Header, height: int, width: int) -> np.ndarray:
        """The message's pixels as a writable [H, W] or [H, W, C] array of the encoding's element type, for a
        frame of ``height`` x ``width`` with ``header``; fill it, then publish :attr:`msg`."""
        dtype, channels = LAYOUTS[self.encoding]
        shape = (height, width) + ((channels,) if channels > 1 else ())
        nbytes = height * width * channels * np.dtype(dtype).itemsize
        if len(self.msg.data) != nbytes:
            self.msg.data = array.array("B", bytes(nbytes))
        msg = self.msg
        msg.header, msg.height, msg.width, msg.step = header, height, width, nbytes // max(height, 1)
        return np.frombuffer(msg.data, np.dtype(dtype).newbyteorder("<")).reshape(shape)

    def fill(self, pixels: np.ndarray, header: Header) -> Image:
        """:attr:`msg` holding a copy of ``pixels`` (the encoding's element type and channels); no copy when
        ``pixels`` is the buffer itself (written through :meth:`pixels`)."""
        view = self.pixels(header, *pixels.shape[:2])
        if pixels.shape != view.shape or pixels.dtype != view.dtype.newbyteorder("="):
            raise ImageError("size", f"{self.encoding} needs {view.dtype.name} {view.shape[2:] or ''} pixels, got "
                                     f"{pixels.dtype} {pixels.shape}")
        if not np.shares_memory(view, pixels):
            np.copyto(view, pixels)
        return self.msg


def class_infos(table: ClassTable) -> list[ClassInfo]:
    return [ClassInfo(id=c.id, name=c.name, is_thing=c.is_thing,
                      color=ColorRGBA(r=c.color[0] / 255, g=c.color[1] / 255, b=c.color[2] / 255, a=1.0))
            for c in table.classes]


def segment_msg(segment: SegmentRecord) -> Segment:
    x, y, w, h = segment.bbox
    return Segment(id=segment.id, class_id=segment.class_id, class_name=segment.class_name,
                   is_thing=segment.is_thing, score=float(segment.score), area=segment.area,
                   bbox=RegionOfInterest(x_offset=x, y_offset=y, width=w, height=h))


def panoptic_msg(panoptic_image: Image, segments: list[SegmentRecord], classes: list[ClassInfo], *, model: str,
                 mode: str, latency_ns: int) -> PanopticSegmentation:
    """The PanopticSegmentation of one frame; ``panoptic_image`` is the 16UC1 segment image (index + 1 into
    ``segments``) with the input's header."""
    return PanopticSegmentation(
        header=panoptic_image.header, panoptic=panoptic_image, segments=[segment_msg(s) for s in segments],
        classes=classes, model=model, mode=mode,
        latency=Duration(sec=latency_ns // 1_000_000_000, nanosec=latency_ns % 1_000_000_000))


def diagnostic_array(statuses: list[Status], stamp, hardware_id: str) -> DiagnosticArray:
    return DiagnosticArray(header=Header(stamp=stamp), status=[
        DiagnosticStatus(level=bytes([s.level]), name=s.name, message=s.message, hardware_id=hardware_id,
                         values=[KeyValue(key=k, value=v) for k, v in s.values.items()]) for s in statuses])
