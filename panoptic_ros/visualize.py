"""Overlays for people: class colours blended over the image, boxes and labels drawn on top."""

from __future__ import annotations

import cv2
import numpy as np

from .classes import ClassTable


def blend_class_map(image_rgb: np.ndarray, class_map: np.ndarray, table: ClassTable, alpha: float = 0.55) -> np.ndarray:
    """Blend class colours over an RGB image [H, W, 3] uint8; class_map [H, W] holds class ids, -1 = none."""
    if image_rgb.shape[:2] != class_map.shape:
        raise ValueError(f"image {image_rgb.shape[:2]} and class map {class_map.shape} differ in size")
    palette = np.array([c.color for c in table.classes], np.float32)
    out = image_rgb.astype(np.float32)
    shown = class_map >= 0
    out[shown] = (1 - alpha) * out[shown] + alpha * palette[class_map[shown]]
    return out.round().astype(np.uint8)


def draw_boxes(image_rgb: np.ndarray, boxes: np.ndarray, classes: np.ndarray, table: ClassTable, scores=None) -> np.ndarray:
    """Draw (x1, y1, x2, y2) boxes with class names (and scores) on a copy of the image."""
    out = np.ascontiguousarray(image_rgb.copy())
    for k, (box, class_id) in enumerate(zip(boxes, classes)):
        info = table[int(class_id)]
        x1, y1, x2, y2 = (int(round(float(v))) for v in box)
        cv2.rectangle(out, (x1, y1), (x2 - 1, y2 - 1), info.color, 1, cv2.LINE_AA)
        text = info.name if scores is None else f"{info.name} {float(scores[k]):.2f}"
        cv2.putText(out, text, (x1, max(y1 - 3, 8)), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def render_panoptic(image_rgb: np.ndarray, semantic: np.ndarray, panoptic: np.ndarray, table: ClassTable,
                    alpha: float = 0.5) -> np.ndarray:
    """Class colours blended over the image, with a white outline around every thing instance.

    semantic [H, W] class ids; panoptic [H, W] segment ids (thing ids >= 1000, -1 void).
    """
    out = blend_class_map(image_rgb, np.where(panoptic >= 0, semantic, -1).astype(np.int64), table, alpha)
    things = np.where(panoptic >= 1000, panoptic, 0).astype(np.int32)
    edge = np.zeros(things.shape, bool)
    edge[:, 1:] |= things[:, 1:] != things[:, :-1]
    edge[1:, :] |= things[1:, :] != things[:-1, :]
    edge &= cv2.dilate((things > 0).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    out[edge] = (255, 255, 255)
    return out
