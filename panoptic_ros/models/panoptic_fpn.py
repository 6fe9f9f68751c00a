"""Accuracy mode: Mask R-CNN with a semantic FPN head and Instance Mask Projection (IMP paper,
../shared/papers/imp-panoptic-fpn-imp.txt, Sec. 3.1-3.3, Fig. 3, Fig. 4).

The detector is torchvision's: a ResNet with an FPN (P2-P5 plus the P6 max-pool level), its RPN and its RoI heads
(box head, box predictor, mask head, mask predictor; 28 x 28 masks). The semantic side is the paper's:

* ``semantic_features="fpn"`` (Fig. 4, Fig. 3d): P3, P4, P5 go through 1, 2, 3 stages of conv3x3(128) +
  GroupNorm + ReLU + 2x bilinear upsampling to 1/4; P2 goes through a conv3x3 to 128; the four are summed.
* ``semantic_features="p2"`` (Fig. 3b, 3c): P2 alone through a conv3x3 to 128, and no GroupNorm in the head
  ("does not use group norm", Sec. 3.2).
* ``imp=True`` concatenates the IMP canvas (Sec. 3.1, Algorithm 1: one plane per thing class at 1/4, each
  detection's mask probabilities times its score, ``panoptic_ros.ops.project_instance_masks``) to those features;
  then 4 conv3x3 (GroupNorm and ReLU; no GroupNorm for "p2") and a conv1x1 give the class logits.
* ``semantic_features="none"`` with ``imp=True`` is Mask R-CNN-IMP (Fig. 3a): the canvas is the semantic output,
  with no learned parameters.

``VARIANTS`` maps the paper's model names to these two keywords.

Departures from the paper, each said where it happens: images are padded (not resized) to a multiple of 32
inside the model; in training, the detections that IMP projects come from the first ``rpn_post_nms_top_n_test``
proposals (the RPN's best), run through the box and mask heads as at inference; hard-pixel bootstrapping keeps a
fixed share of each image's labelled pixels (Table 9b; Panoptic FPN's "top-k%"), not a probability threshold.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import maskrcnn_inference
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from ..config import BACKBONE_NORMS, BACKBONES, SEMANTIC_FEATURES
from ..ops import project_instance_masks

#: The model names of Fig. 3 and Fig. 4 and the keyword arguments that build them.
VARIANTS = {
    "mask_rcnn_imp": {"semantic_features": "none", "imp": True},
    "panoptic_p2": {"semantic_features": "p2", "imp": False},
    "panoptic_p2_imp": {"semantic_features": "p2", "imp": True},
    "panoptic_fpn": {"semantic_features": "fpn", "imp": False},
    "panoptic_fpn_imp": {"semantic_features": "fpn", "imp": True},
}

#: Mask R-CNN-IMP's level for the stuff planes of its semantic output: a thing wins where its canvas exceeds it.
MASK_THRESHOLD = 0.5

_FPN_LEVELS = ("0", "1", "2", "3")  # P2..P5 in the FPN's output dict ("pool" is P6)


@dataclass(frozen=True)
class ThingLabels:
    """The mapping between dataset class ids (stuff and things, e.g. CamVid's 0..10) and detector labels.

    The detector numbers the thing classes 1..T in increasing dataset id (0 is its background); the IMP canvas
    plane of detector label l is l - 1.
    """

    thing_classes: tuple[int, ...]
    num_classes: int

    def __post_init__(self):
        things = tuple(int(c) for c in self.thing_classes)
        if not things or list(things) != sorted(set(things)) or things[0] < 0 or things[-1] >= self.num_classes:
            raise ValueError(f"thing_classes {list(self.thing_classes)!r} is not allowed: expected distinct "
                             f"increasing class ids in [0, {self.num_classes}) (num_classes), at least one")
        object.__setattr__(self, "thing_classes", things)

    def __len__(self) -> int:
        return len(self.thing_classes)

    def to_detector(self, class_ids: Tensor) -> Tensor:
        """[N] dataset thing class ids -> [N] int64 detector labels 1..T. Raises ``ValueError`` for any other id."""
        lut = torch.zeros(self.num_classes, dtype=torch.int64, device=class_ids.device)
        lut[list(self.thing_classes)] = torch.arange(1, len(self) + 1, device=class_ids.device)
        ids = class_ids.long()
        valid = (ids >= 0) & (ids < self.num_classes)
        labels = lut[ids.clamp(0, self.num_classes - 1)]
        if not bool((valid & (labels > 0)).all()):
            raise ValueError(f"class ids {ids.tolist()} must all be thing classes {list(self.thing_classes)}")
        return labels

    def to_dataset(self, labels: Tensor) -> Tensor:
        """[N] detector labels 1..T -> [N] int64 dataset class ids. Raises ``ValueError`` for 0 or labels > T."""
        labels = labels.long()
        if labels.numel() and not bool(((labels >= 1) & (labels <= len(self))).all()):
            raise ValueError(f"detector labels {labels.tolist()} must be in 1..{len(self)}")
        return torch.tensor(self.thing_classes, dtype=torch.int64, device=labels.device)[labels - 1]


def top_k_cross_entropy(logits: Tensor, target: Tensor, ratio: float, ignore_index: int) -> Tensor:
    """Cross-entropy over the hardest ``ratio`` of each image's labelled pixels (hard-pixel bootstrapping, IMP
    paper Table 9b: 10% is best), averaged over the pixels kept in the batch.

    Each image keeps its ``ceil(ratio * labelled)`` pixels of highest loss (ties at the cut kept).
    ``losses.bootstrapped_pixels`` is the threshold rule of the Bridging paper, hence this separate function.

    Args:
        logits: [B, K, H, W]; target: [B, H, W] int64 class ids, ``ignore_index`` for unlabelled pixels.
    Returns:
        scalar tensor, 0 (in the graph) when no pixel is labelled.
    """
    loss = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none").flatten(1)  # [B, HW]
    valid = (target != ignore_index).flatten(1)
    need = torch.ceil(valid.sum(1).double() * ratio - 1e-9).long()  # [B]; 1e-9: 30 * 0.1 is 3.0000000000000004
    ranked = torch.where(valid, loss.detach(), -math.inf).sort(1, descending=True).values
    cut = ranked.gather(1, (need - 1).clamp(min=0)[:, None])  # the need-th largest loss of each image
    keep = valid & (loss.detach() >= cut) & (need[:, None] > 0)
    return (loss * keep).sum() / keep.sum().clamp(min=1)


def _group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups (Wu and He), fewer when ``channels`` is not a multiple of 32."""
    return nn.GroupNorm(math.gcd(32, channels), channels)


