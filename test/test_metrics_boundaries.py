"""Metrics at their boundaries, with values built by hand (issue #14: the first mutation run of metrics.py killed
609 of 710 mutants; these pin what survived): one-pixel classes, out-of-range labels and predictions, a custom
ignore index, empty metrics, segment id 1000 (class 1's first instance, not a crowd region), class ids equal to the
table's size, AP50 against AP55, a single prediction, and the exact error messages."""

import math

import numpy as np
import pytest
import torch

from panoptic_ros.classes import ClassInfo, ClassTable
from panoptic_ros.metrics import (InstanceAP, PanopticQuality, SemanticIoU, average_precision, panoptic_from_labels,
                                  segment_classes)
from panoptic_ros.postprocess import VOID_ID

# class 1 is a thing, so its first instance has id 1000
TABLE = ClassTable("toy", (ClassInfo(0, "road", False, (0, 0, 0)), ClassInfo(1, "car", True, (1, 1, 1)),
                           ClassInfo(2, "sky", False, (2, 2, 2))), ignore_id=255)


def test_semantic_iou_of_one_pixel_classes_and_out_of_range_values():
    metric = SemanticIoU(3, ignore_index=7)
    target = torch.tensor([[0, 1, 7, 3, -1, 2]])  # 7: ignored; 3 and -1: not classes, dropped
    prediction = torch.tensor([[0, 1, 0, 0, 0, -4]])  # -4 counts as class 0 (clipped), like 255 as class 2
    metric.update(prediction, target)
    metric.update(torch.tensor([[255]]), torch.tensor([[2]]))
    result = metric.compute()
    # confusion: (0,0) (1,1) (2,0) (2,2): road IoU 1/2, car 1/1 (a one-pixel class), sky 1/2
    assert metric.confusion.tolist() == [[1, 0, 0], [0, 1, 0], [1, 0, 1]]
    assert result["iou"] == pytest.approx([0.5, 1.0, 0.5])
    assert result["miou"] == pytest.approx(2 / 3)
    assert result["pixel_accuracy"] == pytest.approx(3 / 4)
    one = SemanticIoU(3)
    one.update(torch.tensor([[1]]), torch.tensor([[1]]))
    assert one.compute()["miou"] == 1.0 and one.compute()["pixel_accuracy"] == 1.0


def test_an_empty_semantic_metric_is_nan_not_an_error():
    result = SemanticIoU(3).compute()
    assert math.isnan(result["miou"]) and math.isnan(result["pixel_accuracy"])


def test_ground_truth_from_labels_drops_values_outside_the_table():
    semantic = np.array([[0, 1, 1, 3, -1, 255]])
    instances = np.array([[-1, 0, -1, 0, 0, 0]])
    assert panoptic_from_labels(semantic, instances, TABLE, 255).tolist() == [[0, 1000, 1, VOID_ID, VOID_ID, VOID_ID]]


def test_segment_classes_at_the_table_size_and_instance_offset():
    assert segment_classes(np.array([VOID_ID, 0, 2, 1000, 1999]), TABLE, "x").tolist() == [-1, 0, 2, 1, 1]
    with pytest.raises(ValueError, match=r"^target holds segment ids \[3, 3000, -2, 4, 5\] of no class in "
                                         r"table 'toy'$"):
        segment_classes(np.array([3, 3000, -2, 4, 5, 6, 1]), TABLE, "target")


def test_panoptic_quality_counts_instance_1000_as_an_instance_not_a_crowd_region():
    """Target: car instance 1000 (4 px) and a crowd region of cars (id 1, 2 px); prediction: instance 1000 on
    the instance. A TP with IoU 1; were 1000 a crowd id, the car class would have no segment to match."""
    target = np.array([[1000, 1000, 1000, 1000, 1, 1]])
    prediction = np.array([[1000, 1000, 1000, 1000, 0, 0]])
    metric = PanopticQuality(TABLE)
    metric.update(prediction, target)
    per_class = metric.compute()["per_class"]
    assert per_class["car"]["pq"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"^prediction holds segment ids \[3\] of no class in table 'toy'$"):
        metric.update(np.array([[3]]), np.array([[0]]))
    with pytest.raises(ValueError, match=r"^target holds segment ids \[4000\] of no class in table 'toy'$"):
        metric.update(np.array([[0]]), np.array([[4000]]))


def test_average_precision_of_a_single_prediction():
    assert average_precision(np.array([0.9]), np.array([True]), 1) == pytest.approx(1.0)
    assert average_precision(np.array([0.9]), np.array([True]), 2) == pytest.approx(0.5)
    assert average_precision(np.array([0.9]), np.array([False]), 1) == 0.0


def test_instance_ap50_differs_from_ap55_and_an_id_1000_prediction_is_an_instance():
    """A 10 x 20 car (id 1000, 200 px) and a prediction (id 1000) covering 104 of its pixels: IoU 0.52, a TP at
    0.50, a FP from 0.55 on: AP50 = 1, AP = 1/10 (one of the ten thresholds)."""
    target = np.zeros((10, 30), np.int64)
    target[:, :20] = 1000
    prediction = np.zeros_like(target)
    prediction[:, :10] = 1000
    prediction[:4, 10] = 1000
    metric = InstanceAP(TABLE, min_region_size=1)
    metric.update(prediction, {1000: 0.8}, target)
    result = metric.compute()
    assert result["ap50"] == pytest.approx(1.0) and result["ap"] == pytest.approx(0.1)
    assert result["per_class"]["car"] == pytest.approx({"ap": 0.1, "ap50": 1.0})
    with pytest.raises(ValueError, match=r"^predicted instances \[1000, 1001, 1002, 1003, 1004\] have no score$"):
        metric.update(np.arange(1000, 1006).reshape(1, 6), {}, np.zeros((1, 6), np.int64))


def test_instance_ap_without_predictions_is_zero_for_a_class_with_ground_truth():
    metric = InstanceAP(TABLE, min_region_size=1)
    metric.update(np.zeros((2, 2), np.int64), {}, np.full((2, 2), 1000))
    assert metric.compute()["ap"] == 0.0 and metric.compute()["ap50"] == 0.0
    assert math.isnan(InstanceAP(TABLE).compute()["ap"])
