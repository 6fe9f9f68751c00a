"""Typed configuration: YAML files in config/ load into these dataclasses; a bad key or value is rejected with a
message that names the key, the value and what is allowed."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .classes import TABLES


INPUT_SCALES = (0.05, 4.0)  # the resize factors of a network input allowed (Predictor, node, weights file)

class ConfigError(ValueError):
    pass


#: PanoNet's instance decoders (issue #13; ``models.panonet.INSTANCE_DECODERS`` builds them).
INSTANCE_DECODERS = ("embedding", "dcme", "bridging")
#: PanoNet's semantic heads (issue #13 item 3; ``models.panonet.SEMANTIC_HEADS`` builds them).
SEMANTIC_HEADS = ("icnet", "fusion")


@dataclass
class ModelConfig:
    """PanoNet (``architecture: panonet``, the fast mode): ``models.PanoNet``'s keywords. ``instance_decoder``
    picks the instance branch's decoder (``embedding``: PanoNet's, the default and what every weights file without
    the key holds; ``dcme``; ``bridging``); ``embedding_dim`` is the embedding decoder's only, ``thing_classes``
    (the dataset's thing class ids, increasing) the bridging decoder's only, empty for the others.
    ``semantic_head`` picks the semantic branch's head: ``icnet`` (PanoNet's ICNet decoder, the default and what
    every weights file without the key holds) or ``fusion`` (the fusion scheme's, ``models.fusion_head``)."""

    architecture: str = "panonet"
    num_classes: int = 11
    embedding_dim: int = 12
    width: float = 1.0
    depths: tuple[int, int, int, int] = (3, 4, 6, 3)
    share_encoder: bool = False
    instance_decoder: str = "embedding"
    thing_classes: tuple[int, ...] = ()
    semantic_head: str = "icnet"

    def validate(self, where: str) -> None:
        _require(self.num_classes >= 1, where, "num_classes", self.num_classes, "an integer >= 1")
        _require(self.embedding_dim >= 1, where, "embedding_dim", self.embedding_dim, "an integer >= 1")
        _require(0 < self.width <= 4, where, "width", self.width, "a number in (0, 4]")
        _require(len(self.depths) == 4 and all(d >= 1 for d in self.depths), where, "depths", self.depths,
                 "four integers >= 1")
        _require(self.instance_decoder in INSTANCE_DECODERS, where, "instance_decoder", self.instance_decoder,
                 f"one of {INSTANCE_DECODERS}")
        _require(self.semantic_head in SEMANTIC_HEADS, where, "semantic_head", self.semantic_head,
                 f"one of {SEMANTIC_HEADS}")
        things = list(self.thing_classes)
        if self.instance_decoder == "bridging":
            _require(bool(things) and things == sorted(set(things)) and things[0] >= 0
                     and things[-1] < self.num_classes, where, "thing_classes", self.thing_classes,
                     f"distinct increasing class ids in [0, {self.num_classes}), at least one, for instance_decoder "
                     f"bridging (4 output channels per thing class)")
        else:
            _require(not things, where, "thing_classes", self.thing_classes,
                     f"[] for instance_decoder {self.instance_decoder} (class-agnostic; only bridging has "
                     f"channels per thing class)")

    def without_instance_decoder(self) -> "ModelConfig":
        """This network with the default instance decoder: what two configs must share for one to start from the
        other's semantic-only weights (``train --init``; the instance decoder is re-initialised there)."""
        default = ModelConfig()
        return dataclasses.replace(self, instance_decoder=default.instance_decoder,
                                   thing_classes=default.thing_classes, embedding_dim=default.embedding_dim)

    def kwargs(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "architecture"}

    def for_loading(self) -> "ModelConfig":
        """The config that rebuilds a saved network (nothing to drop for PanoNet)."""
        return self


# PanopticFPN's choices (models/panoptic_fpn.py checks its keywords against them; config stays free of torch).
BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")
BACKBONE_NORMS = ("frozen_bn", "bn", "gn")
SEMANTIC_FEATURES = ("fpn", "p2", "none")


@dataclass
class PanopticFPNConfig:
    """Panoptic-FPN-IMP (``architecture: panoptic_fpn``, the accuracy mode): ``models.PanopticFPN``'s keywords,
    with ``""`` for "no backbone weights" and -1 for torchvision's trainable-layers rule (YAML has no None).
    ``backbone_norm`` is explicit: it decides the state dict's keys, so a weights file must name it."""

    architecture: str = "panoptic_fpn"
    num_classes: int = 11
    thing_classes: tuple[int, ...] = (8, 9, 10)  # CamVid's car, pedestrian, bicyclist
    backbone: str = "resnet50"
    backbone_norm: str = "bn"
    backbone_weights: str = ""  # "", "imagenet" (downloads once) or the path of a ResNet state dict
    trainable_backbone_layers: int = -1
    fpn_channels: int = 256
    semantic_features: str = "fpn"  # fpn, p2, none (Fig. 3)
    imp: bool = True
    semantic_channels: int = 128
    semantic_convs: int = 4
    bootstrap_ratio: float = 0.10  # top-k% of each image's labelled pixels in the semantic loss (Table 9b)
    semantic_loss_weight: float = 1.0
    box_head_channels: int = 1024
    mask_head_channels: int = 256
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    box_detections_per_img: int = 100
    box_batch_size_per_image: int = 512

    def validate(self, where: str) -> None:
        _require(self.num_classes >= 2, where, "num_classes", self.num_classes, "an integer >= 2")
        things = list(self.thing_classes)
        _require(bool(things) and things == sorted(set(things)) and things[0] >= 0 and things[-1] < self.num_classes,
                 where, "thing_classes", self.thing_classes,
                 f"distinct increasing class ids in [0, {self.num_classes}), at least one")
        _require(self.backbone in BACKBONES, where, "backbone", self.backbone, f"one of {BACKBONES}")
        _require(self.backbone_norm in BACKBONE_NORMS, where, "backbone_norm", self.backbone_norm,
                 f"one of {BACKBONE_NORMS}")
        _require(not (self.backbone_weights and self.backbone_norm == "gn"), where, "backbone_weights",
                 self.backbone_weights, "'' with backbone_norm gn (ResNet weights hold BatchNorm statistics)")
        _require(-1 <= self.trainable_backbone_layers <= 5, where, "trainable_backbone_layers",
                 self.trainable_backbone_layers, "-1 (torchvision's rule) or an integer in [0, 5]")
        _require(self.semantic_features in SEMANTIC_FEATURES, where, "semantic_features", self.semantic_features,
                 f"one of {SEMANTIC_FEATURES}")
        _require(self.imp or self.semantic_features != "none", where, "imp", self.imp,
                 "true with semantic_features none (Mask R-CNN-IMP: the canvas is the semantic output)")
        _require(0 < self.bootstrap_ratio <= 1, where, "bootstrap_ratio", self.bootstrap_ratio, "a share in (0, 1]")
        _require(self.semantic_loss_weight >= 0, where, "semantic_loss_weight", self.semantic_loss_weight,
                 "a number >= 0")
        for key in ("fpn_channels", "semantic_channels", "box_head_channels", "mask_head_channels",
                    "rpn_pre_nms_top_n_train", "rpn_post_nms_top_n_train", "rpn_pre_nms_top_n_test",
                    "rpn_post_nms_top_n_test", "box_detections_per_img", "box_batch_size_per_image"):
            _require(getattr(self, key) >= 1, where, key, getattr(self, key), "an integer >= 1")
        _require(self.semantic_convs >= 0, where, "semantic_convs", self.semantic_convs, "an integer >= 0")
        for key in ("box_score_thresh", "box_nms_thresh"):
            _require(0 <= getattr(self, key) <= 1, where, key, getattr(self, key), "a number in [0, 1]")

    def kwargs(self) -> dict:
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "architecture"}
        out["backbone_weights"] = self.backbone_weights or None
        out["trainable_backbone_layers"] = None if self.trainable_backbone_layers < 0 else self.trainable_backbone_layers
        return out

    def for_loading(self) -> "PanopticFPNConfig":
        """The config that rebuilds a saved network: its parameters come from the file, so no backbone
        initialisation (no download, no path that may be gone)."""
        return dataclasses.replace(self, backbone_weights="")


