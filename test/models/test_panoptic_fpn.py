"""The accuracy-mode network (IMP paper Fig. 3, Fig. 4) on tiny inputs: every variant, its losses and gradients,
its raw outputs, the class-id mapping, backbone initialisation and input checks."""

import math

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from panoptic_ros.classes import CAMVID
from panoptic_ros.models import build_model
from panoptic_ros.models.panoptic_fpn import (MASK_THRESHOLD, VARIANTS, PanopticFPN, SemanticFPN, ThingLabels,
                                              detection_targets, top_k_cross_entropy)

H, W = 64, 96
THINGS = CAMVID.thing_ids  # car, pedestrian, bicyclist: 8, 9, 10
DETECTOR_LOSSES = {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}


def tiny(**kwargs) -> PanopticFPN:
    """ResNet-18 with narrow heads and few proposals; every detection kept (random weights score low)."""
    torch.manual_seed(0)
    config = dict(num_classes=len(CAMVID), thing_classes=THINGS, backbone="resnet18", fpn_channels=32,
                  semantic_channels=32, box_head_channels=64, mask_head_channels=32, rpn_pre_nms_top_n_train=100,
                  rpn_post_nms_top_n_train=50, rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=30,
                  box_batch_size_per_image=32, box_score_thresh=0.0, box_detections_per_img=20,
                  ignore_index=CAMVID.ignore_id)
    config.update(kwargs)
    return PanopticFPN(**config)


def targets(batch: int = 2, height: int = H, width: int = W) -> list[dict]:
    """A car and a pedestrian per image, the rest road, a void stripe."""
    semantic = torch.full((height, width), 3)
    semantic[:, :4] = CAMVID.ignore_id
    masks = torch.zeros((2, height, width), dtype=torch.uint8)
    masks[0, 10:30, 20:50] = 1
    masks[1, 30:60, 60:70] = 1
    semantic[masks[0].bool()] = 8
    semantic[masks[1].bool()] = 9
    target = {"boxes": torch.tensor([[20.0, 10.0, 50.0, 30.0], [60.0, 30.0, 70.0, 60.0]]),
              "labels": torch.tensor([8, 9]), "masks": masks, "semantic": semantic}
    return [dict(target) for _ in range(batch)]


def images(batch: int = 2, height: int = H, width: int = W) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_trains_with_finite_losses_and_returns_raw_outputs(variant):
    model = tiny(**VARIANTS[variant])
    model.train()
    losses = model(images(1), targets(1))
    learned_semantic = variant != "mask_rcnn_imp"
    assert set(losses) == DETECTOR_LOSSES | ({"loss_semantic"} if learned_semantic else set())
    assert all(v.dim() == 0 and math.isfinite(v.detach().item()) for v in losses.values())
    sum(losses.values()).backward()
    assert model.backbone.body.layer4[0].conv1.weight.grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        out = model(images(1, 70, 100))  # not a multiple of 32: padded inside, outputs cover the input
    assert out["semantic"].shape == (1, len(CAMVID), 18, 25) and out["semantic"].dtype == torch.float32
    (det,) = out["detections"]
    n = len(det["scores"])
    assert 0 < n <= 20
    assert det["boxes"].shape == (n, 4) and det["boxes"].dtype == torch.float32
    assert det["masks"].shape == (n, 28, 28) and det["masks"].dtype == torch.float32
    assert det["labels"].dtype == torch.int64 and set(det["labels"].tolist()) <= set(THINGS)
    assert float(det["boxes"][:, 2].max()) <= 100 and float(det["boxes"][:, 3].max()) <= 70
    assert float(det["masks"].min()) >= 0 and float(det["masks"].max()) <= 1
    if VARIANTS[variant]["imp"]:
        assert out["imp_canvas"].shape == (1, len(THINGS), 18, 25)
        assert float(out["imp_canvas"].max()) > 0
    else:
        assert "imp_canvas" not in out


def test_the_semantic_loss_reaches_the_mask_and_class_logits_through_imp():
    grads = {}
    for imp in (True, False):
        model = tiny(semantic_features="fpn", imp=imp).train()
        model(images(1), targets(1))["loss_semantic"].backward()
        mask = model.roi_heads.mask_predictor.mask_fcn_logits.weight.grad
        cls = model.roi_heads.box_predictor.cls_score.weight.grad
        grads[imp] = [0.0 if g is None else float(g.abs().sum()) for g in (mask, cls)]
    assert grads[True][0] > 0 and grads[True][1] > 0  # mask probabilities and scores both feed the canvas
    assert grads[False] == [0.0, 0.0]  # without IMP the semantic loss never touches the detector heads