def _conv3x3(in_channels: int, out_channels: int, norm: bool) -> list[nn.Module]:
    layers = [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=not norm)]
    return layers + ([_group_norm(out_channels)] if norm else []) + [nn.ReLU(inplace=True)]


class SemanticFPN(nn.Module):
    """Fig. 4's semantic segmentation module: {P2..P5} -> [B, C, H/4, W/4].

    P3, P4, P5 pass 1, 2, 3 upsampling stages (conv3x3 + GroupNorm + ReLU + 2x bilinear), P2 a plain conv3x3
    (as the paper writes it; Panoptic FPN also normalises and activates P2); the four are summed.
    """

    def __init__(self, in_channels: int, channels: int = 128):
        super().__init__()
        self.p2 = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.upsample = nn.ModuleList(
            nn.Sequential(*[m for s in range(stages) for m in (
                *_conv3x3(in_channels if s == 0 else channels, channels, norm=True),
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))])
            for stages in (1, 2, 3))

    def forward(self, levels: Sequence[Tensor]) -> Tensor:
        out = self.p2(levels[0])
        for stage, level in zip(self.upsample, levels[1:]):
            out = out + stage(level)
        return out


class SemanticP2(nn.Module):
    """Fig. 3b/3c: P2 alone through a conv3x3 -> [B, C, H/4, W/4]."""

    def __init__(self, in_channels: int, channels: int = 128):
        super().__init__()
        self.p2 = nn.Conv2d(in_channels, channels, 3, padding=1)

    def forward(self, levels: Sequence[Tensor]) -> Tensor:
        return self.p2(levels[0])


