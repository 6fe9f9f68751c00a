"""Instances from label maps and their Mask R-CNN-style masks."""

import numpy as np
import pytest
import torch

from panoptic_ros.instances import detections_from_instances, instances_from_semantic


def test_each_connected_component_of_a_thing_class_is_one_instance():
    label = np.zeros((6, 8), np.uint8)
    label[0:2, 0:2] = 8  # car A
    label[4:6, 5:8] = 8  # car B
    label[3, 3] = 9  # a pedestrian of one pixel
    label[2, 2] = 8  # touches car A diagonally: same component (8-connectivity)
    instance_map, classes = instances_from_semantic(label, thing_ids=(8, 9))
    assert classes == [8, 8, 9]
    assert set(np.unique(instance_map[label == 8])) == {1, 2}
    assert instance_map[2, 2] == instance_map[0, 0]
    assert instance_map[3, 3] == 3 and (instance_map[label == 0] == 0).all()


def test_small_components_are_dropped():
    label = np.zeros((6, 8), np.uint8)
    label[0:3, 0:3] = 8
    label[5, 7] = 8
    _, classes = instances_from_semantic(label, thing_ids=(8,), min_area=4)
    assert classes == [8]


def test_detections_have_tight_boxes_and_full_masks_for_rectangles():
    instance_map = np.zeros((40, 40), np.int32)
    instance_map[5:33, 6:34] = 1  # 28 x 28 pixels: one pixel per mask cell
    det = detections_from_instances(instance_map, [8], mask_size=28)
    assert det.boxes.tolist() == [[6.0, 5.0, 34.0, 33.0]]
    mask = det.masks[0]
    assert mask.shape == (28, 28)
    # Bilinear samples (2 x 2 per cell) in the edge cells reach a quarter pixel outside the object, where the mask
    # is 0; inside, the mask is exactly 1, and it is symmetric (aligned=True: pixel (i, j) covers [j, j+1) x
    # [i, i+1), the convention of the boxes and of IMP).
    assert torch.equal(mask[1:-1, 1:-1], torch.ones(26, 26))
    assert mask[0, 5].item() == pytest.approx(0.875) and mask[0, 0].item() == pytest.approx(0.875**2)
    assert torch.allclose(mask, mask.flip(0)) and torch.allclose(mask, mask.flip(1))
    assert det.classes.tolist() == [8] and det.scores.tolist() == [1.0]


def test_no_instances_give_empty_detections():
    det = detections_from_instances(np.zeros((4, 4), np.int32), [])
    assert len(det) == 0 and det.masks.shape == (0, 28, 28) and det.boxes.shape == (0, 4)


def test_label_map_must_be_two_dimensional():
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        instances_from_semantic(np.zeros((2, 2, 3), np.uint8), thing_ids=(8,))