def test_mask_rcnn_imp_semantic_output_is_the_canvas_in_the_thing_planes():
    model = tiny(**VARIANTS["mask_rcnn_imp"]).eval()
    assert {name.split(".")[0] for name, _ in model.named_parameters()} == {"backbone", "rpn", "roi_heads"}
    with torch.no_grad():
        out = model(images(1))
    canvas, logits = out["imp_canvas"][0], out["semantic"][0]
    torch.testing.assert_close(logits[list(THINGS)], canvas, rtol=0, atol=0)
    stuff = [c.id for c in CAMVID.classes if not c.is_thing]
    assert torch.all(logits[stuff] == MASK_THRESHOLD)


def test_class_ids_map_to_detector_labels_and_back():
    labels = ThingLabels(THINGS, len(CAMVID))
    assert labels.to_detector(torch.tensor([8, 9, 10, 8])).tolist() == [1, 2, 3, 1]
    assert labels.to_dataset(torch.tensor([3, 1, 2])).tolist() == [10, 8, 9]
    assert labels.to_detector(torch.zeros(0, dtype=torch.int64)).shape == (0,)
    with pytest.raises(ValueError, match="thing classes"):
        labels.to_detector(torch.tensor([8, 3]))  # road is stuff
    with pytest.raises(ValueError, match="thing classes"):
        labels.to_detector(torch.tensor([11]))  # void
    with pytest.raises(ValueError, match=r"in 1\.\.3"):
        labels.to_dataset(torch.tensor([0]))  # background
    with pytest.raises(ValueError, match="thing_classes"):
        ThingLabels((9, 8), 11)
    with pytest.raises(ValueError, match="thing_classes"):
        ThingLabels((8, 11), 11)


def test_detections_land_on_the_canvas_plane_of_their_class():
    model = tiny(**VARIANTS["mask_rcnn_imp"])
    detection = {"boxes": torch.tensor([[8.0, 8.0, 24.0, 24.0]]), "labels": torch.tensor([2]),  # pedestrian
                 "scores": torch.tensor([0.8]), "masks": torch.ones(1, 28, 28)}
    canvas = model.project([detection], (H, W))
    assert canvas.shape == (1, 3, H // 4, W // 4)
    assert torch.all(canvas[0, [0, 2]] == 0)
    assert torch.all(canvas[0, 1, 2:6, 2:6] == 0.8) and float(canvas[0, 1].sum()) == pytest.approx(0.8 * 16)
    logits = model.semantic_logits({}, canvas)
    assert torch.equal(logits[0, 9], canvas[0, 1])  # plane 1 is CamVid's pedestrian (id 9)


def test_training_targets_are_dataset_class_ids():
    model = tiny().train()
    bad = targets()
    bad[0] = dict(bad[0], labels=torch.tensor([8, 3]))  # road as an instance
    with pytest.raises(ValueError, match="thing classes"):
        model(images(), bad)


def test_semantic_head_is_figure_4():
    model = tiny(semantic_channels=32)
    assert isinstance(model.semantic, SemanticFPN)
    stages = [sum(isinstance(m, nn.Upsample) for m in s.modules()) for s in model.semantic.upsample]
    assert stages == [1, 2, 3]  # P3, P4, P5 to 1/4
    assert sum(isinstance(m, nn.GroupNorm) for m in model.predictor.modules()) == 4
    assert model.predictor.convs[0].in_channels == 32 + len(THINGS)  # features and the canvas
    assert model.predictor.logits.out_channels == len(CAMVID)
    p2 = tiny(**VARIANTS["panoptic_p2"])
    assert not any(isinstance(m, nn.GroupNorm) for m in p2.predictor.modules())  # "does not use group norm"
    assert p2.predictor.convs[0].in_channels == 32


@pytest.mark.parametrize("norm, layer", [("gn", nn.GroupNorm), ("frozen_bn", FrozenBatchNorm2d),
                                         (None, nn.BatchNorm2d), ("bn", nn.BatchNorm2d)])
def test_backbone_norm(norm, layer):
    model = tiny(backbone_norm=norm)
    assert isinstance(model.backbone.body.layer2[0].bn1, layer)


def test_backbone_depths_and_frozen_stages():
    model = tiny(backbone="resnet34", trainable_backbone_layers=3)
    assert len(model.backbone.body.layer3) == 6  # ResNet-34
    assert not model.backbone.body.conv1.weight.requires_grad
    assert not any(p.requires_grad for p in model.backbone.body.layer1.parameters())
    assert all(p.requires_grad for p in model.backbone.body.layer2.parameters())
    resnet50 = PanopticFPN(num_classes=11, thing_classes=THINGS, backbone="resnet50", fpn_channels=32)
    assert resnet50.backbone.fpn.inner_blocks[0][0].in_channels == 256  # Bottleneck stages


def resnet18_state(path_seed: int = 7) -> dict:
    torch.manual_seed(path_seed)
    return torchvision.models.resnet18(weights=None).state_dict()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_backbone_weights_from_a_local_file(tmp_path, suffix):
    state = resnet18_state()
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items() if not k.startswith("fc.")}, path)  # fc optional
    else:
        torch.save(state, path)
    model = tiny(backbone_weights=str(path))
    body = model.backbone.body
    assert torch.equal(body.conv1.weight, state["conv1.weight"])
    assert torch.equal(body.layer3[1].bn2.running_var, state["layer3.1.bn2.running_var"])
    assert isinstance(body.bn1, FrozenBatchNorm2d)  # pretrained: torchvision's frozen BatchNorm