class SemanticPredictor(nn.Module):
    """Fig. 4's prediction head: ``convs`` x (conv3x3 + [GroupNorm] + ReLU), then a conv1x1 to class logits."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 128, convs: int = 4, norm: bool = True):
        super().__init__()
        self.convs = nn.Sequential(*[m for i in range(convs)
                                     for m in _conv3x3(in_channels if i == 0 else channels, channels, norm)])
        self.logits = nn.Conv2d(channels if convs else in_channels, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.logits(self.convs(x))


class PanopticFPN(nn.Module):
    """Mask R-CNN + semantic head + IMP (Fig. 3, Fig. 4), from flat keyword arguments.

    Args:
        num_classes: dataset classes (stuff and things), the semantic logits' channels.
        thing_classes: the dataset ids of the thing classes, the detector's classes (``ThingLabels``).
        backbone: ``resnet18`` / ``resnet34`` / ``resnet50`` / ``resnet101``.
        backbone_norm: ``frozen_bn``, ``bn`` or ``gn`` (GroupNorm); default: torchvision's rule, frozen
            BatchNorm with pretrained weights and BatchNorm without.
        backbone_weights: ``None`` (random init), ``"imagenet"`` (torchvision's ``ResNet*_Weights.IMAGENET1K_V1``:
            downloaded to the torch hub cache on first use) or the path of a ResNet state dict (``.safetensors``
            or a ``torch.save`` file; ``fc.*`` keys are optional).
        trainable_backbone_layers: 0-5 ResNet stages that train, counted from the top (torchvision's rule);
            default 3 with pretrained weights, 5 without.
        fpn_channels: FPN width (256 in the paper).
        semantic_features: ``fpn``, ``p2`` or ``none`` (see the module docstring); ``none`` needs ``imp``.
        imp: concatenate the IMP canvas (Sec. 3.1) to the semantic features.
        semantic_channels, semantic_convs: width (128) and depth (4) of the semantic head.
        bootstrap_ratio: share of each image's labelled pixels in the semantic loss (Table 9b: 0.10).
        semantic_loss_weight: weight of the semantic loss next to Mask R-CNN's.
        ignore_index: unlabelled pixels in the semantic target.
        box_head_channels, mask_head_channels: widths of torchvision's box head (1024) and mask head (256).
        rpn_*, box_*: torchvision ``MaskRCNN``'s keywords of the same names.

    ``forward(images, targets=None)``: images [B, 3, H, W], ImageNet-normalised, H and W at least
    ``min_input_size``. In training, one target dict per image: ``boxes`` [n, 4] float (x1, y1, x2, y2) in image
    pixels, ``labels`` [n] int64 dataset (thing) class ids, ``masks`` [n, H, W] uint8/bool, ``semantic`` [H, W]
    int64 class ids. Returns the dict of losses (torchvision's ``loss_classifier``, ``loss_box_reg``,
    ``loss_mask``, ``loss_objectness``, ``loss_rpn_box_reg``, and ``loss_semantic`` unless the variant has no
    learned semantic head or ``detector_only``: the first stage of Sec. 3.3, Mask R-CNN alone, no IMP). In eval, a dict of raw outputs:

    * ``semantic``: [B, K, ceil(H/4), ceil(W/4)] class logits at stride ``output_stride`` = 4 of the input
      (Mask R-CNN-IMP: the canvas in the thing planes and ``MASK_THRESHOLD`` in the stuff planes);
    * ``detections``: per image a dict with ``boxes`` [n, 4] float (image pixels), ``labels`` [n] int64 dataset
      class ids, ``scores`` [n] float, ``masks`` [n, 28, 28] float mask probabilities of the box (paste them
      with ``torchvision.models.detection.roi_heads.paste_masks_in_image``);
    * ``imp_canvas`` (IMP variants): [B, T, ceil(H/4), ceil(W/4)], one plane per thing class in ``thing_classes``
      order.
    """

    output_stride = 4
    min_input_size = 64  # P5 of 2 x 2: BatchNorm needs more than one value per channel in training
    _size_divisor = 32  # P5's stride: padded inputs keep every FPN level an exact 2x of the next
    input_divisor = 1  # any input size: the network pads to _size_divisor itself

    def __init__(self, num_classes: int, thing_classes: Sequence[int], backbone: str = "resnet50",
                 backbone_norm: str | None = None, backbone_weights: str | None = None,
                 trainable_backbone_layers: int | None = None, fpn_channels: int = 256,
                 semantic_features: str = "fpn", imp: bool = True, semantic_channels: int = 128,
                 semantic_convs: int = 4, bootstrap_ratio: float = 0.10, semantic_loss_weight: float = 1.0,
                 ignore_index: int = 255, box_head_channels: int = 1024, mask_head_channels: int = 256,
                 rpn_pre_nms_top_n_train: int = 2000, rpn_post_nms_top_n_train: int = 2000,
                 rpn_pre_nms_top_n_test: int = 1000, rpn_post_nms_top_n_test: int = 1000,
                 box_score_thresh: float = 0.05, box_nms_thresh: float = 0.5, box_detections_per_img: int = 100,
                 box_batch_size_per_image: int = 512):
        super().__init__()
        _check_choice("backbone", backbone, BACKBONES)
        _check_choice("semantic_features", semantic_features, SEMANTIC_FEATURES)
        if backbone_norm is not None:
            _check_choice("backbone_norm", backbone_norm, BACKBONE_NORMS)
        if semantic_features == "none" and not imp:
            raise ValueError("semantic_features='none' with imp=False has no semantic output: use imp=True "
                             "(Mask R-CNN-IMP) or semantic_features 'fpn' / 'p2'")
        if not 0.0 < bootstrap_ratio <= 1.0:
            raise ValueError(f"bootstrap_ratio {bootstrap_ratio!r} is not allowed: expected a share in (0, 1]")
        pretrained = backbone_weights is not None
        norm = backbone_norm or ("frozen_bn" if pretrained else "bn")
        layers = (3 if pretrained else 5) if trainable_backbone_layers is None else trainable_backbone_layers
        if not 0 <= layers <= 5:
            raise ValueError(f"trainable_backbone_layers {layers!r} is not allowed: expected 0..5")
        self.thing_labels = ThingLabels(tuple(thing_classes), num_classes)
        self.num_classes = num_classes
        self.semantic_features = semantic_features
        self.imp = bool(imp)
        self.bootstrap_ratio = bootstrap_ratio
        self.semantic_loss_weight = semantic_loss_weight
        self.ignore_index = ignore_index
        self.imp_proposals = rpn_post_nms_top_n_test  # the RPN's best proposals, sorted by objectness

        self.backbone = build_backbone(backbone, norm, backbone_weights, layers, fpn_channels)
        self.rpn, self.roi_heads = _detector_heads(
            self.backbone, len(self.thing_labels) + 1, box_head_channels, mask_head_channels,
            rpn_pre_nms_top_n_train=rpn_pre_nms_top_n_train, rpn_post_nms_top_n_train=rpn_post_nms_top_n_train,
            rpn_pre_nms_top_n_test=rpn_pre_nms_top_n_test, rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
            box_score_thresh=box_score_thresh, box_nms_thresh=box_nms_thresh,
            box_detections_per_img=box_detections_per_img, box_batch_size_per_image=box_batch_size_per_image)
        if semantic_features == "none":
            self.semantic = None
            self.predictor = None
        else:
            module = SemanticFPN if semantic_features == "fpn" else SemanticP2
            self.semantic = module(fpn_channels, semantic_channels)
            extra = len(self.thing_labels) if self.imp else 0
            self.predictor = SemanticPredictor(semantic_channels + extra, num_classes, semantic_channels,
                                               semantic_convs, norm=semantic_features == "fpn")

    def forward(self, images: Tensor, targets: Sequence[dict[str, Tensor]] | None = None,
                detector_only: bool = False) -> dict:
        self._check_inputs(images, targets)
        height, width = images.shape[-2:]
        padded = _pad_to_multiple(images, self._size_divisor)
        sizes = [(height, width)] * len(images)
        features = self.backbone(padded)
        detector_targets = None if targets is None else [self._detector_target(t) for t in targets]
        proposals, losses = self.rpn(ImageList(padded, sizes), features, detector_targets)
        if self.training:
            losses.update(self.roi_heads(features, proposals, sizes, detector_targets)[1])
            if self.predictor is None or detector_only:  # Mask R-CNN-IMP: nothing to learn beyond the detector
                return losses
            proposals = [p[:self.imp_proposals] for p in proposals]
        detections = self.detect(features, proposals, sizes) if self.imp or not self.training else None
        canvas = self.project(detections, padded.shape[-2:]) if self.imp else None
        logits = self.semantic_logits(features, canvas)
        if self.training:
            semantic = torch.stack([t["semantic"] for t in targets])
            full = F.interpolate(logits, scale_factor=self.output_stride, mode="bilinear", align_corners=False)
            losses["loss_semantic"] = self.semantic_loss_weight * top_k_cross_entropy(
                full[..., :height, :width], semantic, self.bootstrap_ratio, self.ignore_index)
            return losses
        stride = self.output_stride
        crop = (slice(None), slice(None), slice(0, -(-height // stride)), slice(0, -(-width // stride)))
        out = {"semantic": logits[crop], "detections": [
            {"boxes": d["boxes"], "labels": self.thing_labels.to_dataset(d["labels"]), "scores": d["scores"],
             "masks": d["masks"]} for d in detections]}
        if canvas is not None:
            out["imp_canvas"] = canvas[crop]
        return out

    def detect(self, features: dict[str, Tensor], proposals: list[Tensor],
               sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """torchvision's RoI heads at inference (box head, ``postprocess_detections``, mask head on the detected
        boxes), also in training, where IMP needs them: gradients reach the mask and class logits through the
        detections' ``masks`` [n, 28, 28] and ``scores`` [n] (``labels`` are detector labels 1..T)."""
        heads = self.roi_heads
        box_features = heads.box_head(heads.box_roi_pool(features, proposals, sizes))
        class_logits, box_regression = heads.box_predictor(box_features)
        boxes, scores, labels = heads.postprocess_detections(class_logits, box_regression, proposals, sizes)
        mask_logits = heads.mask_predictor(heads.mask_head(heads.mask_roi_pool(features, boxes, sizes)))
        masks = maskrcnn_inference(mask_logits, labels)
        return [{"boxes": b, "labels": lab, "scores": s, "masks": m[:, 0]}
                for b, lab, s, m in zip(boxes, labels, scores, masks)]

    def project(self, detections: list[dict[str, Tensor]], size: tuple[int, int]) -> Tensor:
        """IMP (Sec. 3.1, Algorithm 1) of each image's detections: [B, T, h, w] at 1/4 of ``size`` (the padded
        input), plane l - 1 for detector label l, ``box_scale=0.25``."""
        h, w = size[0] // self.output_stride, size[1] // self.output_stride
        return torch.stack([project_instance_masks(
            masks=d["masks"], scores=d["scores"].to(d["masks"].dtype), classes=d["labels"] - 1, boxes=d["boxes"],
            canvas_size=(len(self.thing_labels), h, w), box_scale=1.0 / self.output_stride) for d in detections])

    def semantic_logits(self, features: dict[str, Tensor], canvas: Tensor | None) -> Tensor:
        """[B, K, h, w] at 1/4 of the padded input: Fig. 4's head, or Mask R-CNN-IMP's canvas (Fig. 3a)."""
        if self.predictor is None:
            b, _, h, w = canvas.shape
            logits = canvas.new_full((b, self.num_classes, h, w), MASK_THRESHOLD)
            logits[:, list(self.thing_labels.thing_classes)] = canvas
            return logits
        x = self.semantic([features[k] for k in _FPN_LEVELS])
        if canvas is not None:
            x = torch.cat([x, canvas.to(x.dtype)], 1)
        return self.predictor(x)

    def _detector_target(self, target: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"boxes": target["boxes"], "labels": self.thing_labels.to_detector(target["labels"]),
                "masks": target["masks"]}

    def _check_inputs(self, images: Tensor, targets) -> None:
        if images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(f"images must be a float tensor [B, 3, H, W], got {images.dtype} "
                             f"{tuple(images.shape)}")
        if min(images.shape[-2:]) < self.min_input_size:
            raise ValueError(f"images of {images.shape[-2]} x {images.shape[-1]} are too small: PanopticFPN "
                             f"needs at least {self.min_input_size} x {self.min_input_size} (2 x 2 cells of P5)")
        if self.training:
            if targets is None or len(targets) != len(images):
                raise ValueError(f"training needs one target dict per image ({len(images)}), got "
                                 f"{'none' if targets is None else len(targets)}")
            need = ("boxes", "labels", "masks") + (("semantic",) if self.predictor is not None else ())
            for i, t in enumerate(targets):
                missing = [k for k in need if k not in t]
                if missing:
                    raise ValueError(f"target {i} lacks {missing}; expected keys {list(need)}")
                if "semantic" in t and tuple(t["semantic"].shape) != tuple(images.shape[-2:]):
                    raise ValueError(f"target {i}: semantic is {tuple(t['semantic'].shape)}, expected the "
                                     f"image's {tuple(images.shape[-2:])}")