@dataclass
class DataConfig:
    dataset: str = "camvid"
    root: str = "../shared/datasets/camvid"
    train_split: str = "train"
    val_split: str = "val"
    crop: tuple[int, int] = (352, 480)
    scale: tuple[float, float] = (0.5, 2.0)
    jitter: float = 0.25
    batch_size: int = 8
    workers: int = 1
    preload: bool = True  # decode the training set once into memory (datasets.SegmentationDataset)

    def validate(self, where: str) -> None:
        _require(self.dataset in ("camvid", "cityscapes"), where, "dataset", self.dataset, "camvid or cityscapes")
        _require(len(self.crop) == 2 and min(self.crop) >= 32, where, "crop", self.crop, "[height, width], each >= 32")
        _require(len(self.scale) == 2 and 0 < self.scale[0] <= self.scale[1], where, "scale", self.scale,
                 "[min, max] with 0 < min <= max")
        _require(self.batch_size >= 1, where, "batch_size", self.batch_size, "an integer >= 1")
        _require(self.workers >= 0, where, "workers", self.workers, "an integer >= 0")


@dataclass
class TrainConfig:
    epochs: int = 100
    coordinate_epoch: int = 50  # PanoNet Sec. III-C: epochs before it train without coordinates, from it on with them
    optimizer: str = "adadelta"  # Sec. III-E; adam / adamw / sgd allowed
    lr: float = 0.003
    weight_decay: float = 0.0
    poly_power: float = 0.9
    instance_weight: float = 1.0  # weight of L_inst against L_sem
    class_weighting: bool = False  # ENet-style 1 / ln(1.02 + p_class) weights in the cross-entropy ...
    class_weight_power: float = 1.0  # ... raised to this power (0.5 halves their log-range; 1.0 is ENet's)
    eval_every: int = 1  # validate (and pick best.pt) every this many epochs, and after the last
    seed: int = 0
    semantic_only: bool = False  # Sec. III-C: the semantic pre-training that the instance branch starts from
    # Online bootstrapping of hard pixels (Bridging paper Sec. 2.2, Eq. 1): the cross-entropy keeps the pixels whose
    # true-class probability is below the threshold (1.0: every pixel), and at least the hardest min_kept fraction
    # of each crop's labelled pixels.
    bootstrap_threshold: float = 1.0
    bootstrap_min_kept: float = 0.0
    precision: str = "auto"  # fp32, bf16 (autocast), or auto: bf16 where the device computes it natively
    channels_last: bool = True
    # panoptic_fpn only (IMP paper Sec. 3.3): "detector" trains Mask R-CNN alone (no semantic head, no IMP),
    # "full" the whole model with IMP in the graph, started with --init from the detector run.
    stage: str = "full"
    grad_clip: float = 0.0  # > 0: clip the gradient norm (Mask R-CNN from scratch can spike early); 0 = off
    # Stochastic weight averaging (Izmailov et al., UAI 2018): the last swa_epochs epochs run at the constant rate
    # swa_lr (the poly schedule spans the epochs before them), the weights at the end of each are averaged, and the
    # average, with BatchNorm statistics recomputed over one pass of the training set, is the exported model.
    swa_epochs: int = 0  # 0 = off
    swa_lr: float = 0.0
    # The instance loss follows model.instance_decoder (issue #13): the discriminative loss for embedding (PanoNet
    # Eq. 2-6), decoders.dcme_cascade_loss for dcme, decoders.bridging_cascade_loss for bridging. Their settings:
    dcme_amplitude: float = 4.0  # A of the clipped error gradient f(x) = A (sigmoid(x) - 0.5), DCME paper Eq. 6
    # Bridging paper Sec. 2.2 for the box regression: pixels whose predicted box has IoU >= the threshold with the
    # true box are dropped (1.0: none), keeping at least the min_kept share of each crop's lowest-IoU pixels.
    bridging_bootstrap_threshold: float = 1.0
    bridging_bootstrap_min_kept: float = 0.0

    def validate(self, where: str) -> None:
        _require(self.epochs >= 1, where, "epochs", self.epochs, "an integer >= 1")
        _require(self.optimizer in OPTIMIZERS, where, "optimizer", self.optimizer, f"one of {sorted(OPTIMIZERS)}")
        _require(self.lr > 0, where, "lr", self.lr, "a number > 0")
        _require(self.poly_power >= 0, where, "poly_power", self.poly_power, "a number >= 0")
        _require(self.class_weight_power > 0, where, "class_weight_power", self.class_weight_power, "a number > 0")
        _require(self.eval_every >= 1, where, "eval_every", self.eval_every, "an integer >= 1")
        _require(0 < self.bootstrap_threshold <= 1, where, "bootstrap_threshold", self.bootstrap_threshold,
                 "a number in (0, 1]")
        _require(0 <= self.bootstrap_min_kept <= 1, where, "bootstrap_min_kept", self.bootstrap_min_kept,
                 "a number in [0, 1]")
        _require(self.precision in ("auto", "fp32", "bf16"), where, "precision", self.precision, "auto, fp32 or bf16")
        _require(self.stage in STAGES, where, "stage", self.stage, f"one of {STAGES}")
        _require(self.grad_clip >= 0, where, "grad_clip", self.grad_clip, "a number >= 0 (0 = off)")
        _require(0 <= self.swa_epochs < self.epochs, where, "swa_epochs", self.swa_epochs,
                 f"an integer in [0, epochs = {self.epochs}) (0 = off)")
        _require(self.swa_lr > 0 or self.swa_epochs == 0, where, "swa_lr", self.swa_lr, "a number > 0 with swa_epochs")
        _require(self.dcme_amplitude > 0, where, "dcme_amplitude", self.dcme_amplitude, "a number > 0")
        _require(0 < self.bridging_bootstrap_threshold <= 1, where, "bridging_bootstrap_threshold",
                 self.bridging_bootstrap_threshold, "an IoU in (0, 1]")
        _require(0 <= self.bridging_bootstrap_min_kept <= 1, where, "bridging_bootstrap_min_kept",
                 self.bridging_bootstrap_min_kept, "a number in [0, 1]")


