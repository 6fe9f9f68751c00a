"""Every network variant: output shapes, guidance outputs in training only, a backward pass, coordinates."""

import pytest
import torch

from panoptic_ros.models import ICNet, PanoNet, build_model
from panoptic_ros.models.panonet import coordinate_channels

VARIANTS = [
    dict(width=0.125, depths=(1, 1, 1, 1), share_encoder=False),
    dict(width=0.125, depths=(1, 2, 2, 1), share_encoder=True),
]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("size", [(64, 96), (70, 101)])
def test_panonet_outputs_and_backward(variant, size):
    model = PanoNet(num_classes=5, **variant).train()
    out = model(torch.randn(2, 3, *size))
    h4, w4 = out["semantic"].shape[-2:]
    assert out["semantic"].shape[:2] == (2, 5) and out["embedding"].shape[:2] == (2, 12)
    assert abs(h4 - size[0] / 4) <= 2 and abs(w4 - size[1] / 4) <= 2
    assert [g.shape[1] for g in out["semantic_guidance"]] == [5, 5]
    assert [g.shape[1] for g in out["embedding_guidance"]] == [12, 12]
    loss = out["semantic"].square().mean() + out["embedding"].square().mean()
    loss = loss + sum(g.mean() for g in out["semantic_guidance"] + out["embedding_guidance"])
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.eval()
    with torch.no_grad():
        assert set(model(torch.randn(1, 3, *size))) == {"semantic", "embedding"}


def test_icnet_guidance_scales():
    model = ICNet(3, 7, width=0.125, depths=(1, 1, 1, 1)).train()
    out = model(torch.randn(1, 3, 128, 256))
    assert out["out"].shape == (1, 7, 32, 64)
    assert [tuple(g.shape[-2:]) for g in out["guidance"]] == [(16, 32), (8, 16)]


def test_coordinates_are_normalised_pixel_centres():
    grid = coordinate_channels(1, 2, 4)
    assert torch.allclose(grid[0, 0, 0], torch.tensor([-0.75, -0.25, 0.25, 0.75]))
    assert torch.allclose(grid[0, 1, :, 0], torch.tensor([-0.5, 0.5]))


def test_switching_coordinates_on_keeps_the_stage_one_function():
    torch.manual_seed(0)
    model = PanoNet(num_classes=3, width=0.125, depths=(1, 1, 1, 1)).eval()
    images = torch.randn(1, 3, 64, 64)
    model.set_use_coordinates(False)
    stage_one = model(images)["embedding"]
    model.set_use_coordinates(True)
    assert torch.allclose(model(images)["embedding"], stage_one)  # coordinate weights start at zero
    with torch.no_grad():
        model.instance_encoder.stem[0][0].weight[:, 3:].fill_(0.5)
    assert not torch.allclose(model(images)["embedding"], stage_one)


def test_build_model_rejects_unknown_architectures():
    assert isinstance(build_model("panonet", num_classes=2, width=0.125, depths=(1, 1, 1, 1)), PanoNet)
    with pytest.raises(ValueError, match="unknown architecture 'icnet2'"):
        build_model("icnet2")


def test_explicit_coordinates_reach_the_instance_branch_only():
    """Training crops pass their full-image coordinates (Sec. III-A); the default is the whole frame's."""
    torch.manual_seed(0)
    model = PanoNet(num_classes=3, width=0.125, depths=(1, 1, 1, 1)).eval()
    with torch.no_grad():
        model.instance_encoder.stem[0][0].weight[:, 3:].fill_(0.5)
    images = torch.randn(1, 3, 32, 48)
    default = model(images)
    assert torch.equal(model(images, coordinate_channels(1, 32, 48))["embedding"], default["embedding"])
    shifted = model(images, coordinate_channels(1, 32, 48) * 0.25 + 0.5)
    assert not torch.allclose(shifted["embedding"], default["embedding"])
    assert torch.equal(shifted["semantic"], default["semantic"])
    with pytest.raises(ValueError, match="coordinates must be"):
        model(images, coordinate_channels(1, 16, 48))


def test_semantic_only_forward_skips_the_instance_branch():
    model = PanoNet(num_classes=3, width=0.125, depths=(1, 1, 1, 1)).train()
    out = model(torch.randn(2, 3, 32, 48), instance=False)
    assert set(out) == {"semantic", "semantic_guidance"}
    out["semantic"].mean().backward()
    assert all(p.grad is None for p in model.instance_encoder.parameters())


@pytest.mark.parametrize("share_encoder", [False, True])
def test_instance_branch_starts_from_the_semantic_encoder(share_encoder):
    """Sec. III-C: the instance encoder takes the trained semantic encoder's parameters (coordinate input weights
    zero) and the embedding decoder is re-initialised."""
    torch.manual_seed(0)
    model = PanoNet(num_classes=3, width=0.125, depths=(1, 1, 1, 1), share_encoder=share_encoder)
    semantic = model.semantic_encoder or model.instance_encoder
    with torch.no_grad():
        for p in semantic.parameters():
            p.add_(1.0)
        for p in model.embedding_decoder.parameters():
            p.fill_(7.0)
    trained_head = model.semantic_decoder.head.weight.clone()
    model.init_instance_from_semantic()
    for (name, a), b in zip(semantic.state_dict().items(), model.instance_encoder.state_dict().values()):
        if a.shape == b.shape:
            assert torch.equal(a, b), name
        else:
            assert torch.equal(b[:, :3], a) and not b[:, 3:].any(), name
    assert not any(bool((p == 7.0).all()) for p in model.embedding_decoder.parameters())
    assert torch.equal(model.semantic_decoder.head.weight, trained_head)