def detection_targets(semantic: Tensor, instances: Tensor, thing_classes: Sequence[int]) -> dict[str, Tensor]:
    """The detector part of a ``PanopticFPN`` training target from a dataset item's maps (``datasets``: semantic
    [H, W] class ids, instances [H, W] instance ids, ``NO_INSTANCE`` = -1 elsewhere).

    One detection per instance id present with at least one pixel of a thing class: ``masks`` [n, H, W] uint8 (the
    id's pixels), ``labels`` [n] int64 (the most frequent thing class among them; ties: the lower id) and
    ``boxes`` [n, 4] float32, the tight box ``(x1, y1, x2 + 1, y2 + 1)`` (pixel (i, j) covers [j, j+1) x [i, i+1),
    the ``project_instance_masks`` convention). Detections are in increasing instance id.
    """
    things = torch.as_tensor(list(thing_classes), dtype=torch.int64, device=semantic.device)
    ids = torch.unique(instances[instances >= 0])
    masks = instances[None] == ids[:, None, None]  # [n, H, W]
    num = int(max(int(semantic.max()), int(things.max()))) + 1 if semantic.numel() else int(things.max()) + 1
    thing_pixel = masks & torch.isin(semantic, things)[None]
    votes = torch.zeros(len(ids), num, dtype=torch.int64, device=semantic.device)
    votes.scatter_add_(1, semantic.clamp(min=0).flatten().expand(len(ids), -1), thing_pixel.flatten(1).long())
    keep = votes.sum(1) > 0
    masks, votes = masks[keep], votes[keep]
    rows, cols = masks.any(2), masks.any(1)  # [n, H], [n, W]
    h, w = semantic.shape

    def span(hit: Tensor, size: int) -> tuple[Tensor, Tensor]:
        return hit.int().argmax(1), size - hit.flip(1).int().argmax(1)

    (y1, y2), (x1, x2) = span(rows, h), span(cols, w)
    return {"boxes": torch.stack([x1, y1, x2, y2], 1).float(), "labels": votes.argmax(1),
            "masks": masks.to(torch.uint8)}


