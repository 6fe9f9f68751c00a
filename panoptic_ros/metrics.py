"""Evaluation metrics as accumulators with reset / update / compute (semantic IoU so far)."""

from __future__ import annotations

import torch
from torch import Tensor


class SemanticIoU:
    """Per-class IoU and mIoU from a confusion matrix accumulated over images.

    IoU_c = TP_c / (TP_c + FP_c + FN_c); pixels whose ground truth is ``ignore_index`` (or outside
    [0, num_classes)) are skipped; mIoU averages the classes that occur in the ground truth or the prediction.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        self.confusion = torch.zeros((self.num_classes, self.num_classes), dtype=torch.int64)

    def update(self, prediction: Tensor, target: Tensor) -> None:
        """prediction, target: integer class maps of one shape ([H, W] or [B, H, W])."""
        if prediction.shape != target.shape:
            raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape")
        t, p = target.flatten().long().cpu(), prediction.flatten().long().cpu()
        keep = (t != self.ignore_index) & (t >= 0) & (t < self.num_classes)
        p = p[keep].clamp(0, self.num_classes - 1)
        self.confusion += torch.bincount(t[keep] * self.num_classes + p, minlength=self.num_classes**2).view(
            self.num_classes, self.num_classes
        )

    def compute(self) -> dict:
        c = self.confusion.double()
        tp = c.diag()
        union = c.sum(0) + c.sum(1) - tp
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
        present = union > 0
        return {
            "iou": iou.tolist(),
            "miou": float(iou[present].mean()) if present.any() else float("nan"),
            "pixel_accuracy": float(tp.sum() / c.sum()) if c.sum() > 0 else float("nan"),
        }
