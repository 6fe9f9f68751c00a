"""Instances from label maps, and instance masks in Mask R-CNN form (a fixed-size grid per box)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torchvision.ops import roi_align


@dataclass
class Detections:
    """N instances as a detector reports them. Shapes: masks [N, S, S] in [0, 1], boxes [N, 4] (x1, y1, x2, y2)
    in image pixels (pixel (i, j) covers [j, j+1) x [i, i+1)), classes [N] int64, scores [N]."""

    masks: torch.Tensor
    boxes: torch.Tensor
    classes: torch.Tensor
    scores: torch.Tensor

    def __len__(self) -> int:
        return int(self.classes.numel())


def instances_from_semantic(label: np.ndarray, thing_ids, min_area: int = 1) -> tuple[np.ndarray, list[int]]:
    """Split each thing class of a semantic label map [H, W] into connected components (8-connectivity).

    CamVid has no instance labels; like the IMP paper's clothing data ("each segment (connected component) is
    treated as an instance") its instances are the connected components of each thing class.

    Returns:
        instance map [H, W] int32 (0 = no instance, k = k-th instance) and the class of instance k at index k - 1.
        Components smaller than ``min_area`` pixels are dropped.
    """
    if label.ndim != 2:
        raise ValueError(f"label map must be [H, W], got shape {label.shape}")
    instance_map = np.zeros(label.shape, np.int32)
    classes: list[int] = []
    for class_id in thing_ids:
        count, components, stats, _ = cv2.connectedComponentsWithStats((label == class_id).astype(np.uint8), connectivity=8)
        for k in range(1, count):
            if stats[k, cv2.CC_STAT_AREA] >= min_area:
                classes.append(int(class_id))
                instance_map[components == k] = len(classes)
    return instance_map, classes


def detections_from_instances(instance_map: np.ndarray, classes: list[int], mask_size: int = 28) -> Detections:
    """Tight boxes and ``mask_size``-square masks of each instance, as Mask R-CNN's mask head would predict them
    (torchvision builds its mask targets with the same ``roi_align`` of the binary mask). Scores are 1."""
    n = len(classes)
    boxes = torch.zeros((n, 4))
    binary = torch.zeros((n, 1, *instance_map.shape))
    for k in range(n):
        ys, xs = np.nonzero(instance_map == k + 1)
        boxes[k] = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
        binary[k, 0] = torch.from_numpy(instance_map == k + 1)
    if n:
        rois = torch.cat([torch.arange(n, dtype=torch.float32)[:, None], boxes], 1)
        masks = roi_align(binary, rois, (mask_size, mask_size), spatial_scale=1.0, sampling_ratio=2, aligned=True)[:, 0]
    else:
        masks = torch.zeros((0, mask_size, mask_size))
    return Detections(masks=masks, boxes=boxes, classes=torch.tensor(classes, dtype=torch.int64), scores=torch.ones(n))