def build_backbone(name: str, norm: str, weights: str | None, trainable_layers: int,
                   fpn_channels: int) -> BackboneWithFPN:
    """ResNet ``name`` with ``norm`` layers, initialised from ``weights``, as a 4-level FPN plus the P6 max-pool
    level (torchvision's ``resnet_fpn_backbone`` with a free FPN width); stages below the top
    ``trainable_layers`` are frozen, as torchvision does."""
    norm_layer = {"frozen_bn": FrozenBatchNorm2d, "bn": nn.BatchNorm2d, "gn": _group_norm}[norm]
    resnet = getattr(torchvision.models, name)(weights=None, norm_layer=norm_layer)
    if weights is not None:
        if norm == "gn":
            raise ValueError(f"backbone_weights {weights!r} with backbone_norm 'gn' is not allowed: ResNet "
                             f"weights are BatchNorm statistics; use backbone_norm 'frozen_bn' or 'bn'")
        _load_resnet(resnet, name, weights)
    train = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers] + (["bn1"] if trainable_layers == 5
                                                                                   else [])
    for param_name, param in resnet.named_parameters():
        if not any(param_name.startswith(prefix) for prefix in train):
            param.requires_grad_(False)
    stage2 = resnet.inplanes // 8  # 64 (BasicBlock) or 256 (Bottleneck)
    return BackboneWithFPN(resnet, {f"layer{i}": str(i - 1) for i in range(1, 5)},
                           [stage2 * 2 ** i for i in range(4)], fpn_channels, extra_blocks=LastLevelMaxPool())