@dataclass
class PostprocessConfig:
    bandwidths: dict[int, float] = field(default_factory=dict)  # per thing class id (Sec. III-D)
    default_bandwidth: float = 0.5
    min_instance_pixels: int = 20
    stuff_min_area: int = 64

    def validate(self, where: str) -> None:
        for k, v in {**self.bandwidths, "default_bandwidth": self.default_bandwidth}.items():
            _require(isinstance(v, (int, float)) and v > 0, where, f"bandwidths.{k}", v, "a number > 0")
        _require(self.min_instance_pixels >= 1, where, "min_instance_pixels", self.min_instance_pixels, "an integer >= 1")
        _require(self.stuff_min_area >= 0, where, "stuff_min_area", self.stuff_min_area, "an integer >= 0")

    def bandwidth(self, class_id: int) -> float:
        return float(self.bandwidths.get(class_id, self.default_bandwidth))

    def bandwidths_for(self, thing_ids) -> dict[int, float]:
        """The bandwidth of each thing class (the node's ``bandwidths.<class>`` parameters)."""
        return {c: self.bandwidth(c) for c in thing_ids}

    def with_node_filters(self, bandwidths: dict[int, float], min_instance_pixels: int,
                          stuff_min_area: int) -> "PostprocessConfig":
        """These settings with the node's overrides (-1: keep this config's value)."""
        return dataclasses.replace(
            self, bandwidths={**self.bandwidths, **bandwidths},
            min_instance_pixels=self.min_instance_pixels if min_instance_pixels < 0 else min_instance_pixels,
            stuff_min_area=self.stuff_min_area if stuff_min_area < 0 else stuff_min_area)


