"""Evaluation metrics as accumulators with reset / update / compute: semantic IoU and panoptic quality."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .postprocess import INSTANCE_OFFSET, VOID_ID


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


def panoptic_from_labels(semantic: np.ndarray, instances: np.ndarray, table, ignore_id: int) -> np.ndarray:
    """Ground-truth panoptic ids (message convention) from a semantic map and an instance map (-1 = none).

    Things: ``class * 1000 + instance index``; stuff: ``class``; thing pixels without an instance become a crowd
    region of their class (id ``class``, as Cityscapes marks groups); ``ignore_id`` and unknown classes are void.
    """
    semantic = semantic.astype(np.int64)
    panoptic = np.full(semantic.shape, VOID_ID, np.int64)
    known = (semantic >= 0) & (semantic < len(table)) & (semantic != ignore_id)
    panoptic[known] = semantic[known]
    has = known & (instances >= 0)
    panoptic[has] = semantic[has] * INSTANCE_OFFSET + instances[has]
    return panoptic


class PanopticQuality:
    """PQ, SQ, RQ (Kirillov et al., CVPR 2019) over panoptic id maps in the message convention, with the matching,
    void and crowd rules of panopticapi / cityscapesscripts' ``pq_compute_single_core``:

    * a segment's class is ``id // 1000`` for ids >= 1000, else ``id``; ``VOID_ID`` pixels are void;
    * a ground-truth segment of a thing class with an id < 1000 is a crowd region;
    * a (gt, prediction) pair of one class matches when IoU > 0.5, the union leaving out the prediction's void pixels;
    * unmatched non-crowd ground truth counts FN; an unmatched prediction counts FP unless more than half of it lies
      on void or on the crowd region of its class.
    """

    def __init__(self, table):
        self.table = table
        self.is_thing = np.array([c.is_thing for c in table.classes])
        self.reset()

    def reset(self) -> None:
        n = len(self.table)
        self.iou = np.zeros(n)
        self.tp = np.zeros(n, np.int64)
        self.fp = np.zeros(n, np.int64)
        self.fn = np.zeros(n, np.int64)

    def _class_of(self, ids: np.ndarray, what: str) -> np.ndarray:
        classes = np.where(ids >= INSTANCE_OFFSET, ids // INSTANCE_OFFSET, ids)
        bad = (classes < 0) | (classes >= len(self.table))
        if bad.any():
            raise ValueError(f"{what} holds segment ids {ids[bad][:5].tolist()} of no class in table {self.table.name!r}")
        return classes

    def update(self, prediction, target) -> None:
        """prediction, target: [H, W] integer panoptic id maps of one image."""
        pred = np.asarray(prediction, np.int64).ravel()
        gt = np.asarray(target, np.int64).ravel()
        if pred.shape != gt.shape:
            raise ValueError(f"prediction and target differ in size: {np.shape(prediction)} vs {np.shape(target)}")
        p_ids, p_area = np.unique(pred[pred != VOID_ID], return_counts=True)
        g_ids, g_area = np.unique(gt[gt != VOID_ID], return_counts=True)
        p_cls, g_cls = self._class_of(p_ids, "prediction"), self._class_of(g_ids, "target")
        g_crowd = self.is_thing[g_cls] & (g_ids < INSTANCE_OFFSET)
        # Intersections of every (gt, pred) pair present, void (-1) included on both sides.
        span = int(max(p_ids.max(initial=0), g_ids.max(initial=0))) + 2
        pairs, inter = np.unique((gt + 1) * span + (pred + 1), return_counts=True)
        pair_g, pair_p = pairs // span - 1, pairs % span - 1
        p_index = {int(i): k for k, i in enumerate(p_ids)}
        g_index = {int(i): k for k, i in enumerate(g_ids)}
        p_void = np.zeros(len(p_ids), np.int64)
        p_crowd = np.zeros(len(p_ids), np.int64)
        g_matched = np.zeros(len(g_ids), bool)
        p_matched = np.zeros(len(p_ids), bool)
        for g, p, n in zip(pair_g.tolist(), pair_p.tolist(), inter.tolist()):
            if p == VOID_ID:
                continue
            pk = p_index[p]
            if g == VOID_ID:
                p_void[pk] += n
                continue
            gk = g_index[g]
            if g_cls[gk] != p_cls[pk]:
                continue
            if g_crowd[gk]:
                p_crowd[pk] += n
        for g, p, n in zip(pair_g.tolist(), pair_p.tolist(), inter.tolist()):
            if g == VOID_ID or p == VOID_ID:
                continue
            gk, pk = g_index[g], p_index[p]
            if g_crowd[gk] or g_cls[gk] != p_cls[pk]:
                continue
            iou = n / (p_area[pk] + g_area[gk] - n - p_void[pk])
            if iou > 0.5:
                self.tp[g_cls[gk]] += 1
                self.iou[g_cls[gk]] += iou
                g_matched[gk] = p_matched[pk] = True
        np.add.at(self.fn, g_cls[~g_matched & ~g_crowd], 1)
        unmatched = ~p_matched & ((p_void + p_crowd) / np.maximum(p_area, 1) <= 0.5)
        np.add.at(self.fp, p_cls[unmatched], 1)

    def compute(self) -> dict:
        """``all`` / ``things`` / ``stuff``: mean pq, sq, rq over classes with TP + FP + FN > 0 (and their count
        ``n``); ``per_class``: pq, sq, rq by class name (0 for classes that never occur)."""
        denom = self.tp + 0.5 * self.fp + 0.5 * self.fn
        seen = denom > 0
        pq = np.where(seen, self.iou / np.maximum(denom, 1e-12), 0.0)
        sq = np.where(self.tp > 0, self.iou / np.maximum(self.tp, 1), 0.0)
        rq = np.where(seen, self.tp / np.maximum(denom, 1e-12), 0.0)
        out = {}
        for name, keep in (("all", seen), ("things", seen & self.is_thing), ("stuff", seen & ~self.is_thing)):
            n = int(keep.sum())
            out[name] = {"pq": float(pq[keep].mean()) if n else 0.0, "sq": float(sq[keep].mean()) if n else 0.0,
                         "rq": float(rq[keep].mean()) if n else 0.0, "n": n}
        out["per_class"] = {c.name: {"pq": float(pq[c.id]), "sq": float(sq[c.id]), "rq": float(rq[c.id])}
                            for c in self.table.classes}
        return out
