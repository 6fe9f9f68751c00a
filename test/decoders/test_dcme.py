"""DCME decoder (DCME paper Sec. III-IV): targets, the clipped-gradient loss, decoding, and the head."""

import math

import pytest
import torch

from panoptic_ros.decoders.dcme import (DCMEHead, clipped_error, dcme_cascade_loss, dcme_loss, dcme_targets,
                                        decode_dcme)
from panoptic_ros.losses import downsample_nearest
from panoptic_ros.models.icnet import ICNetEncoder

THINGS = (8, 9)


def test_targets_point_to_the_centre_of_mass_of_each_touching_instance():
    ids = torch.full((1, 3, 6), -1)
    ids[0, 0:2, 0:2] = 4  # CM (0.5, 0.5)
    ids[0, 0:3, 2:5] = 7  # touching; CM (3, 1)
    vectors = dcme_targets(ids)
    assert vectors.shape == (1, 2, 3, 6) and vectors.dtype == torch.float32
    dx = torch.tensor([[0.5, -0.5, 1, 0, -1, 0], [0.5, -0.5, 1, 0, -1, 0], [0, 0, 1, 0, -1, 0]])
    dy = torch.tensor([[0.5, 0.5, 1, 1, 1, 0], [-0.5, -0.5, 0, 0, 0, 0], [0, 0, -1, -1, -1, 0]])
    assert torch.equal(vectors[0, 0], dx) and torch.equal(vectors[0, 1], dy)


def test_targets_of_one_pixel_thin_empty_and_batched_maps():
    ids = torch.full((2, 4, 5), -1)
    ids[0, 3, 4] = 0  # one pixel: vector 0
    ids[1, 0:4, 2] = 0  # same id in another image is another instance: a thin column, CM y = 1.5
    vectors = dcme_targets(ids)
    assert torch.equal(vectors[0], torch.zeros(2, 4, 5))
    assert torch.equal(vectors[1, 0], torch.zeros(4, 5))
    assert vectors[1, 1, :, 2].tolist() == [1.5, 0.5, -0.5, -1.5]
    assert torch.equal(dcme_targets(torch.full((1, 3, 3), -1)), torch.zeros(1, 2, 3, 3))


def test_clipped_error_is_eq_6_in_both_forms():
    x = torch.tensor([-30.0, -2.0, -0.1, 0.0, 0.7, 5.0])
    expected = [4 * (1 / (1 + math.exp(-v)) - 0.5) for v in x.tolist()]
    assert clipped_error(x).tolist() == pytest.approx(expected, abs=1e-6)
    assert clipped_error(x).tolist() == pytest.approx((2 * torch.tanh(x / 2)).tolist(), abs=1e-6)
    assert clipped_error(torch.tensor([1e6])).item() == pytest.approx(2.0)  # amplitude A / 2


def _two_pixel_case():
    """One image, 1 x 2 grid, no instance (targets 0): the errors are the predictions."""
    prediction = torch.tensor([[[[0.5, -3.0]], [[1.0, 6.0]]]], requires_grad=True)
    return prediction, torch.full((1, 1, 2), -1)


def test_loss_value_uses_the_full_errors_and_n_of_eq_5():
    prediction, ids = _two_pixel_case()
    # Eq. 4 with N = 2 channels * 1 image * 1 * 2 pixels = 4: (0.25 + 9 + 1 + 36) / 8
    assert dcme_loss(prediction, ids).item() == pytest.approx(46.25 / 8)
    assert dcme_loss(prediction, ids, amplitude=None).item() == pytest.approx(46.25 / 8)


def test_loss_backpropagates_the_clipped_error_over_n():
    prediction, ids = _two_pixel_case()
    dcme_loss(prediction, ids).backward()
    errors = [0.5, -3.0, 1.0, 6.0]  # channel 0 then channel 1
    clipped = [4 * (1 / (1 + math.exp(-e)) - 0.5) / 4 for e in errors]
    assert prediction.grad.flatten().tolist() == pytest.approx([clipped[0], clipped[1], clipped[2], clipped[3]],
                                                               abs=1e-6)
    assert abs(prediction.grad.flatten()[3].item()) < 2 / 4  # capped at (A / 2) / N where plain MSE gives 6 / 4


