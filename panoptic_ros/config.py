"""Typed configuration: YAML files in config/ load into these dataclasses; a bad key or value is rejected with a
message that names the key, the value and what is allowed."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml


class ConfigError(ValueError):
    pass


@dataclass
class ModelConfig:
    architecture: str = "panonet"
    num_classes: int = 11
    embedding_dim: int = 12
    width: float = 1.0
    depths: tuple[int, int, int, int] = (3, 4, 6, 3)
    share_encoder: bool = False

    def validate(self, where: str) -> None:
        _require(self.num_classes >= 1, where, "num_classes", self.num_classes, "an integer >= 1")
        _require(self.embedding_dim >= 1, where, "embedding_dim", self.embedding_dim, "an integer >= 1")
        _require(0 < self.width <= 4, where, "width", self.width, "a number in (0, 4]")
        _require(len(self.depths) == 4 and all(d >= 1 for d in self.depths), where, "depths", self.depths,
                 "four integers >= 1")

    def kwargs(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "architecture"}


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
    coordinate_epoch: int = 50  # Sec. III-C: epochs before it train without coordinates, from it on with them
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

    def validate(self, where: str) -> None:
        _require(self.epochs >= 1, where, "epochs", self.epochs, "an integer >= 1")
        _require(0 <= self.coordinate_epoch <= self.epochs, where, "coordinate_epoch", self.coordinate_epoch,
                 f"an integer in [0, epochs={self.epochs}]")
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


@dataclass
class ExperimentConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)

    def validate(self) -> "ExperimentConfig":
        for name in ("model", "data", "train", "postprocess"):
            getattr(self, name).validate(name)
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


OPTIMIZERS = ("adadelta", "adam", "adamw", "sgd")


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


def config_from_dict(data: dict, where: str = "config") -> ExperimentConfig:
    return _coerce(ExperimentConfig, data, where).validate()