class _VotingPostprocess:
    """What the DCME and Bridging post-processing configs share: instance and stuff size limits, no bandwidths
    (nothing is clustered by mean shift), and the node's overrides."""

    DECODER: typing.ClassVar[str]

    def _validate_sizes(self, where: str) -> None:
        _require(self.min_instance_pixels >= 1, where, "min_instance_pixels", self.min_instance_pixels,
                 "an integer >= 1")
        _require(self.stuff_min_area >= 0, where, "stuff_min_area", self.stuff_min_area, "an integer >= 0")

    def bandwidths_for(self, thing_ids) -> dict[int, float]:
        return {}  # no mean shift, nothing to tune per class

    def with_node_filters(self, bandwidths: dict[int, float], min_instance_pixels: int, stuff_min_area: int):
        """The node's overrides: no bandwidths, the smallest instance and stuff area as for embeddings (-1: keep
        the config's value)."""
        if bandwidths:
            raise ConfigError(f"bandwidths.* = {bandwidths!r} is not allowed: the weights' instance decoder is "
                              f"{self.DECODER}, which has no mean-shift clustering (bandwidths are the embedding "
                              f"decoder's)")
        return dataclasses.replace(
            self, min_instance_pixels=self.min_instance_pixels if min_instance_pixels < 0 else min_instance_pixels,
            stuff_min_area=self.stuff_min_area if stuff_min_area < 0 else stuff_min_area)