def _load_resnet(resnet: nn.Module, name: str, weights: str) -> None:
    if weights == "imagenet":
        enum = getattr(torchvision.models, f"ResNet{name[len('resnet'):]}_Weights")
        state = enum.IMAGENET1K_V1.get_state_dict(progress=True, check_hash=True)
        source = f"torchvision {enum.__name__}.IMAGENET1K_V1"
    else:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"backbone_weights {weights!r}: no such file (expected 'imagenet' or the path "
                                    f"of a {name} state dict)")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        source = str(path)
    result = resnet.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("fc.")]
    if missing or result.unexpected_keys:
        raise ValueError(f"backbone_weights {source}: not a {name} state dict (missing {missing[:5]}, unexpected "
                         f"{result.unexpected_keys[:5]})")


def _detector_heads(backbone: nn.Module, num_labels: int, box_head_channels: int, mask_head_channels: int,
                    **kwargs) -> tuple[nn.Module, nn.Module]:
    """torchvision ``MaskRCNN``'s RPN and RoI heads for ``num_labels`` (background included); its image
    transform is not used (the model pads instead of resizing)."""
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

    channels = backbone.out_channels
    detector = MaskRCNN(
        backbone, num_classes=None,
        box_head=TwoMLPHead(channels * 7 * 7, box_head_channels),
        box_predictor=FastRCNNPredictor(box_head_channels, num_labels),
        mask_head=MaskRCNNHeads(channels, (mask_head_channels,) * 4, 1),
        mask_predictor=MaskRCNNPredictor(mask_head_channels, mask_head_channels, num_labels), **kwargs)
    detector.rpn.box_coder = Float32BoxCoder(detector.rpn.box_coder.weights)
    detector.roi_heads.box_coder = Float32BoxCoder(detector.roi_heads.box_coder.weights)
    return detector.rpn, detector.roi_heads