def test_unclipped_gradient_and_valid_mask():
    prediction, ids = _two_pixel_case()
    dcme_loss(prediction, ids, amplitude=None).backward()
    assert prediction.grad.flatten().tolist() == pytest.approx([0.5 / 4, -3 / 4, 1 / 4, 6 / 4])
    prediction.grad = None
    loss = dcme_loss(prediction, ids, valid=torch.tensor([[[True, False]]]))
    assert loss.item() == pytest.approx((0.25 + 1) / 4)  # N = 2
    loss.backward()
    assert prediction.grad[0, :, 0, 1].tolist() == [0.0, 0.0]
    assert prediction.grad[0, 0, 0, 0].item() == pytest.approx(4 * (1 / (1 + math.exp(-0.5)) - 0.5) / 2, abs=1e-6)


def test_loss_against_instance_targets_and_without_valid_pixels():
    ids = torch.tensor([[[0, 0, -1]]])  # CM x = 0.5: targets dx = (0.5, -0.5, 0), dy = 0
    prediction = torch.zeros(1, 2, 1, 3, requires_grad=True)
    assert dcme_loss(prediction, ids).item() == pytest.approx((0.25 + 0.25) / (2 * 6))
    empty = dcme_loss(prediction, ids, valid=torch.zeros(1, 1, 3, dtype=torch.bool))
    assert empty.item() == 0.0
    empty.backward()
    assert torch.equal(prediction.grad, torch.zeros(1, 2, 1, 3))


def test_cascade_loss_weighs_each_scale_with_its_own_grid_targets():
    ids = torch.full((1, 8, 8), -1)
    ids[0, 0:4, 0:6] = 0
    fine, coarse = torch.randn(1, 2, 8, 8), torch.randn(1, 2, 4, 4)
    total = dcme_cascade_loss([fine, coarse], ids, weights=(1.0, 0.4))
    expected = dcme_loss(fine, ids) + 0.4 * dcme_loss(coarse, downsample_nearest(ids, (4, 4)))
    assert total.item() == pytest.approx(expected.item())
    assert dcme_cascade_loss(fine, ids).item() == pytest.approx(dcme_loss(fine, ids).item())


def test_decoding_the_perfect_target_reproduces_the_instances(scene, same_instances):
    ids, semantic = scene
    result = decode_dcme(dcme_targets(ids[None])[0], semantic, THINGS, min_votes=1)
    assert same_instances(result.ids, ids)
    # Numbered by class, then size: cars 0..3 (the occluded one, 18 pixels, first), the pedestrian last.
    assert result.classes.tolist() == [8, 8, 8, 8, 9]
    assert result.ids[8, 1].item() == result.ids[8, 6].item() == 0  # both sides of the pole: one car
    assert result.ids[4, 12].item() == 4
    assert result.ids.dtype == torch.int64


def test_touching_instances_of_one_class_are_separated(scene):
    ids, semantic = scene
    result = decode_dcme(dcme_targets(ids[None])[0], semantic, THINGS, min_votes=1)
    assert result.ids[2, 4].item() != result.ids[2, 5].item()
    assert len(torch.unique(result.ids[1:5, 1:5])) == 1 and len(torch.unique(result.ids[1:5, 5:9])) == 1


def test_a_centre_needs_min_votes_and_far_votes_get_no_instance(scene):
    ids, semantic = scene
    vectors = dcme_targets(ids[None])[0]
    result = decode_dcme(vectors, semantic, THINGS, min_votes=3)
    assert result.ids[11, 15].item() == -1  # its one vote makes no centre, and the nearest is far away
    assert len(result.classes) == 4
    joined = decode_dcme(vectors, semantic, THINGS, min_votes=3, max_distance=None)
    assert joined.ids[11, 15].item() >= 0  # every vote joins the nearest centre
    assert decode_dcme(vectors, semantic, THINGS, min_votes=1, min_pixels=2).ids[11, 15].item() == -1