@dataclass
class DCMEPostprocessConfig(_VotingPostprocess):
    """PanoNet with ``instance_decoder: dcme`` (``predictor.postprocess_dcme``): ``decoders.decode_dcme``'s vote
    grouping (a centre is a vote peak within ``peak_radius`` cells holding ``min_votes`` votes in its window; a
    vote joins the nearest centre within ``max_distance`` cells), instances of at least ``min_instance_pixels``
    cells at 1/4 resolution, then the panoptic merge as for embeddings (``stuff_min_area``)."""

    DECODER = "dcme"
    peak_radius: int = 2
    min_votes: int = 3
    max_distance: float = 5.0
    min_instance_pixels: int = 20
    stuff_min_area: int = 64

    def validate(self, where: str) -> None:
        _require(self.peak_radius >= 0, where, "peak_radius", self.peak_radius, "an integer >= 0")
        _require(self.min_votes >= 1, where, "min_votes", self.min_votes, "an integer >= 1")
        _require(self.max_distance > 0, where, "max_distance", self.max_distance, "a number of cells > 0")
        self._validate_sizes(where)


@dataclass
class BridgingPostprocessConfig(_VotingPostprocess):
    """PanoNet with ``instance_decoder: bridging`` (``predictor.postprocess_bridging``): ``decoders.decode_bridging``
    (pixel boxes of the ``top_n`` class masks, NMS at ``iou_threshold``, region NMS at ``region_iou_threshold``),
    instances of at least ``min_instance_pixels`` cells at 1/4 resolution, then the panoptic merge as for
    embeddings (``stuff_min_area``)."""

    DECODER = "bridging"
    top_n: int = 1
    iou_threshold: float = 0.5
    region_iou_threshold: float = 0.5
    min_instance_pixels: int = 20
    stuff_min_area: int = 64

    def validate(self, where: str) -> None:
        _require(self.top_n >= 1, where, "top_n", self.top_n, "an integer >= 1")
        for key in ("iou_threshold", "region_iou_threshold"):
            _require(0 <= getattr(self, key) < 1, where, key, getattr(self, key), "an IoU in [0, 1)")
        self._validate_sizes(where)


MERGES = ("panoptic_fpn", "fusion")


@dataclass
class DetectionPostprocessConfig:
    """The accuracy mode's post-processing (``predictor.postprocess_panoptic_fpn``): detections scoring at least
    ``score_threshold``, masks pasted and cut at ``mask_threshold``, merged by ``merge``: ``panoptic_fpn``
    (``panoptic_merge.merge_panoptic_fpn``: by score, dropped above ``overlap_threshold`` of overlap) or
    ``fusion`` (``panoptic_merge.fuse_panoptic``: the semantic map decides, leftovers of at least
    ``min_new_area`` pixels become instances); stuff regions under ``stuff_min_area`` pixels become void."""

    merge: str = "panoptic_fpn"
    score_threshold: float = 0.5
    overlap_threshold: float = 0.5
    mask_threshold: float = 0.5
    stuff_min_area: int = 64
    min_new_area: int = 20

    def validate(self, where: str) -> None:
        _require(self.merge in MERGES, where, "merge", self.merge, f"one of {MERGES}")
        for key in ("score_threshold", "overlap_threshold", "mask_threshold"):
            _require(0 <= getattr(self, key) <= 1, where, key, getattr(self, key), "a number in [0, 1]")
        _require(self.stuff_min_area >= 0, where, "stuff_min_area", self.stuff_min_area, "an integer >= 0")
        _require(self.min_new_area >= 1, where, "min_new_area", self.min_new_area, "an integer >= 1")

    def bandwidths_for(self, thing_ids) -> dict[int, float]:
        return {}  # no clustering, nothing to tune per class

    def with_node_filters(self, bandwidths: dict[int, float], min_instance_pixels: int,
                          stuff_min_area: int) -> "DetectionPostprocessConfig":
        if bandwidths:
            raise ConfigError(f"bandwidths.* = {bandwidths!r} is not allowed: the accuracy mode has no mean-shift "
                              f"clustering (bandwidths are the fast mode's)")
        _require(min_instance_pixels == -1, "filter", "min_instance_pixels", min_instance_pixels,
                 "-1: the smallest cluster is the fast mode's setting; the accuracy mode has no clustering")
        return dataclasses.replace(self, stuff_min_area=self.stuff_min_area if stuff_min_area < 0 else stuff_min_area)