class Float32BoxCoder(BoxCoder):
    """torchvision's ``BoxCoder`` decoding in fp32 whatever the dtype of the regression. Under bf16 autocast the
    regression is bf16, and torchvision's decode casts the anchors and proposals to it: 8 significant bits, so
    coordinates in steps of 2 pixels from x = 256 (4 from 512). With that, the first bf16 training step on CamVid
    had a NaN ``loss_box_reg`` (fp32: 0.060); decoding in fp32 gives 0.060 in bf16 too. The boxes stay fp32 under
    autocast (``roi_align`` autocasts to fp32); a model converted to fp16 / bf16 (the Predictor's CUDA precisions)
    gets them back in its dtype, which ``roi_align`` requires of boxes and features alike."""

    def decode(self, rel_codes: Tensor, boxes: list[Tensor]) -> Tensor:
        decoded = super().decode(rel_codes.float(), [b.float() for b in boxes])
        return decoded if torch.is_autocast_enabled(rel_codes.device.type) else decoded.to(rel_codes.dtype)


def _pad_to_multiple(images: Tensor, multiple: int) -> Tensor:
    """Zero-pad [B, C, H, W] on the right and bottom to multiples of ``multiple``."""
    h, w = images.shape[-2:]
    return F.pad(images, (0, -w % multiple, 0, -h % multiple))


def _check_choice(key: str, value, allowed: Sequence) -> None:
    if value not in allowed:
        raise ValueError(f"{key} {value!r} is not allowed: expected one of {list(allowed)}")


__all__ = ["BACKBONES", "BACKBONE_NORMS", "MASK_THRESHOLD", "PanopticFPN", "SEMANTIC_FEATURES", "SemanticFPN",
           "SemanticP2", "SemanticPredictor", "ThingLabels", "VARIANTS", "build_backbone", "detection_targets",
           "top_k_cross_entropy"]
