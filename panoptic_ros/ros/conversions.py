"""numpy / Prediction <-> ROS 2 messages. The pixel work is in ``panoptic_ros.images``; this module only fills
message fields."""

from __future__ import annotations

import array

import numpy as np
from builtin_interfaces.msg import Duration
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from sensor_msgs.msg import CompressedImage, Image, RegionOfInterest
from std_msgs.msg import ColorRGBA, Header

from panoptic_ros.classes import ClassTable
from panoptic_ros.images import compressed_to_rgb, image_buffer, image_to_rgb
from panoptic_ros.msg import ClassInfo, PanopticSegmentation, Segment
from panoptic_ros.postprocess import Segment as SegmentRecord
from panoptic_ros.runtime import Status


def rgb_from_msg(msg: Image | CompressedImage, max_pixels: int | None = None) -> np.ndarray:
    """uint8 RGB [H, W, 3] from an Image (any supported encoding, any ``step``) or a CompressedImage; raises
    ``images.ImageError``."""
    if isinstance(msg, CompressedImage):
        return compressed_to_rgb(msg.format, msg.data, max_pixels)
    return image_to_rgb(msg.encoding, msg.height, msg.width, msg.step, msg.data, bool(msg.is_bigendian), max_pixels)


def image_msg(pixels: np.ndarray, encoding: str, header: Header) -> Image:
    """An Image holding ``pixels`` (element type and channels of ``encoding``), little-endian, unpadded."""
    height, width, step, buffer = image_buffer(pixels, encoding)
    msg = Image(header=header, height=height, width=width, encoding=encoding, is_bigendian=False, step=step)
    msg.data = array.array("B")  # an array.array skips rosidl's per-element check of a sequence
    msg.data.frombytes(buffer)  # one copy
    return msg


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
    """The PanopticSegmentation of one frame; ``panoptic_image`` is the 32SC1 id image with the input's header."""
    return PanopticSegmentation(
        header=panoptic_image.header, panoptic=panoptic_image, segments=[segment_msg(s) for s in segments],
        classes=classes, model=model, mode=mode,
        latency=Duration(sec=latency_ns // 1_000_000_000, nanosec=latency_ns % 1_000_000_000))


def diagnostic_array(statuses: list[Status], stamp, hardware_id: str) -> DiagnosticArray:
    return DiagnosticArray(header=Header(stamp=stamp), status=[
        DiagnosticStatus(level=bytes([s.level]), name=s.name, message=s.message, hardware_id=hardware_id,
                         values=[KeyValue(key=k, value=v) for k, v in s.values.items()]) for s in statuses])
