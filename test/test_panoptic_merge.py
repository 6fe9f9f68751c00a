"""Panoptic merges of the accuracy mode on hand-built cases, pixel for pixel."""

import numpy as np
import pytest
import torch

from panoptic_ros.classes import ClassInfo, ClassTable
from panoptic_ros.panoptic_merge import fuse_panoptic, merge_panoptic_fpn
from panoptic_ros.postprocess import INSTANCE_OFFSET, VOID_ID, ids_from_segment_map

ROAD, SKY, CAR, TRUCK, PERSON, IGNORE = 0, 1, 2, 3, 4, 5
TABLE = ClassTable("toy", (ClassInfo(ROAD, "road", False, (1, 1, 1)), ClassInfo(SKY, "sky", False, (2, 2, 2)),
                           ClassInfo(CAR, "car", True, (3, 3, 3)), ClassInfo(TRUCK, "truck", True, (4, 4, 4)),
                           ClassInfo(PERSON, "person", True, (5, 5, 5))), ignore_id=IGNORE)
V = VOID_ID


def car(k):
    return CAR * INSTANCE_OFFSET + k


def masks(shape, *rects):
    """[N, H, W] bool masks, one per rect (y0, y1, x0, x1), half-open."""
    out = torch.zeros((len(rects), *shape), dtype=torch.bool)
    for i, (y0, y1, x0, x1) in enumerate(rects):
        out[i, y0:y1, x0:x1] = True
    return out


def check_representation(merged):
    """The fast mode's conventions hold: the segment map reads back as the panoptic ids, segments sorted by id."""
    ids = [s.id for s in merged.panoptic.segments]
    assert ids == sorted(ids)
    np.testing.assert_array_equal(
        ids_from_segment_map(merged.panoptic.segment_map.numpy(), ids), merged.panoptic.panoptic.numpy())
    assert merged.panoptic.segment_map.dtype == torch.int16


# Panoptic FPN merge -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("overlap, kept", [(2, True), (3, False)])
def test_fpn_merge_drops_an_instance_only_above_the_overlap_threshold(overlap, kept):
    # A: 1 x 4 at columns 0-3 (score 0.9). B: 1 x 4 starting at column 4 - overlap: overlap 2/4 = 0.5 is at the
    # threshold (kept, with its 2 free pixels), 3/4 is above it (dropped).
    semantic = torch.full((1, 8), ROAD)
    m = masks((1, 8), (0, 1, 0, 4), (0, 1, 4 - overlap, 8 - overlap))
    merged = merge_panoptic_fpn(semantic, m, torch.tensor([0.9, 0.8]), torch.tensor([CAR, CAR]), TABLE,
                                overlap_threshold=0.5, stuff_min_area=0)
    if kept:
        expected = [car(0)] * 4 + [car(1)] * 2 + [ROAD] * 2
    else:
        expected = [car(0)] * 4 + [ROAD] * 4
    assert merged.panoptic.panoptic[0].tolist() == expected
    assert len(merged.classes) == (2 if kept else 1)
    check_representation(merged)


def test_fpn_merge_places_instances_by_score_not_by_index():
    semantic = torch.full((2, 6), ROAD)
    m = masks((2, 6), (0, 2, 0, 4), (0, 2, 2, 6), (0, 2, 0, 6))  # the third scores below the threshold
    scores = torch.tensor([0.6, 0.9, 0.4])
    merged = merge_panoptic_fpn(semantic, m, scores, torch.tensor([CAR, PERSON, CAR]), TABLE,
                                score_threshold=0.5, overlap_threshold=0.5, stuff_min_area=0)
    # The person (0.9) takes columns 2-5; the car (0.6) overlaps it by 2/4 and keeps columns 0-1.
    assert merged.panoptic.panoptic.tolist() == [[car(0)] * 2 + [PERSON * INSTANCE_OFFSET] * 4] * 2
    assert merged.instances.tolist() == [[1, 1, 0, 0, 0, 0]] * 2  # placement order: person first
    assert merged.classes.tolist() == [PERSON, CAR]
    assert merged.scores.tolist() == pytest.approx([0.9, 0.6])
    assert [s.score for s in merged.panoptic.segments] == pytest.approx([0.6, 0.9])  # sorted by id: car, person
    check_representation(merged)