def test_backbone_weights_reject_a_missing_or_mismatched_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        tiny(backbone_weights=str(tmp_path / "none.pth"))
    path = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
    with pytest.raises(ValueError, match="not a resnet18 state dict"):
        tiny(backbone_weights=str(path))


def test_backbone_weights_imagenet_use_torchvisions_weights_api(monkeypatch):
    state = resnet18_state()
    asked = []

    def get_state_dict(self, *args, **kwargs):  # stands in for the download
        asked.append(self)
        return state

    monkeypatch.setattr(torchvision.models.ResNet18_Weights, "get_state_dict", get_state_dict)
    model = tiny(backbone_weights="imagenet")
    assert asked == [torchvision.models.ResNet18_Weights.IMAGENET1K_V1]
    assert torch.equal(model.backbone.body.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    with pytest.raises(ValueError, match="backbone_norm 'gn'"):
        tiny(backbone_weights="imagenet", backbone_norm="gn")


def test_bad_inputs_and_keywords_raise_clear_errors():
    model = tiny().eval()
    with pytest.raises(ValueError, match="at least 64 x 64"):
        model(torch.zeros(1, 3, 63, 96))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(torch.zeros(1, 4, 64, 96))
    model.train()
    with pytest.raises(ValueError, match="one target dict per image"):
        model(images())
    with pytest.raises(ValueError, match="lacks \\['semantic'\\]"):
        model(images(), [{k: v for k, v in t.items() if k != "semantic"} for t in targets()])
    for key, value, match in [("backbone", "resnet152", "backbone 'resnet152' is not allowed"),
                              ("backbone_norm", "ln", "backbone_norm 'ln' is not allowed"),
                              ("semantic_features", "p3", "semantic_features 'p3' is not allowed"),
                              ("bootstrap_ratio", 0.0, "bootstrap_ratio"),
                              ("trainable_backbone_layers", 6, "trainable_backbone_layers"),
                              ("thing_classes", (8, 11), "thing_classes")]:
        with pytest.raises(ValueError, match=match):
            tiny(**{key: value})
    with pytest.raises(ValueError, match="imp=False has no semantic output"):
        tiny(semantic_features="none", imp=False)
    with pytest.raises(TypeError, match="unexpected keyword"):
        tiny(backbone_depth=18)


def test_build_model_knows_panoptic_fpn():
    model = build_model("panoptic_fpn", num_classes=11, thing_classes=[8, 9, 10], backbone="resnet18",
                        fpn_channels=32, semantic_features="p2", imp=False)
    assert isinstance(model, PanopticFPN) and model.thing_labels.thing_classes == (8, 9, 10)


def test_top_k_cross_entropy_keeps_the_hardest_share_of_each_image():
    # Logit 0 for the target class and l for class 1: pixel loss = log(1 + e^l), increasing in l.
    l = torch.arange(10, dtype=torch.float32)
    logits = torch.stack([torch.zeros(10), l]).reshape(1, 2, 1, 10)
    target = torch.zeros(1, 1, 10, dtype=torch.int64)
    per_pixel = torch.log1p(torch.exp(l))
    assert float(top_k_cross_entropy(logits, target, 0.1, 255)) == pytest.approx(float(per_pixel[9]))
    assert float(top_k_cross_entropy(logits, target, 0.3, 255)) == pytest.approx(float(per_pixel[7:].mean()))
    target[0, 0, 9] = 255  # ignored: 9 labelled pixels, ceil(0.9) = 1 kept, the hardest labelled one
    assert float(top_k_cross_entropy(logits, target, 0.1, 255)) == pytest.approx(float(per_pixel[8]))
    both = top_k_cross_entropy(torch.cat([logits, logits]), torch.cat([target, torch.full_like(target, 255)]),
                               0.1, 255)
    assert float(both) == pytest.approx(float(per_pixel[8]))  # an unlabelled image adds nothing
    assert float(top_k_cross_entropy(logits, torch.full_like(target, 255), 0.1, 255)) == 0.0


def test_detection_targets_from_a_dataset_items_maps():
    semantic = torch.tensor([[3, 8, 8, 3, 3],
                             [3, 8, 8, 9, 3],
                             [11, 3, 3, 9, 9]])
    instances = torch.tensor([[-1, 4, 4, -1, -1],
                              [-1, 4, 4, 1, -1],
                              [-1, -1, -1, 1, 1]])
    instances_with_stuff = torch.where(semantic == 11, 7, instances)  # an id over void only: no detection
    target = detection_targets(semantic, instances_with_stuff, THINGS)
    assert target["labels"].tolist() == [9, 8]  # increasing instance id: 1, 4
    assert target["boxes"].tolist() == [[3.0, 1.0, 5.0, 3.0], [1.0, 0.0, 3.0, 2.0]]
    assert target["masks"].dtype == torch.uint8
    assert torch.equal(target["masks"][1].bool(), instances == 4)
    model = tiny().train()  # what the model takes
    pad = (0, 59, 0, 61)  # to 64 x 64, the smallest input
    big_semantic = torch.nn.functional.pad(semantic, pad, value=3)
    big_target = detection_targets(big_semantic, torch.nn.functional.pad(instances, pad, value=-1), THINGS)
    losses = model(torch.randn(1, 3, 64, 64), [dict(big_target, semantic=big_semantic)])
    assert math.isfinite(losses["loss_mask"].item())


def test_raw_outputs_feed_both_panoptic_merges():
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    from panoptic_ros.panoptic_merge import fuse_panoptic, merge_panoptic_fpn
    from panoptic_ros.postprocess import ids_from_segment_map

    model = tiny().eval()
    with torch.no_grad():
        out = model(images(1))
    det = out["detections"][0]
    masks = paste_masks_in_image(det["masks"][:, None], det["boxes"], (H, W))[:, 0]
    semantic = torch.nn.functional.interpolate(out["semantic"], size=(H, W), mode="bilinear").argmax(1)[0]
    semantic[:8] = 8  # some car pixels whatever the random head says
    for merge in (merge_panoptic_fpn, fuse_panoptic):
        merged = merge(semantic, masks, det["scores"], det["labels"], CAMVID, score_threshold=0.0)
        ids = [s.id for s in merged.panoptic.segments]
        assert torch.equal(torch.from_numpy(ids_from_segment_map(merged.panoptic.segment_map.numpy(), ids)),
                           merged.panoptic.panoptic)
        assert merged.instances.shape == (H, W) and int(merged.instances.max()) == len(merged.classes) - 1


def test_boxes_decode_in_fp32_under_bf16_autocast():
    """Under bf16 autocast the box regression is bf16; torchvision's decode would round the anchors and proposals
    to it (300.5 -> 300, 301.25 -> 302: a 0.75-pixel box becomes 2 wide; 511 and 513 both become 512, a zero-width
    box). Both box coders must return the reference boxes exactly for zero offsets. With torchvision's own BoxCoder
    this fails (and the first bf16 training step on CamVid gave a NaN ``loss_box_reg``)."""
    model = tiny()
    boxes = torch.tensor([[300.5, 10.25, 301.25, 20.5], [511.0, 3.0, 513.0, 299.0]])
    for coder in (model.rpn.box_coder, model.roi_heads.box_coder):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            decoded = coder.decode(torch.zeros(2, 4, dtype=torch.bfloat16), [boxes])
        assert decoded.dtype == torch.float32
        assert torch.equal(decoded[:, 0], boxes)


def test_boxes_decode_to_the_dtype_of_a_converted_model():
    """A model converted to fp16 (the Predictor's CUDA fp16) pools fp16 features, and ``roi_align`` requires boxes of
    the features' dtype ("input should have the same type as rois"): outside autocast the decoded boxes are in the
    regression's dtype, rounded once from the fp32 decode."""
    model = tiny()
    boxes = torch.tensor([[300.5, 10.25, 301.25, 20.5]], dtype=torch.float16)
    for coder in (model.rpn.box_coder, model.roi_heads.box_coder):
        decoded = coder.decode(torch.zeros(1, 4, dtype=torch.float16), [boxes])
        assert decoded.dtype == torch.float16 and torch.equal(decoded[:, 0], boxes)
        torchvision.ops.roi_align(torch.zeros(1, 2, 8, 8, dtype=torch.float16),
                                  torch.cat([torch.zeros(1, 1, dtype=torch.float16), decoded[:, 0] / 100], 1), (2, 2))
