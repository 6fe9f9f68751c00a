"""Fusion-scheme semantic head (Fusion paper Sec. 2): ASP at 1/32 and 1/16, two 3x3 convs at 1/8 and 1/4, the
refinement pyramid, concatenation at 1/4 and a 1x1 classifier; on FPN-like and on ICNet features."""

import pytest
import torch
from torch import nn

from panoptic_ros.models.fusion_head import FusionSemanticHead
from panoptic_ros.models.icnet import ICNetEncoder


def _features(channels=(8, 8, 16, 32), size=(20, 28), batch=2):
    h, w = size
    sizes = [(h, w), (h // 2, w // 2), (h // 4, w // 4), (h // 8, w // 8)]
    return [torch.randn(batch, c, *s) for c, s in zip(channels, sizes)]


def test_structure_follows_the_paper():
    head = FusionSemanticHead((256, 256, 256, 256), num_classes=19)
    for asp in (head.asp16, head.asp32):
        convs = [branch[0] for branch in asp.branches]
        assert [(c.kernel_size, c.dilation) for c in convs] == [((1, 1), (1, 1)), ((3, 3), (6, 6)),
                                                                ((3, 3), (12, 12)), ((3, 3), (18, 18))]
        assert asp.project[0].in_channels == 4 * 128 and asp.project[0].out_channels == 128
        assert asp.project[0].kernel_size == (1, 1)
    for fine in head.fine:
        assert [(m[0].kernel_size, m[0].out_channels) for m in fine] == [((3, 3), 128), ((3, 3), 128)]
    assert head.classifier.in_channels == 512 and head.classifier.kernel_size == (1, 1)
    assert head.classifier.out_channels == 19


def test_output_is_at_the_quarter_level_size():
    head = FusionSemanticHead((8, 8, 16, 32), num_classes=5, channels=16)
    logits, guidance = head(_features(size=(21, 30)))  # odd sizes: 1/8 is 5 x 7, 1/32 is 2 x 3
    assert logits.shape == (2, 5, 21, 30) and guidance == []


def test_on_icnet_features_without_a_quarter_level():
    torch.manual_seed(0)
    encoder = ICNetEncoder(3, 0.125, (1, 1, 1, 1))
    head = FusionSemanticHead(encoder.channels, num_classes=11, channels=16)
    assert head.classifier.in_channels == 3 * 16
    logits, _ = head(encoder(torch.randn(2, 3, 64, 96)))
    assert logits.shape == (2, 11, 16, 24)  # the 1/4 grid of PanoNet's heads


def test_backward_reaches_every_parameter():
    torch.manual_seed(0)
    head = FusionSemanticHead((8, 8, 16, 32), num_classes=5, channels=16)
    logits, _ = head(_features())
    nn.functional.cross_entropy(logits, torch.randint(0, 5, (2, 20, 28))).backward()
    missing = [name for name, p in head.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert missing == []


def test_the_refinement_pyramid_carries_coarse_context_into_the_finest_level():
    # With the classifier reading only the 1/4 level's 16 channels, the output still depends on the 1/32
    # features: p4 = h4 + up(p8), p8 = h8 + up(p16), p16 = h16 + up(p32). Plain concatenation would not.
    torch.manual_seed(0)
    head = FusionSemanticHead((8, 8, 16, 32), num_classes=3, channels=16).eval()
    with torch.no_grad():
        head.classifier.weight[:, 16:] = 0
    features = _features(batch=1)
    before, _ = head(features)
    features[3] = features[3] + 1.0
    after, _ = head(features)
    assert not torch.allclose(before, after)
    with torch.no_grad():
        head.classifier.weight[:, :48] = 0  # only the 1/32 level's channels left
        head.classifier.weight[:, 48:] = 1
    features[0] = torch.randn_like(features[0])
    same1, _ = head(features)
    features[0] = torch.randn_like(features[0])
    same2, _ = head(features)
    assert torch.allclose(same1, same2)  # the coarsest level sees nothing finer


@pytest.mark.parametrize("in_channels", [(8, 16), (4, 8, 8, 16, 32), (0, 8, 16)])
def test_bad_levels_are_rejected(in_channels):
    with pytest.raises(ValueError, match="in_channels must give 4 levels"):
        FusionSemanticHead(in_channels, num_classes=3)


def test_features_that_do_not_match_are_rejected():
    head = FusionSemanticHead((8, 8, 16, 32), num_classes=3, channels=16)
    with pytest.raises(ValueError, match="expected 4 feature maps"):
        head(_features()[1:])
    with pytest.raises(ValueError, match=r"C = \(8, 8, 16, 32\)"):
        head(_features(channels=(8, 8, 16, 16)))