@pytest.mark.parametrize("min_area, sky_kept", [(4, True), (5, False)])
def test_fpn_merge_keeps_stuff_from_its_minimum_area(min_area, sky_kept):
    # Sky has 6 pixels, 2 of them under a car instance: 4 remain.
    semantic = torch.tensor([[SKY, SKY, SKY, ROAD, ROAD],
                             [SKY, SKY, SKY, ROAD, ROAD],
                             [CAR, ROAD, ROAD, IGNORE, ROAD]])
    m = masks((3, 5), (0, 2, 2, 3))
    merged = merge_panoptic_fpn(semantic, m, torch.tensor([0.9]), torch.tensor([CAR]), TABLE,
                                stuff_min_area=min_area)
    s = SKY if sky_kept else V
    assert merged.panoptic.panoptic.tolist() == [[s, s, car(0), ROAD, ROAD],
                                                 [s, s, car(0), ROAD, ROAD],
                                                 [V, ROAD, ROAD, V, ROAD]]  # thing without instance, ignore: void
    assert torch.equal(merged.semantic, semantic)
    check_representation(merged)


def test_fpn_merge_thresholds_probability_masks_and_skips_empty_ones():
    semantic = torch.full((1, 4), ROAD)
    probs = torch.tensor([[[0.2, 0.6, 0.5, 0.9]], [[0.1, 0.1, 0.1, 0.1]]])
    merged = merge_panoptic_fpn(semantic, probs, torch.tensor([0.9, 0.95]), torch.tensor([CAR, CAR]), TABLE,
                                stuff_min_area=0, mask_threshold=0.5)
    assert merged.panoptic.panoptic[0].tolist() == [ROAD, car(0), ROAD, car(0)]
    assert merged.classes.tolist() == [CAR]


def test_merges_reject_stuff_classes_and_mismatched_shapes():
    semantic = torch.full((2, 2), ROAD)
    with pytest.raises(ValueError, match="thing class ids"):
        merge_panoptic_fpn(semantic, masks((2, 2), (0, 1, 0, 1)), torch.tensor([0.9]), torch.tensor([SKY]), TABLE)
    with pytest.raises(ValueError, match="same H, W"):
        fuse_panoptic(semantic, masks((3, 2), (0, 1, 0, 1)), torch.tensor([0.9]), torch.tensor([CAR]), TABLE)
    with pytest.raises(ValueError, match="one category >= 0 per class"):
        fuse_panoptic(semantic, masks((2, 2), (0, 1, 0, 1)), torch.tensor([0.9]), torch.tensor([CAR]), TABLE,
                      categories=[0, 1, 2])
    with pytest.raises(ValueError, match="1 masks, 2 scores"):
        fuse_panoptic(semantic, masks((2, 2), (0, 1, 0, 1)), torch.tensor([0.9, 0.8]), torch.tensor([CAR]), TABLE)


# Fusion scheme ------------------------------------------------------------------------------------------------

def test_fusion_keeps_only_the_mask_pixels_that_agree_with_the_semantic_map():
    semantic = torch.tensor([[ROAD, CAR, CAR, PERSON, SKY]])
    m = masks((1, 5), (0, 1, 0, 5))  # a car mask over the whole row
    merged = fuse_panoptic(semantic, m, torch.tensor([0.9]), torch.tensor([CAR]), TABLE, min_new_area=2)
    # Road and sky stay stuff; the person pixel is foreground of another class, cut from the car, isolated and
    # smaller than min_new_area: void.
    assert merged.panoptic.panoptic[0].tolist() == [ROAD, car(0), car(0), V, SKY]
    assert merged.instances[0].tolist() == [-1, 0, 0, -1, -1]
    check_representation(merged)


def test_fusion_region_growing_fills_the_uncovered_foreground():
    semantic = torch.full((3, 8), ROAD)
    semantic[0:2, 1:7] = CAR
    m = masks((3, 8), (0, 1, 1, 3), (2, 3, 0, 8))  # top-left corner of the car only; a mask on road
    merged = fuse_panoptic(semantic, m, torch.tensor([0.9, 0.8]), torch.tensor([CAR, CAR]), TABLE)
    expected = torch.full((3, 8), ROAD)
    expected[0:2, 1:7] = car(0)
    assert torch.equal(merged.panoptic.panoptic, expected.to(torch.int32))
    assert merged.classes.tolist() == [CAR]  # the road-only mask keeps no pixel: dropped


