"""Both decoders' instance maps go through PanoNet's merge unchanged: ``assign_thing_pixels`` at 4x the grid, then
``merge_panoptic`` into the message's id convention (CamVid classes: car 8, pedestrian 9, tree 5, road 3)."""

import pytest
import torch

from panoptic_ros.classes import CAMVID
from panoptic_ros.decoders import bridging_targets, dcme_targets, decode_bridging, decode_dcme
from panoptic_ros.postprocess import INSTANCE_OFFSET, assign_thing_pixels, merge_panoptic


def _dcme(ids, semantic):
    return decode_dcme(dcme_targets(ids[None])[0], semantic, CAMVID.thing_ids, min_votes=1)


def _bridging(ids, semantic):
    targets = bridging_targets(ids[None], semantic[None], CAMVID.thing_ids)
    regression = torch.zeros(4 * len(CAMVID.thing_ids), *ids.shape)
    for t in range(len(CAMVID.thing_ids)):
        regression[4 * t:4 * t + 4] = torch.where(targets.thing[0] == t, targets.boxes[0], 0.0)
    probs = torch.full((len(CAMVID), *ids.shape), 0.01).scatter_(0, semantic[None], 0.9)
    return decode_bridging(regression, probs, CAMVID.thing_ids)


@pytest.mark.parametrize("decode", [_dcme, _bridging])
def test_instances_merge_into_panoptic_segments(scene, decode):
    ids, semantic = scene
    instances = decode(ids, semantic)
    full = semantic.repeat_interleave(4, 0).repeat_interleave(4, 1)  # the semantic map at input resolution
    full_ids, classes = assign_thing_pixels(full, instances.ids, instances.classes, CAMVID.thing_ids)
    result = merge_panoptic(full, full_ids, classes, CAMVID)
    things = sorted(s.id for s in result.segments if s.is_thing)
    assert things == [8 * INSTANCE_OFFSET + k for k in range(4)] + [9 * INSTANCE_OFFSET]
    car_areas = sorted(s.area for s in result.segments if s.class_id == 8)
    assert car_areas == [16, 16 * 16, 16 * 16, 18 * 16]  # one-pixel car, the touching pair, the occluded one
    assert sorted(s.id for s in result.segments if not s.is_thing) == [3, 5]