#: Per architecture (a model family): its model config and its post-processing config.
MODEL_CONFIGS = {"panonet": ModelConfig, "panoptic_fpn": PanopticFPNConfig}
POSTPROCESS_CONFIGS = {"panonet": PostprocessConfig, "panoptic_fpn": DetectionPostprocessConfig}
#: PanoNet's post-processing config per ``model.instance_decoder``.
DECODER_POSTPROCESS_CONFIGS = {"embedding": PostprocessConfig, "dcme": DCMEPostprocessConfig,
                               "bridging": BridgingPostprocessConfig}
#: Training settings (``TrainConfig``) of one instance decoder, rejected with another (they would do nothing).
DECODER_TRAIN_KEYS = {"dcme": ("dcme_amplitude",),
                      "bridging": ("bridging_bootstrap_threshold", "bridging_bootstrap_min_kept")}


def postprocess_class(model: "ModelConfig | PanopticFPNConfig | str", where: str = "model") -> type:
    """The post-processing config class of a model config: its family's (``POSTPROCESS_CONFIGS``), for PanoNet
    its instance decoder's (``DECODER_POSTPROCESS_CONFIGS``). A bare architecture name means its default
    decoder."""
    if isinstance(model, str):
        model = MODEL_CONFIGS[model]()
    if isinstance(model, ModelConfig):
        _require(model.instance_decoder in DECODER_POSTPROCESS_CONFIGS, where, "instance_decoder",
                 model.instance_decoder, f"one of {INSTANCE_DECODERS}")
        return DECODER_POSTPROCESS_CONFIGS[model.instance_decoder]
    return POSTPROCESS_CONFIGS[model.architecture]


@dataclass
class ExperimentConfig:
    """An experiment; ``model`` and ``postprocess`` are the classes of ``model.architecture``'s family
    (``MODEL_CONFIGS``, ``POSTPROCESS_CONFIGS``)."""

    model: ModelConfig | PanopticFPNConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    postprocess: (PostprocessConfig | DCMEPostprocessConfig | BridgingPostprocessConfig
                  | DetectionPostprocessConfig) = field(default_factory=PostprocessConfig)

    def validate(self) -> "ExperimentConfig":
        for name in ("model", "data", "train", "postprocess"):
            getattr(self, name).validate(name)
        architecture = self.model.architecture
        expected = postprocess_class(self.model)
        _require(isinstance(self.postprocess, expected), "postprocess", "type", type(self.postprocess).__name__,
                 f"{expected.__name__} for {architecture}")
        decoder = getattr(self.model, "instance_decoder", None)
        defaults = TrainConfig()
        for owner, keys in DECODER_TRAIN_KEYS.items():
            for key in keys:
                _require(owner == decoder or getattr(self.train, key) == getattr(defaults, key), "train", key,
                         getattr(self.train, key), f"its default {getattr(defaults, key)!r}: it is the {owner} "
                         f"decoder's setting and the model's instance decoder is {decoder or architecture}")
        if architecture == "panonet":
            _require(0 <= self.train.coordinate_epoch <= self.train.epochs, "train", "coordinate_epoch",
                     self.train.coordinate_epoch, f"an integer in [0, epochs={self.train.epochs}]")
            _require(self.train.stage == "full", "train", "stage", self.train.stage,
                     "full for panonet (its stages are train.semantic_only and --init)")
            if decoder == "bridging":
                _require(tuple(self.model.thing_classes) == TABLES[self.data.dataset].thing_ids, "model",
                         "thing_classes", self.model.thing_classes,
                         f"the {self.data.dataset} thing classes {TABLES[self.data.dataset].thing_ids}")
        else:
            _require(min(self.data.crop) >= 64, "data", "crop", self.data.crop,
                     "[height, width], each >= 64 for panoptic_fpn (2 x 2 cells of P5)")
            _require(not self.train.semantic_only, "train", "semantic_only", self.train.semantic_only,
                     "false for panoptic_fpn (use train.stage)")
            _require(not self.train.class_weighting, "train", "class_weighting", self.train.class_weighting,
                     "false for panoptic_fpn (its semantic loss is the top-k bootstrapped one, model.bootstrap_ratio)")
            _require(tuple(self.model.thing_classes) == TABLES[self.data.dataset].thing_ids, "model",
                     "thing_classes", self.model.thing_classes,
                     f"the {self.data.dataset} thing classes {TABLES[self.data.dataset].thing_ids}")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


