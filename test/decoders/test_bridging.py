"""Bridging decoder (Bridging paper Sec. 2.1-2.2): box targets, the weighted bootstrapped smooth-L1 loss, pixel box
voting with NMS and region NMS, and the head."""

import pytest
import torch

from panoptic_ros.decoders.bridging import (BridgingHead, ScoredInstanceMap, bridging_cascade_loss, bridging_loss,
                                            bridging_targets, decode_bridging, paired_box_iou)
from panoptic_ros.losses import downsample_nearest
from panoptic_ros.models.icnet import ICNetEncoder
from panoptic_ros.postprocess import InstanceMap

THINGS = (8, 9)  # channels 0-3: class 8, 4-7: class 9
NUM_CLASSES = 10


def _perfect(ids, semantic):
    """Regression [8, h, w] from the targets (each pixel's class channels) and probabilities [10, h, w] with 0.9
    on the labelled class (0.1 / 9 elsewhere)."""
    targets = bridging_targets(ids[None], semantic[None], THINGS)
    regression = torch.zeros(8, *ids.shape)
    for t in range(2):
        regression[4 * t:4 * t + 4] = torch.where(targets.thing[0] == t, targets.boxes[0], 0.0)
    probs = torch.full((NUM_CLASSES, *ids.shape), 0.1 / 9)
    probs.scatter_(0, semantic[None], 0.9)
    return regression, probs


def test_targets_are_offsets_to_the_box_centre_and_its_size():
    ids = torch.full((1, 4, 9), -1)
    ids[0, 0:2, 0:4] = 0  # 4 x 2 box, centre (1.5, 0.5)
    ids[0, 0:4, 4:5] = 1  # thin column touching it: 1 x 4, centre (4, 1.5)
    ids[0, 3, 8] = 2  # one pixel
    ids[0, 3, 0] = 3  # an instance of a stuff class: no target
    semantic = torch.where(ids >= 0, 8, 0)
    semantic[0, 0:4, 4] = 9
    semantic[0, 3, 0] = 2
    t = bridging_targets(ids, semantic, THINGS)
    assert t.boxes.shape == (1, 4, 4, 9) and t.boxes.dtype == torch.float32
    assert t.boxes[0, :, 0, 0].tolist() == [1.5, 0.5, 4, 2]
    assert t.boxes[0, :, 1, 3].tolist() == [-1.5, -0.5, 4, 2]
    assert t.boxes[0, :, 0, 4].tolist() == [0, 1.5, 1, 4] and t.boxes[0, :, 3, 4].tolist() == [0, -1.5, 1, 4]
    assert t.boxes[0, :, 3, 8].tolist() == [0, 0, 1, 1]
    assert t.boxes[0, :, 3, 0].tolist() == [0, 0, 0, 0]
    assert t.thing[0, 0].tolist() == [0, 0, 0, 0, 1, -1, -1, -1, -1]
    assert t.thing[0, 3, 0].item() == -1 and t.weight[0, 3, 0].item() == 0
    assert t.weight[0, 0, 0].item() == pytest.approx(1 / 8) and t.weight[0, 2, 4].item() == pytest.approx(1 / 4)
    assert t.weight[0, 3, 8].item() == 1.0


def test_paired_box_iou_by_hand():
    a = torch.tensor([[0.0, 0, 2, 2], [0, 0, 2, 2], [0, 0, -1, 2]])[:, :, None]  # (cx, cy, w, h)
    b = torch.tensor([[1.0, 0, 2, 2], [0, 0, 2, 2], [0, 0, 2, 2]])[:, :, None]
    assert paired_box_iou(a, b).flatten().tolist() == pytest.approx([2 / 6, 1.0, 0.0])


def _one_instance(prediction_error):
    """A 2 x 2 instance of class 8 in a 2 x 3 grid; the class-8 channels predict the target plus the error."""
    ids = torch.tensor([[[0, 0, -1], [0, 0, -1]]])
    semantic = torch.where(ids >= 0, 8, 0)
    regression = torch.zeros(1, 8, 2, 3)
    regression[:, :4] = bridging_targets(ids, semantic, THINGS).boxes + torch.tensor(prediction_error)[:, None, None]
    return regression.requires_grad_(), ids, semantic


