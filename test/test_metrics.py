"""Semantic IoU on hand-counted cases."""

import math

import pytest
import torch

from panoptic_ros.metrics import SemanticIoU


def test_iou_from_hand_counted_pixels():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    prediction = torch.tensor([[0, 1, 1, 1], [2, 0, 0, 2]])
    metric = SemanticIoU(num_classes=4, ignore_index=255)
    metric.update(prediction, target)
    result = metric.compute()
    # class 0: TP 1, FP 1 (pixel (1,1)), FN 1 -> 1/3; class 1: TP 2, FP 1, FN 1 -> 2/4; class 2: TP 1, FP 1, FN 1
    assert result["iou"][:3] == pytest.approx([1 / 3, 1 / 2, 1 / 3])
    assert math.isnan(result["iou"][3])  # absent everywhere: not counted in the mean
    assert result["miou"] == pytest.approx((1 / 3 + 1 / 2 + 1 / 3) / 3)
    assert result["pixel_accuracy"] == pytest.approx(4 / 7)


def test_accumulates_and_resets():
    metric = SemanticIoU(num_classes=2)
    metric.update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    metric.update(torch.tensor([1, 1]), torch.tensor([0, 1]))
    assert metric.compute()["iou"] == pytest.approx([1 / 2, 2 / 3])
    metric.reset()
    assert metric.confusion.sum() == 0
    with pytest.raises(ValueError, match="differ in shape"):
        metric.update(torch.zeros(2), torch.zeros(3))


def test_segment_overlaps_count_every_pair_with_void():
    import numpy as np

    from panoptic_ros.metrics import segment_overlaps

    rng = np.random.default_rng(3)
    gt = rng.choice([-1, 0, 3, 8000, 8001, 9000], size=(37, 53))
    pred = rng.choice([-1, 3, 5, 8000, 10002], size=(37, 53))
    g_ids, p_ids, g, p, inter = segment_overlaps(pred, gt)
    pairs, counts = np.unique(np.stack([gt.ravel(), pred.ravel()], 1), axis=0, return_counts=True)
    np.testing.assert_array_equal(np.stack([g_ids[g], p_ids[p]], 1), pairs)
    np.testing.assert_array_equal(inter, counts)
    assert g_ids.tolist() == [-1, 0, 3, 8000, 8001, 9000] and p_ids.tolist() == [-1, 3, 5, 8000, 10002]
    with pytest.raises(ValueError, match="below VOID_ID"):
        segment_overlaps(np.full((2, 2), -3), np.zeros((2, 2), int))
