"""Evaluation metrics as accumulators with reset / update / compute: semantic IoU, panoptic quality and instance AP."""

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
        n = self.num_classes
        t = target.detach().cpu().numpy().ravel().astype(np.int64, copy=False)
        p = prediction.detach().cpu().numpy().ravel()
        keep = (t >= 0) & (t < n) & (t != self.ignore_index)
        pairs = t[keep] * n + np.clip(p[keep], 0, n - 1)  # numpy: 2-3x faster than torch here on the CPU
        self.confusion += torch.from_numpy(np.bincount(pairs, minlength=n * n).reshape(n, n))

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


def segment_classes(ids: np.ndarray, table, what: str) -> np.ndarray:
    """Class of each panoptic segment id (``id // 1000`` for ids >= 1000, ``id`` below, -1 for ``VOID_ID``);
    ``what`` names the map in the error raised for ids of no class in ``table``."""
    classes = np.where(ids >= INSTANCE_OFFSET, ids // INSTANCE_OFFSET, ids)
    bad = ((classes < 0) & (ids != VOID_ID)) | (classes >= len(table))
    if bad.any():
        raise ValueError(f"{what} holds segment ids {ids[bad][:5].tolist()} of no class in table {table.name!r}")
    return classes


def segment_overlaps(prediction, target):
    """Pixels shared by every (target segment, predicted segment) pair present, void (-1) included on both sides.

    prediction, target: [H, W] panoptic id maps of one shape. Returns ``g_ids``, ``p_ids`` (the ids present,
    sorted) and, per pair in (target, prediction) order, ``g``, ``p`` (indices into them) and ``inter`` (pixels):
    one sort of the pixel pairs; segment areas are sums of ``inter``.
    """
    pred = np.asarray(prediction, np.int64).ravel()
    gt = np.asarray(target, np.int64).ravel()
    if pred.shape != gt.shape:
        raise ValueError(f"prediction and target differ in size: {np.shape(prediction)} vs {np.shape(target)}")
    lowest = min(pred.min(initial=0), gt.min(initial=0))
    if lowest < VOID_ID:
        raise ValueError(f"segment id {lowest} is below VOID_ID ({VOID_ID})")
    span = int(max(pred.max(initial=0), gt.max(initial=0))) + 2
    pairs, inter = np.unique((gt + 1) * span + (pred + 1), return_counts=True)
    g_ids, g = np.unique(pairs // span - 1, return_inverse=True)
    p_ids, p = np.unique(pairs % span - 1, return_inverse=True)
    return g_ids, p_ids, g, p, inter


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

    def update(self, prediction, target) -> None:
        """prediction, target: [H, W] integer panoptic id maps of one image."""
        g_all, p_all, g, p, inter = segment_overlaps(prediction, target)
        pair_g, pair_p = g_all[g], p_all[p]
        p_real, g_real = p_all != VOID_ID, g_all != VOID_ID
        p_ids, p_area = p_all[p_real], np.bincount(p, inter).astype(np.int64)[p_real]
        g_ids, g_area = g_all[g_real], np.bincount(g, inter).astype(np.int64)[g_real]
        p_cls, g_cls = segment_classes(p_ids, self.table, "prediction"), segment_classes(g_ids, self.table, "target")
        g_crowd = self.is_thing[g_cls] & (g_ids < INSTANCE_OFFSET)
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


AP_OVERLAPS = np.arange(0.5, 1.0, 0.05)  # evalInstanceLevelSemanticLabeling's args.overlaps: 0.5, 0.55, ..., 0.95


def average_precision(scores: np.ndarray, true: np.ndarray, num_gt: int) -> float:
    """AP of one class at one overlap threshold, as cityscapesscripts' ``evaluateMatches`` integrates it.

    Args:
        scores: [N] confidences of the matched predictions (``true``) and the false positives (not ``true``).
        true: [N] bool.
        num_gt: ground-truth instances, matched or not (>= 1).
    At each distinct score s (ascending) precision and recall count the examples scoring >= s; an artificial point
    (recall 0, precision 1) ends the curve, and each precision is weighted by half the recall gap between its two
    neighbours (the official ``np.convolve(recall, [-0.5, 0, 0.5])``). Ties in score are one threshold, so their
    order does not matter. With no example at all the official script raises ``IndexError``; here AP is 0.
    """
    if len(scores) == 0:
        return 0.0
    order = np.argsort(scores)
    first = np.unique(scores[order], return_index=True)[1]
    below = np.concatenate([[0], np.cumsum(true[order])])[first]  # true examples scoring below each threshold
    tp = true.sum() - below
    precision = np.append(tp / (len(scores) - first), 1.0)
    recall = np.append(tp / num_gt, 0.0)
    widths = 0.5 * (np.concatenate([recall[:1], recall[:-1]]) - np.concatenate([recall[1:], [0.0]]))
    return float(precision @ widths)


class InstanceAP:
    """Cityscapes instance-level AP and AP50 over panoptic id maps in the message convention, with the semantics of
    cityscapesscripts' ``evalInstanceLevelSemanticLabeling.py`` (``assignGt2Preds``, ``evaluateMatches``,
    ``computeAverages``; no distance-based variants):

    * evaluated classes are the table's thing classes (for ``CITYSCAPES`` the official eight: person ... bicycle);
      on CamVid, whose labels have no instances, they are car, pedestrian and bicyclist, and the ground-truth
      instances are whatever the target map holds (connected components in ``camvid_targets``);
    * ground-truth instances: ids >= 1000 of a thing class; a thing-class id < 1000 is a crowd (Cityscapes "group")
      region; ``VOID_ID`` is void (Cityscapes' ignoreInEval labels). Instances under ``min_region_size`` pixels are
      not evaluated;
    * predicted instances: ids >= 1000 of a thing class, with confidence ``scores[id]``; other predicted segments
      (stuff, thing pixels without an instance) are not instances and are ignored;
    * for each overlap t in 0.5:0.95:0.05 a prediction matches a same-class instance when IoU = inter / (gt + pred -
      inter) > t (void pixels count in the prediction's area); any other prediction is a false positive unless the
      void, crowd and small-instance pixels of its class that it covers make up more than t of it. As in the
      official code, a crowd region smaller than ``min_region_size`` counts twice in that sum. (The official code
      also skips a prediction with IoU > t with a crowd or small segment; that rule is implied by the previous one.)
    * AP per class: ``average_precision`` per threshold, then the mean over thresholds; NaN for a class with no
      ground-truth instance anywhere (its false positives then cost nothing), 0 for a class with ground truth but no
      prediction. ``ap`` / ``ap50`` average the classes that are not NaN (NaN when none is).

    Predictions are disjoint in an id map, and IoU > 0.5 makes every match one-to-one, so the official duplicate
    handling (a second match becomes a false positive) never applies.
    """

    def __init__(self, table, min_region_size: int = 100):
        self.table = table
        self.min_region_size = min_region_size
        self.is_thing_or_void = np.array([c.is_thing for c in table.classes] + [False])  # class -1 (void): False
        self.reset()

    def reset(self) -> None:
        self.num_gt = np.zeros(len(self.table), np.int64)
        # per update, one row per predicted instance: class, score, best IoU with an evaluated instance, ignored share
        self._predictions: list[np.ndarray] = []

    def update(self, prediction: np.ndarray, scores: dict[int, float], target: np.ndarray) -> None:
        """prediction, target: [H, W] integer panoptic id maps of one image; scores: confidence of each predicted
        instance id (every id >= 1000 of a thing class in ``prediction``; a missing one raises ``ValueError``, since
        a made-up confidence would change the ranking AP measures). Other keys are ignored."""
        g_ids, p_ids, g, p, inter = segment_overlaps(prediction, target)
        g_area, p_area = np.bincount(g, inter).astype(np.int64), np.bincount(p, inter).astype(np.int64)
        g_cls, p_cls = segment_classes(g_ids, self.table, "target"), segment_classes(p_ids, self.table, "prediction")
        g_thing = self.is_thing_or_void[g_cls]
        crowd, small = g_thing & (g_ids < INSTANCE_OFFSET), g_thing & (g_area < self.min_region_size)
        g_evaluated = g_thing & ~crowd & ~small
        # pixels on void, a crowd region or a small instance are ignored; a small crowd region's twice (official quirk)
        g_weight = (g_ids == VOID_ID).astype(np.int64) + crowd + small
        p_instance = (p_ids >= INSTANCE_OFFSET) & self.is_thing_or_void[p_cls]
        missing = [int(i) for i in p_ids[p_instance] if int(i) not in scores]
        if missing:
            raise ValueError(f"predicted instances {missing[:5]} have no score")
        np.add.at(self.num_gt, g_cls[g_evaluated], 1)

        keep = p_instance[p] & ((g_cls[g] == p_cls[p]) | (g_ids[g] == VOID_ID))
        g, p, inter = g[keep], p[keep], inter[keep]
        best_iou, ignored = np.zeros((2, len(p_ids)))
        m = g_evaluated[g]
        np.maximum.at(best_iou, p[m], inter[m] / (g_area[g[m]] + p_area[p[m]] - inter[m]))
        np.add.at(ignored, p, inter * g_weight[g])
        k = np.flatnonzero(p_instance)
        self._predictions.append(np.stack([p_cls[k], [float(scores[int(i)]) for i in p_ids[k]], best_iou[k],
                                           ignored[k] / p_area[k]], axis=1))

    def compute(self) -> dict:
        """``ap`` (mean over thresholds 0.5:0.95), ``ap50`` (threshold 0.5), both averaged over classes that are not
        NaN, and ``per_class``: ``{class name: {"ap", "ap50"}}`` for each thing class (cityscapesscripts'
        ``computeAverages``)."""
        rows = np.concatenate(self._predictions) if self._predictions else np.zeros((0, 4))
        things = self.table.thing_ids
        ap = np.full((len(things), len(AP_OVERLAPS)), np.nan)
        for row, c in enumerate(things):
            if self.num_gt[c] == 0:
                continue
            _, score, iou, ignored = rows[rows[:, 0] == c].T
            for k, t in enumerate(AP_OVERLAPS):
                tp = iou > t
                fp = ~tp & (ignored <= t)
                ap[row, k] = average_precision(np.concatenate([score[tp], score[fp]]),
                                               np.concatenate([np.ones(tp.sum(), bool), np.zeros(fp.sum(), bool)]),
                                               int(self.num_gt[c]))
        seen = ~np.isnan(ap[:, 0])
        return {
            "ap": float(ap[seen].mean()) if seen.any() else float("nan"),
            "ap50": float(ap[seen, 0].mean()) if seen.any() else float("nan"),
            "per_class": {self.table[c].name: {"ap": float(ap[row].mean()), "ap50": float(ap[row, 0])}
                          for row, c in enumerate(things)},
        }