def test_loss_is_smooth_l1_summed_over_the_four_targets():
    regression, ids, semantic = _one_instance([0.5, -2.0, 0.0, 0.0])
    loss = bridging_loss(regression, ids, semantic, THINGS)
    assert loss.item() == pytest.approx(0.5 * 0.25 + (2.0 - 0.5))  # every pixel the same: the mean is one pixel's
    loss.backward()
    assert regression.grad[0, :, 0, 0].tolist() == pytest.approx([0.5 / 4, -1 / 4, 0, 0, 0, 0, 0, 0])
    assert torch.equal(regression.grad[0, :, :, 2], torch.zeros(8, 2))  # no instance, no gradient


def test_pixels_are_weighted_by_their_instance_box():
    ids = torch.full((1, 4, 8), -1)
    ids[0, :, 0:4] = 0  # 16 pixels
    ids[0, 0, 6] = 1  # 1 pixel
    semantic = torch.where(ids >= 0, 8, 0)
    targets = bridging_targets(ids, semantic, THINGS).boxes
    regression = torch.zeros(1, 8, 4, 8)
    regression[:, :4] = targets
    regression[0, 0, :, 0:4] += 0.2  # loss 0.02 per pixel of the big instance
    regression[0, 0, 0, 6] += 0.4  # loss 0.08 for the small one
    weighted = bridging_loss(regression, ids, semantic, THINGS)
    assert weighted.item() == pytest.approx((0.02 + 0.08) / 2)  # each instance counts once
    plain = bridging_loss(regression, ids, semantic, THINGS, size_weighted=False)
    assert plain.item() == pytest.approx((16 * 0.02 + 0.08) / 17)


def test_bootstrapping_drops_pixels_whose_predicted_box_already_fits():
    ids = torch.full((1, 4, 8), -1)
    ids[0, :, 0:4] = 0
    ids[0, 0:2, 6:8] = 1
    semantic = torch.where(ids >= 0, 8, 0)
    regression = torch.zeros(1, 8, 4, 8)
    regression[:, :4] = bridging_targets(ids, semantic, THINGS).boxes
    regression[0, 2, :, 0:4] += 0.4  # width 4.4 for 4: IoU 0.91, loss 0.08
    regression[0, 2, 0:2, 6:8] += 1.0  # width 3 for 2: IoU 0.67, loss 0.5
    assert bridging_loss(regression, ids, semantic, THINGS).item() == pytest.approx((0.08 + 0.5) / 2)
    assert bridging_loss(regression, ids, semantic, THINGS, bootstrap_threshold=0.9).item() == pytest.approx(0.5)
    # at least 25 % of the 20 labelled pixels: the 4 of the small box and 1 more (all 16 tie: all kept)
    kept = bridging_loss(regression, ids, semantic, THINGS, bootstrap_threshold=0.5, bootstrap_min_kept=0.25)
    assert kept.item() == pytest.approx((0.08 + 0.5) / 2)
    assert bridging_loss(regression, ids, semantic, THINGS, bootstrap_threshold=0.5).item() == 0.0


def test_cascade_loss_and_empty_maps():
    regression, ids, semantic = _one_instance([1.0, 0.0, 0.0, 0.0])
    assert bridging_cascade_loss(regression, ids, semantic, THINGS).item() == pytest.approx(0.5)
    big_ids = torch.full((1, 8, 8), -1)
    big_ids[0, 0:4, 0:6] = 0
    big_sem = torch.where(big_ids >= 0, 9, 0)
    fine, coarse = torch.randn(1, 8, 8, 8), torch.randn(1, 8, 4, 4)
    expected = bridging_loss(fine, big_ids, big_sem, THINGS) + 0.4 * bridging_loss(
        coarse, downsample_nearest(big_ids, (4, 4)), downsample_nearest(big_sem, (4, 4)), THINGS)
    total = bridging_cascade_loss([fine, coarse], big_ids, big_sem, THINGS, weights=(1.0, 0.4))
    assert total.item() == pytest.approx(expected.item())
    empty = bridging_loss(regression, torch.full((1, 2, 3), -1), semantic, THINGS)
    assert empty.item() == 0.0 and empty.requires_grad


def test_decoding_perfect_regressions_reproduces_the_instances(scene, same_instances):
    ids, semantic = scene
    regression, probs = _perfect(ids, semantic)
    result = decode_bridging(regression, probs, THINGS)
    assert isinstance(result, InstanceMap) and isinstance(result, ScoredInstanceMap)
    assert same_instances(result.ids, ids)
    assert result.classes.tolist() == [8, 8, 8, 8, 9]
    assert result.scores.tolist() == pytest.approx([0.9] * 5)
    assert result.ids[8, 1].item() == result.ids[8, 6].item()  # one car on both sides of the pole
    assert result.ids[2, 4].item() != result.ids[2, 5].item()  # touching cars apart
    assert result.ids.dtype == torch.int64