def test_class_is_the_majority_of_the_semantic_map():
    ids = torch.full((4, 4), -1)
    ids[0:2, 0:2] = 0
    semantic = torch.zeros(4, 4, dtype=torch.int64)
    semantic[0:2, 0:2] = 9
    semantic[0, 0] = 8  # one pixel of another thing class stays in the instance
    result = decode_dcme(dcme_targets(ids[None])[0], semantic, THINGS, min_votes=1)
    assert result.classes.tolist() == [9]
    assert (result.ids[0:2, 0:2] == 0).all() and int((result.ids >= 0).sum()) == 4


def test_noisy_votes_around_two_centres(same_instances):
    torch.manual_seed(0)
    ids = torch.full((20, 30), -1)
    ids[2:12, 2:14] = 0
    ids[2:12, 14:27] = 1
    semantic = torch.where(ids >= 0, 8, 0)
    vectors = dcme_targets(ids[None])[0] + 0.4 * torch.randn(2, 20, 30)
    result = decode_dcme(vectors, semantic, THINGS)
    assert same_instances(result.ids, ids)


def test_empty_maps():
    for semantic in (torch.zeros(5, 7, dtype=torch.int64), torch.full((5, 7), 8)):
        vectors = torch.full((2, 5, 7), 100.0) if semantic[0, 0] == 8 else torch.zeros(2, 5, 7)
        result = decode_dcme(vectors, semantic, THINGS)  # no thing pixel / every vote off the grid: no centre
        assert torch.equal(result.ids, torch.full((5, 7), -1)) and result.classes.shape == (0,)


@pytest.mark.parametrize("kwargs, message", [
    (dict(vectors=torch.zeros(3, 4, 4)), "vectors must be \\[2, h, w\\]"),
    (dict(semantic=torch.zeros(4, 5, dtype=torch.int64)), "same h, w"),
    (dict(semantic=torch.zeros(4, 4)), "integer class ids"),
    (dict(peak_radius=-1), "peak_radius"),
    (dict(min_votes=0), "min_votes"),
])
def test_decode_rejects_bad_inputs(kwargs, message):
    args = dict(vectors=torch.zeros(2, 4, 4), semantic=torch.zeros(4, 4, dtype=torch.int64), thing_ids=THINGS)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        decode_dcme(**args)


def test_loss_rejects_bad_inputs():
    with pytest.raises(ValueError, match="vectors must be \\[B, 2, h, w\\]"):
        dcme_loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="valid must be"):
        dcme_loss(torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 4, dtype=torch.int64), valid=torch.ones(4, 4))
    with pytest.raises(ValueError, match="amplitude"):
        dcme_loss(torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 4, dtype=torch.int64), amplitude=0)
    with pytest.raises(ValueError, match="integer tensor"):
        dcme_targets(torch.zeros(1, 4, 4))


def test_head_shapes_and_backward():
    torch.manual_seed(0)
    encoder = ICNetEncoder(3, 0.125, (1, 1, 1, 1))
    head = DCMEHead(encoder.channels, width=0.125)
    images = torch.randn(2, 3, 64, 96)
    vectors, guidance = head(encoder(images))
    assert vectors.shape == (2, 2, 16, 24)
    assert [g.shape[1:] for g in guidance] == [(2, 8, 12), (2, 4, 6)]
    ids = torch.full((2, 64, 96), -1)
    ids[:, 10:30, 20:60] = 0
    dcme_cascade_loss([vectors, *guidance], ids).backward()
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in head.head.parameters())
    head.eval()
    vectors, guidance = head(encoder(images))
    assert guidance == []


def test_a_non_finite_vector_votes_nowhere(scene, same_instances):
    ids, semantic = scene
    vectors = dcme_targets(ids[None])[0]
    vectors[0, 2, 2], vectors[1, 8, 6] = float("nan"), float("inf")
    result = decode_dcme(vectors, semantic, THINGS, min_votes=1, max_distance=None)
    assert result.ids[2, 2].item() == -1 and result.ids[8, 6].item() == -1
    expected = ids.clone()
    expected[2, 2] = expected[8, 6] = -1
    assert same_instances(result.ids, expected)