def test_fusion_region_growing_goes_to_the_nearest_instance_and_ties_to_the_higher_score():
    semantic = torch.full((1, 7), CAR)
    m = masks((1, 7), (0, 1, 6, 7), (0, 1, 0, 1))  # first detection at the right end, second at the left
    merged = fuse_panoptic(semantic, m, torch.tensor([0.6, 0.9]), torch.tensor([CAR, CAR]), TABLE)
    # Visiting order is by score: the left one (0.9) is instance 0. Column 3 is 3 steps from both: 0.9 wins.
    assert merged.instances[0].tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert merged.scores.tolist() == pytest.approx([0.9, 0.6])


def test_fusion_grows_only_along_pixels_of_the_same_category():
    # The right car pixels touch the instance only through a person pixel: no direct semantic path.
    semantic = torch.tensor([[CAR, CAR, PERSON, CAR, CAR]])
    m = masks((1, 5), (0, 1, 0, 1))
    merged = fuse_panoptic(semantic, m, torch.tensor([0.9]), torch.tensor([CAR]), TABLE)
    assert merged.panoptic.panoptic[0].tolist() == [car(0), car(0), PERSON * INSTANCE_OFFSET, car(1), car(1)]
    assert merged.classes.tolist() == [CAR, CAR, PERSON]  # new instances by class, then component


@pytest.mark.parametrize("min_new_area, new", [(3, True), (4, False)])
def test_fusion_turns_isolated_leftovers_into_new_instances(min_new_area, new):
    semantic = torch.full((3, 6), ROAD)
    semantic[0, 0:2] = CAR  # detected
    semantic[2, 3:6] = CAR  # 3 pixels no detection reaches
    m = masks((3, 6), (0, 1, 0, 2))
    merged = fuse_panoptic(semantic, m, torch.tensor([0.7]), torch.tensor([CAR]), TABLE,
                           min_new_area=min_new_area)
    row = merged.panoptic.panoptic[2].tolist()
    assert row == [ROAD] * 3 + ([car(1)] * 3 if new else [V] * 3)
    assert merged.classes.tolist() == ([CAR, CAR] if new else [CAR])
    assert merged.scores.tolist() == pytest.approx([0.7, 0.0] if new else [0.7])  # no detection backs it
    check_representation(merged)


def test_fusion_with_categories_takes_the_detected_sub_category():
    # The semantic map says car; the detector says truck, the same category (vehicle): the truck keeps the pixels
    # and the fused semantic map says truck there. A person mask on the car pixels is another category: cut.
    vehicle, human = 10, 11
    categories = [0, 1, vehicle, vehicle, human]
    semantic = torch.tensor([[ROAD, CAR, CAR, CAR]])
    m = masks((1, 4), (0, 1, 1, 3), (0, 1, 2, 4))
    merged = fuse_panoptic(semantic, m, torch.tensor([0.8, 0.9]), torch.tensor([TRUCK, PERSON]), TABLE,
                           categories=categories)
    assert merged.semantic[0].tolist() == [ROAD, TRUCK, TRUCK, TRUCK]  # column 3 grown from the truck
    assert merged.panoptic.panoptic[0].tolist() == [ROAD] + [TRUCK * INSTANCE_OFFSET] * 3
    assert merged.classes.tolist() == [TRUCK]


def test_fusion_with_no_detections_makes_every_foreground_component_an_instance():
    semantic = torch.tensor([[CAR, ROAD, CAR], [CAR, ROAD, IGNORE]])
    merged = fuse_panoptic(semantic, torch.zeros((0, 2, 3), dtype=torch.bool), torch.zeros(0),
                           torch.zeros(0, dtype=torch.int64), TABLE)
    assert merged.panoptic.panoptic.tolist() == [[car(0), ROAD, car(1)], [car(0), ROAD, V]]