def _row_of_cars(scores, centres, widths):
    """A 1 x 3 grid of class-8 pixels with these car probabilities (the rest on class 0), each voting a box one
    pixel high with this centre x and width: (regression [8, 1, 3], probabilities [10, 1, 3])."""
    probs = torch.zeros(NUM_CLASSES, 1, 3)
    probs[8] = torch.tensor(scores)
    probs[0] = 1 - probs[8]
    regression = torch.zeros(8, 1, 3)
    regression[0] = torch.tensor(centres) - torch.arange(3.0)
    regression[2], regression[3] = torch.tensor(widths), 1.0
    return regression, probs


def test_an_instance_is_a_kept_pixel_with_the_pixels_it_suppressed():
    # One row: three class-8 pixels with 10 x 1 boxes centred at x = 0, 3, 6: IoU(1, 2) = IoU(2, 3) = 7/13 > 0.5,
    # IoU(1, 3) = 4/16. Greedy NMS keeps pixel 1 (highest score), which suppresses pixel 2; pixel 3 survives,
    # since a suppressed box suppresses nothing. Linking all overlapping boxes would give one instance.
    regression, probs = _row_of_cars(scores=[0.9, 0.8, 0.7], centres=[0.0, 3.0, 6.0], widths=[10.0, 10.0, 10.0])
    result = decode_bridging(regression, probs, THINGS)
    assert result.ids.tolist() == [[0, 0, 1]]
    assert result.scores.tolist() == pytest.approx([0.85, 0.7])
    assert decode_bridging(regression, probs, THINGS, iou_threshold=0.2).ids.tolist() == [[0, 0, 0]]


def test_a_suppressed_pixel_joins_the_box_that_suppressed_it_not_the_one_it_overlaps_most():
    # Boxes [0, 10] (score 0.9), [5, 12] (0.8), [4, 11] (0.6), one row high: the first two overlap by 5/12 and
    # both survive; the third overlaps the first by 6/11 > 0.5 (so the first suppresses it) and the second by 6/8.
    regression, probs = _row_of_cars(scores=[0.9, 0.8, 0.6], centres=[5.0, 8.5, 7.5], widths=[10.0, 7.0, 7.0])
    result = decode_bridging(regression, probs, THINGS)
    assert result.ids.tolist() == [[1, 0, 1]]  # numbered by score: 0.8, then (0.9 + 0.6) / 2
    assert result.scores.tolist() == pytest.approx([0.8, 0.75])


def test_region_nms_removes_a_lower_scoring_overlapping_instance_of_the_top_n_masks():
    # Car A (4 x 4, class 8 at 0.9) and a column right of it where class 9 wins (0.6) and class 8 is second (0.3).
    # With top_n = 2, the class-8 mask of rank <= 2 is A + column: one instance (the column's boxes are A's), mean
    # score 0.78, mask IoU 16/20 with A's rank-1 instance. Region NMS at 0.5 removes it, so the column stays with
    # the class-9 instance; at 0.85 it survives and, scoring above 0.6, takes the column.
    h, w = 6, 8
    probs = torch.zeros(NUM_CLASSES, h, w)
    probs[0], probs[1] = 0.9, 0.1  # background: two stuff classes first
    probs[:, 1:5, 1:5] = 0.0
    probs[8, 1:5, 1:5], probs[0, 1:5, 1:5], probs[9, 1:5, 1:5] = 0.9, 0.08, 0.02
    probs[:, 1:5, 5] = 0.0
    probs[9, 1:5, 5], probs[8, 1:5, 5], probs[0, 1:5, 5] = 0.6, 0.3, 0.1
    regression = torch.zeros(8, h, w)
    xs, ys = torch.meshgrid(torch.arange(w, dtype=torch.float32), torch.arange(h, dtype=torch.float32), indexing="xy")
    regression[0], regression[1], regression[2], regression[3] = 2.5 - xs, 2.5 - ys, 4.0, 4.0  # A's box everywhere
    regression[4], regression[5], regression[6], regression[7] = 5.0 - xs, 2.5 - ys, 1.0, 4.0  # the column's box
    result = decode_bridging(regression, probs, THINGS, top_n=2)
    assert result.classes.tolist() == [8, 9]
    assert (result.ids[1:5, 1:5] == 0).all() and (result.ids[1:5, 5] == 1).all()
    assert int((result.ids >= 0).sum()) == 20
    assert result.scores.tolist() == pytest.approx([0.9, 0.6])
    loose = decode_bridging(regression, probs, THINGS, top_n=2, region_iou_threshold=0.85)
    assert loose.classes.tolist() == [8, 8]
    assert (loose.ids[1:5, 1:5] == 0).all() and (loose.ids[1:5, 5] == 1).all()
    assert loose.scores.tolist() == pytest.approx([0.9, (16 * 0.9 + 4 * 0.3) / 20])


