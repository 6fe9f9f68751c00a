"""PanoNet's semantic head switch (issue #13 item 3): ``model.semantic_head: icnet | fusion`` builds ICNet's
cascade decoder or the fusion scheme's head (``models.fusion_head``) on the same encoder. The fusion head trains
through the same CLI with Eq. 1's one 1/4 term (it has no guidance outputs), its weights file records the head,
the Predictor runs it, and it exports as one graph (the backends' prerequisite)."""

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from panoptic_ros.checkpoint import load_model, read_weights
from panoptic_ros.config import ConfigError, config_from_dict
from panoptic_ros.losses import CASCADE_WEIGHTS, cascade_cross_entropy
from panoptic_ros.models import build_model
from panoptic_ros.models.fusion_head import FusionSemanticHead
from panoptic_ros.models.icnet import ICNetDecoder
from panoptic_ros.predictor import DEFAULT_WEIGHTS, Predictor
from panoptic_ros.train import compute_losses, train

SMALL = {"num_classes": 11, "width": 0.125, "depths": [1, 1, 1, 1]}


def config(root, epochs, semantic_only=False, **model):
    return config_from_dict({
        "model": {**SMALL, **model},
        "data": {"root": str(root), "crop": [64, 96], "scale": [1.0, 1.0], "jitter": 0.0, "batch_size": 2,
                 "workers": 0},
        "train": {"epochs": epochs, "coordinate_epoch": 0, "optimizer": "adam", "lr": 0.01, "poly_power": 0.0,
                  "semantic_only": semantic_only},
        "postprocess": {"min_instance_pixels": 1},
    })


@pytest.mark.parametrize("share_encoder", [False, True])
def test_the_fusion_head_replaces_icnets_on_the_same_encoder(share_encoder):
    torch.manual_seed(0)
    icnet = build_model("panonet", **SMALL, share_encoder=share_encoder)
    fusion = build_model("panonet", **SMALL, share_encoder=share_encoder, semantic_head="fusion")
    assert isinstance(icnet.semantic_decoder, ICNetDecoder) and isinstance(fusion.semantic_decoder, FusionSemanticHead)
    assert fusion.semantic_decoder.in_channels == fusion.instance_encoder.channels
    assert fusion.semantic_decoder.classifier.in_channels == 3 * 16  # 3 levels x round(128 x 0.125)
    # everything but the semantic head is the same network
    head = "semantic_decoder."
    assert {k: v.shape for k, v in icnet.state_dict().items() if not k.startswith(head)} == (
        {k: v.shape for k, v in fusion.state_dict().items() if not k.startswith(head)})
    images = torch.randn(2, 3, 72, 104)
    fusion.train()
    out = fusion(images)
    assert out["semantic"].shape == (2, 11, 18, 26) and out["semantic_guidance"] == []
    assert out["embedding"].shape == (2, 12, 18, 26) and len(out["embedding_guidance"]) == 2
    fusion.eval()
    with torch.no_grad():
        assert fusion(images)["semantic"].shape == icnet.eval()(images)["semantic"].shape


def test_an_unknown_head_is_refused_naming_the_choices(toy_camvid):
    with pytest.raises(ValueError, match=r"semantic_head 'deeplab' is not allowed: expected one of \('icnet', 'fusion'\)"):
        build_model("panonet", **SMALL, semantic_head="deeplab")
    with pytest.raises(ConfigError, match="semantic_head"):
        config(toy_camvid, 1, semantic_head="deeplab")


def test_the_semantic_loss_has_one_term_without_guidance_outputs():
    """Eq. 1 over the outputs there are: the fusion head's 1/4 logits alone weigh lambda_1 = 1; ICNet's three
    scales keep their lambdas."""
    cfg = config_from_dict({"model": SMALL, "train": {"semantic_only": True}})
    torch.manual_seed(0)
    target = torch.randint(0, 11, (2, 64, 96))
    batch = {"semantic": target}
    logits = [torch.randn(2, 11, 16, 24), torch.randn(2, 11, 8, 12), torch.randn(2, 11, 4, 6)]
    alone = compute_losses({"semantic": logits[0], "semantic_guidance": []}, batch, cfg, None)["semantic"]
    assert alone == pytest.approx(float(cascade_cross_entropy(logits[:1], target, (1.0,))))
    cascade = compute_losses({"semantic": logits[0], "semantic_guidance": logits[1:]}, batch, cfg, None)["semantic"]
    assert cascade == pytest.approx(float(cascade_cross_entropy(logits, target, CASCADE_WEIGHTS)))


def test_a_fusion_head_model_trains_saves_and_predicts(toy_camvid, tmp_path):
    torch.manual_seed(0)
    cfg = config(toy_camvid, 4, semantic_head="fusion")
    train(cfg, tmp_path / "run")
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["loss_semantic"] < 0.8 * log[0]["loss_semantic"]
    path = tmp_path / "run" / "weights.safetensors"
    model, model_cfg, _, _ = load_model(path)
    assert model_cfg.semantic_head == "fusion" and model_cfg == cfg.model
    assert isinstance(model.semantic_decoder, FusionSemanticHead)
    prediction = Predictor.from_weights(path, device="cpu", backend="eager")(np.zeros((64, 96, 3), np.uint8))
    assert prediction.semantic.shape == (64, 96)
    # one torch.export graph, as the onnxruntime / compile / tensorrt backends need
    image = torch.randn(1, 3, 64, 96)
    exported = torch.export.export(model.eval(), (image,))
    with torch.no_grad():
        assert torch.allclose(exported.module()(image)["semantic"], model(image)["semantic"], atol=1e-5)


def test_weights_files_without_the_key_are_icnet_files():
    old = DEFAULT_WEIGHTS.with_name("panonet_camvid_without_coordinates.safetensors")  # predates the key
    with safe_open(str(old), "pt") as f:
        assert "semantic_head" not in json.loads(f.metadata()["model"])
    _, model_cfg, _, _ = read_weights(old)
    assert model_cfg.semantic_head == "icnet"


def test_semantic_only_weights_start_only_a_model_with_the_same_head(toy_camvid, tmp_path):
    train(config(toy_camvid, 1, semantic_only=True), tmp_path / "icnet")
    with pytest.raises(ValueError, match="its model config .* differs from the experiment's"):
        train(config(toy_camvid, 1, semantic_head="fusion"), tmp_path / "bad",
              init=tmp_path / "icnet" / "weights.safetensors")
