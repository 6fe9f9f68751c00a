"""PanoNet's ``instance_decoder`` switch (issue #13): the instance branch's decoder is PanoNet's embedding head, the
DCME vector head or the Bridging box head on the same encoder, with the same output keys and state-dict keys."""

import pytest
import torch

from panoptic_ros.decoders import BridgingHead, DCMEHead
from panoptic_ros.models import PanoNet, build_model
from panoptic_ros.models.icnet import ICNetDecoder

SMALL = dict(num_classes=11, width=0.125, depths=(1, 1, 1, 1))
THINGS = (8, 9, 10)


@pytest.mark.parametrize("decoder, extra, head, channels", [
    ("embedding", {}, ICNetDecoder, 12),
    ("dcme", {}, DCMEHead, 2),  # (dx, dy) to the centre of mass, DCME paper Sec. III
    ("bridging", {"thing_classes": THINGS}, BridgingHead, 4 * len(THINGS)),  # (dx, dy, w, h) per thing class
])
def test_each_decoder_gives_its_channels_on_the_same_encoder(decoder, extra, head, channels):
    torch.manual_seed(0)
    model = build_model("panonet", **SMALL, instance_decoder=decoder, **extra).train()
    assert type(model.embedding_decoder) is head and model.instance_decoder == decoder
    out = model(torch.randn(2, 3, 64, 96))
    assert out["embedding"].shape == (2, channels, 16, 24) and out["semantic"].shape == (2, 11, 16, 24)
    assert [g.shape[1] for g in out["embedding_guidance"]] == [channels, channels]
    (out["embedding"].square().mean() + sum(g.mean() for g in out["embedding_guidance"])).backward()
    assert all(p.grad is not None for p in model.embedding_decoder.parameters())
    # the encoders are the embedding model's, parameter for parameter: only the instance head differs
    plain = build_model("panonet", **SMALL).state_dict()
    mine = model.state_dict()
    assert {k for k in mine if not k.startswith("embedding_decoder.")} == {
        k for k in plain if not k.startswith("embedding_decoder.")}
    assert {k for k in mine if k.startswith("embedding_decoder.")} == {
        k for k in plain if k.startswith("embedding_decoder.")}  # same module layout, other widths
    assert mine["embedding_decoder.head.weight"].shape[0] == channels


def test_init_instance_from_semantic_reinitialises_any_decoder():
    torch.manual_seed(0)
    model = PanoNet(**SMALL, instance_decoder="dcme")
    with torch.no_grad():
        for p in model.embedding_decoder.parameters():
            p.fill_(7.0)
    model.init_instance_from_semantic()
    assert not any(bool((p == 7.0).all()) for p in model.embedding_decoder.parameters())


def test_bad_decoders_are_refused_with_what_is_allowed():
    with pytest.raises(ValueError, match=r"instance_decoder 'centres' is not allowed: expected one of "
                                         r"\('embedding', 'dcme', 'bridging'\)"):
        PanoNet(**SMALL, instance_decoder="centres")
    with pytest.raises(ValueError, match="'bridging' needs thing_classes"):
        PanoNet(**SMALL, instance_decoder="bridging")


def test_default_is_the_embedding_decoder():
    """What every model built before the switch, and every weights file without the key, is."""
    model = PanoNet(**SMALL)
    assert model.instance_decoder == "embedding" and model.config.thing_classes == ()
    assert type(model.embedding_decoder) is ICNetDecoder