def test_noisy_regressions_still_give_the_instances(scene, same_instances):
    torch.manual_seed(0)
    ids, semantic = scene
    regression, probs = _perfect(ids, semantic)
    result = decode_bridging(regression + 0.2 * torch.randn_like(regression), probs, THINGS)
    assert same_instances(result.ids, ids)


def test_empty_map_and_min_pixels(scene):
    probs = torch.zeros(NUM_CLASSES, 5, 7)
    probs[3] = 1.0
    result = decode_bridging(torch.zeros(8, 5, 7), probs, THINGS)
    assert torch.equal(result.ids, torch.full((5, 7), -1))
    assert result.classes.shape == (0,) and result.scores.shape == (0,)
    ids, semantic = scene
    result = decode_bridging(*_perfect(ids, semantic), THINGS, min_pixels=2)
    assert result.ids[11, 15].item() == -1 and len(result.classes) == 4


@pytest.mark.parametrize("kwargs, message", [
    (dict(regression=torch.zeros(4, 4, 4)), "T = 2 thing classes"),
    (dict(probabilities=torch.zeros(NUM_CLASSES, 4, 5)), "same h, w"),
    (dict(thing_ids=(8, 12)), "thing id 12 has no channel"),
    (dict(thing_ids=()), "thing_ids must be non-empty"),
    (dict(top_n=0), "top_n"),
    (dict(iou_threshold=1.0), "iou_threshold"),
    (dict(region_iou_threshold=-0.1), "region_iou_threshold"),
])
def test_decode_rejects_bad_inputs(kwargs, message):
    args = dict(regression=torch.zeros(8, 4, 4), probabilities=torch.zeros(NUM_CLASSES, 4, 4), thing_ids=THINGS)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        decode_bridging(**args)


def test_loss_and_head_reject_bad_inputs():
    ids = torch.zeros(1, 4, 4, dtype=torch.int64)
    with pytest.raises(ValueError, match="regression must be \\[B, 4 T, h, w\\] with T = 2"):
        bridging_loss(torch.zeros(1, 4, 4, 4), ids, ids, THINGS)
    with pytest.raises(ValueError, match="same shape"):
        bridging_targets(ids, torch.zeros(1, 4, 5, dtype=torch.int64), THINGS)
    with pytest.raises(ValueError, match="num_thing_classes"):
        BridgingHead((8, 16, 32), 0)


def test_head_shapes_and_backward():
    torch.manual_seed(0)
    encoder = ICNetEncoder(3, 0.125, (1, 1, 1, 1))
    head = BridgingHead(encoder.channels, num_thing_classes=2, width=0.125)
    regression, guidance = head(encoder(torch.randn(2, 3, 64, 96)))
    assert regression.shape == (2, 8, 16, 24)
    assert [g.shape[1:] for g in guidance] == [(8, 8, 12), (8, 4, 6)]
    ids = torch.full((2, 64, 96), -1)
    ids[:, 10:30, 20:60] = 0
    semantic = torch.where(ids >= 0, 9, 0)
    bridging_cascade_loss([regression, *guidance], ids, semantic, THINGS).backward()
    weight_grad = head.head.weight.grad.flatten(1).abs().sum(1)
    assert bool((weight_grad[4:] > 0).all()) and bool((weight_grad[:4] == 0).all())  # only class 9's channels


def test_a_non_finite_regression_votes_no_box(scene, same_instances):
    ids, semantic = scene
    regression, probs = _perfect(ids, semantic)
    regression[0, 2, 2], regression[7, 4, 12] = float("nan"), float("inf")
    result = decode_bridging(regression, probs, THINGS)
    expected = ids.clone()
    expected[2, 2] = expected[4, 12] = -1
    assert same_instances(result.ids, expected)
    regression[:] = float("nan")
    assert torch.equal(decode_bridging(regression, probs, THINGS).ids, torch.full(ids.shape, -1))