OPTIMIZERS = ("adadelta", "adam", "adamw", "sgd")
STAGES = ("detector", "full")


def _require(ok: bool, where: str, key: str, value, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{where}.{key} = {value!r} is not allowed: expected {allowed}")


def _coerce(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(known)}")
    values = {}
    for key, value in data.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            values[key] = _coerce(hint, value, f"{where}.{key}")
        elif typing.get_origin(hint) is tuple:
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"{where}.{key} = {value!r} is not allowed: expected a list")
            values[key] = tuple(value)
        elif typing.get_origin(hint) is dict:
            if not isinstance(value, dict):
                raise ConfigError(f"{where}.{key} = {value!r} is not allowed: expected a mapping")
            key_type, value_type = typing.get_args(hint)
            try:
                values[key] = {key_type(k): value_type(v) for k, v in value.items()}
            except (TypeError, ValueError):
                raise ConfigError(f"{where}.{key} = {value!r} is not allowed: expected a mapping of "
                                  f"{key_type.__name__} to {value_type.__name__}") from None
        elif hint is float and isinstance(value, int) and not isinstance(value, bool):
            values[key] = float(value)
        else:
            expected = hint if isinstance(hint, type) else None
            if expected is not None and not isinstance(value, expected):
                raise ConfigError(f"{where}.{key} = {value!r} is not allowed: expected {expected.__name__}")
            values[key] = value
    return cls(**values)


def load_config(path: str | Path) -> ExperimentConfig:
    """Load and validate an experiment YAML (sections model, data, train, postprocess; all optional)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"cannot read config {path}: {error}") from None
    return config_from_dict(data, str(path))


def model_config_from_dict(data: dict, where: str = "model") -> ModelConfig | PanopticFPNConfig:
    """The model config of ``data["architecture"]`` (default panonet), e.g. from a weights file's metadata."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")
    architecture = data.get("architecture", "panonet")
    _require(architecture in MODEL_CONFIGS, where, "architecture", architecture, f"one of {sorted(MODEL_CONFIGS)}")
    return _coerce(MODEL_CONFIGS[architecture], data, where)


def postprocess_config_from_dict(data: dict, model: "ModelConfig | PanopticFPNConfig | str",
                                 where: str = "postprocess"):
    """The post-processing config of a model config (``postprocess_class``: its family's, for PanoNet its instance
    decoder's), or of an architecture name with its default decoder."""
    return _coerce(postprocess_class(model), data, where)


def config_from_dict(data: dict, where: str = "config") -> ExperimentConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")
    data = dict(data)
    model = model_config_from_dict(data.pop("model", None) or {}, f"{where}.model")
    postprocess = postprocess_config_from_dict(data.pop("postprocess", None) or {}, model, f"{where}.postprocess")
    config = _coerce(ExperimentConfig, data, where)
    config.model, config.postprocess = model, postprocess
    return config.validate()
