"""The node's parameters as typed dataclasses (STYLE 6), without ROS.

ROS parameter names are the dotted paths of these fields (``output.overlay``, ``filter.score_threshold``); the
YAML files in ``config/`` nest them under ``/**: ros__parameters:`` (any node name and namespace). Per-class bandwidths are
``bandwidths.<class name>`` (thing classes of the loaded model's table); unset ones come from the weights.
The node validates every set through :func:`node_config_from_parameters`, and lets only the names for which
:func:`is_runtime_parameter` holds change while it is configured.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from .classes import TABLES, ClassTable
from .config import INPUT_SCALES, ConfigError, DetectionPostprocessConfig, PostprocessConfig, _coerce, _require
from .backends import BACKENDS
from .predictor import PRECISIONS

MODES = ("fast", "accuracy")
RELIABILITIES = ("best_effort", "reliable")
TRANSPORTS = ("raw", "compressed")
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
_CAMERA = re.compile(r"^([A-Za-z][A-Za-z0-9_]*(/[A-Za-z][A-Za-z0-9_]*)*)?$")


@dataclass
class InputConfig:
    cameras: tuple[str, ...] = ("",)  # namespaces: "<camera>/image"; "" = the node's own "image"
    transport: str = "raw"  # raw: <camera>/image (sensor_msgs/Image); compressed: <camera>/image/compressed
    reliability: str = "best_effort"  # with keep-last 1: the sensor-data profile
    max_pixels: int = 4096 * 4096  # larger frames are dropped and counted
    bit_depth: int = 0  # significant bits of 16-bit frames (e.g. 12); 0 = detect per camera from the values seen

    def validate(self, where: str) -> None:
        _require(self.bit_depth == 0 or 9 <= self.bit_depth <= 16, where, "bit_depth", self.bit_depth,
                 "0 (detect) or an integer in [9, 16]")
        _require(len(self.cameras) >= 1 and len(set(self.cameras)) == len(self.cameras)
                 and all(isinstance(c, str) and _CAMERA.match(c) for c in self.cameras), where, "cameras",
                 self.cameras, "distinct relative namespaces such as front or sensors/left ('' = none)")
        _require(self.transport in TRANSPORTS, where, "transport", self.transport, f"one of {TRANSPORTS}")
        _require(self.reliability in RELIABILITIES, where, "reliability", self.reliability, f"one of {RELIABILITIES}")
        _require(self.max_pixels >= 64, where, "max_pixels", self.max_pixels, "an integer >= 64")


@dataclass
class OutputConfig:
    # Every output is built only while it has a subscriber.
    semantic: bool = True  # ~/semantic, mono8 class ids
    panoptic: bool = True  # ~/panoptic, panoptic_ros/PanopticSegmentation (16UC1 segment image + segments)
    panoptic_image: bool = True  # ~/panoptic_image, the same 16UC1 segment image alone
    instance: bool = True  # ~/instance, 16UC1: the segment image on thing segments only
    overlay: bool = True  # ~/overlay (rgb8) and ~/overlay/compressed (JPEG)
    camera_info: bool = True  # ~/camera_info, the input's of the same stamp and size
    reliability: str = "reliable"
    overlay_alpha: float = 0.5
    jpeg_quality: int = 80  # ~/overlay/compressed

    def validate(self, where: str) -> None:
        _require(1 <= self.jpeg_quality <= 100, where, "jpeg_quality", self.jpeg_quality, "an integer in [1, 100]")
        _require(self.reliability in RELIABILITIES, where, "reliability", self.reliability, f"one of {RELIABILITIES}")
        _require(0.0 <= self.overlay_alpha <= 1.0, where, "overlay_alpha", self.overlay_alpha, "a number in [0, 1]")


@dataclass
class FilterConfig:
    score_threshold: float = 0.0  # thing segments scoring below become void
    min_area: int = 0  # thing segments with fewer pixels become void
    min_instance_pixels: int = -1  # fast mode's clustering: smallest cluster, at 1/4 resolution; -1 = from the weights
    stuff_min_area: int = -1  # smaller stuff regions become void; -1 = from the weights

    def validate(self, where: str) -> None:
        _require(0.0 <= self.score_threshold <= 1.0, where, "score_threshold", self.score_threshold, "a number in [0, 1]")
        _require(self.min_area >= 0, where, "min_area", self.min_area, "an integer >= 0")
        _require(self.min_instance_pixels == -1 or self.min_instance_pixels >= 1, where, "min_instance_pixels",
                 self.min_instance_pixels, "-1 (from the weights) or an integer >= 1")
        _require(self.stuff_min_area >= -1, where, "stuff_min_area", self.stuff_min_area,
                 "-1 (from the weights) or an integer >= 0")


@dataclass
class DiagnosticsConfig:
    period: float = 1.0  # seconds between DiagnosticArray messages on /diagnostics
    window: int = 100  # frames in the latency percentiles and rates
    expected_rate_hz: float = 0.0  # WARN when the input rate falls below; 0 = off
    max_drop_ratio: float = 0.5  # WARN when more of the last `window` frames are dropped or lost; 0 = off
    stale_after: float = 5.0  # STALE after this many seconds without an image; 0 = off
    min_rate_hz: float = 0.0  # WARN when the output rate falls below; 0 = off
    max_latency_ms: float = 0.0  # WARN when p90 end-to-end latency exceeds; 0 = off

    def validate(self, where: str) -> None:
        _require(0.05 <= self.period <= 60, where, "period", self.period, "seconds in [0.05, 60]")
        _require(self.window >= 2, where, "window", self.window, "an integer >= 2")
        _require(self.expected_rate_hz >= 0, where, "expected_rate_hz", self.expected_rate_hz, "a number >= 0")
        _require(0 <= self.max_drop_ratio <= 1, where, "max_drop_ratio", self.max_drop_ratio, "a number in [0, 1]")
        _require(self.stale_after >= 0, where, "stale_after", self.stale_after, "seconds >= 0")
        _require(self.min_rate_hz >= 0, where, "min_rate_hz", self.min_rate_hz, "a number >= 0")
        _require(self.max_latency_ms >= 0, where, "max_latency_ms", self.max_latency_ms, "a number >= 0")


@dataclass
class NodeConfig:
    mode: str = "fast"  # fast: PanoNet; accuracy: Panoptic-FPN-IMP; must be the mode of the weights' family
    weights: str = ""  # "" = the shipped checkpoint of the mode (the accuracy mode has none yet)
    class_table: str = ""  # "" = the one the weights name; camvid / cityscapes to override (class count must match)
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    precision: str = "fp32"  # fp32, fp16, bf16 (network only)
    backend: str = "auto"  # auto (the fastest for the device), eager, onnxruntime, compile, tensorrt (backends)
    backend_cache_dir: str = ""  # "" = $PANOPTIC_ROS_CACHE or ~/.cache/panoptic_ros
    backend_build_missing: bool = True  # build a missing artefact (logged) on the first frame of a new size
    input_scale: float = 0.0  # the network sees the frame resized by this factor; 0 = the weights' (1.0 if none)
    max_network_width: int = 0  # if > 0, frames wider than this (after input_scale) are scaled down to it
    autostart: bool = True  # configure and activate at start-up; false: wait for lifecycle transitions
    input: InputConfig = field(default_factory=InputConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    bandwidths: dict[str, float] = field(default_factory=dict)  # thing class name -> mean-shift bandwidth

    def validate(self, where: str = "panoptic_node") -> "NodeConfig":
        _require(self.mode in MODES, where, "mode", self.mode, f"one of {MODES}")
        _require(self.class_table in ("", *TABLES), where, "class_table", self.class_table,
                 f"'' (from the weights) or one of {sorted(TABLES)}")
        _require(bool(_DEVICE.match(self.device)), where, "device", self.device, "auto, cpu, cuda or cuda:N")
        _require(self.precision in PRECISIONS, where, "precision", self.precision, f"one of {tuple(PRECISIONS)}")
        _require(self.backend in BACKENDS, where, "backend", self.backend, f"one of {BACKENDS}")
        low, high = INPUT_SCALES
        _require(self.input_scale == 0 or low <= self.input_scale <= high, where, "input_scale", self.input_scale,
                 f"0 (the weights') or a number in [{low:g}, {high:g}]")
        _require(self.max_network_width == 0 or self.max_network_width >= 32, where, "max_network_width",
                 self.max_network_width, "0 (off) or an integer >= 32")
        for name in ("input", "output", "filter", "diagnostics"):
            getattr(self, name).validate(f"{where}.{name}")
        for name, value in self.bandwidths.items():
            _require(value > 0, where, f"bandwidths.{name}", value, "a number > 0")
        return self

    def network_scale(self, width: int, weights_scale: float = 1.0) -> float:
        """Resize factor for a frame ``width`` pixels wide: ``input_scale`` (``weights_scale``, the weights' own,
        where it is 0), capped by ``max_network_width``."""
        scale = self.input_scale or weights_scale
        if self.max_network_width and width * scale > self.max_network_width:
            return self.max_network_width / width
        return scale

    def postprocess(self, weights: PostprocessConfig | DetectionPostprocessConfig,
                    table: ClassTable) -> PostprocessConfig | DetectionPostprocessConfig:
        """The weights' post-processing (either family's) with this node's overrides; unknown or stuff bandwidth
        names are an error, and so are the fast mode's clustering settings on accuracy-mode weights."""
        things = {table[c].name: c for c in table.thing_ids}
        unknown = sorted(set(self.bandwidths) - set(things))
        if unknown:
            raise ConfigError(f"bandwidths.{unknown[0]} is not a thing class of the {table.name!r} table: "
                              f"expected one of {sorted(things)}")
        return weights.with_node_filters({things[name]: value for name, value in self.bandwidths.items()},
                                         self.filter.min_instance_pixels, self.filter.stuff_min_area)


# Changes that take effect on the next frame; everything else needs deactivate, cleanup, configure.
_RUNTIME_PREFIXES = ("filter.", "bandwidths.", "input_scale", "max_network_width", "input.bit_depth",
                     "diagnostics.min_rate_hz", "diagnostics.max_latency_ms", "diagnostics.expected_rate_hz",
                     "diagnostics.max_drop_ratio", "diagnostics.stale_after")
_RUNTIME_OUTPUTS = {f"output.{f.name}" for f in dataclasses.fields(OutputConfig)} - {"output.reliability"}


def is_runtime_parameter(name: str) -> bool:
    return name in _RUNTIME_OUTPUTS or name.startswith(_RUNTIME_PREFIXES)


def flatten(config: NodeConfig) -> dict[str, object]:
    """Dotted parameter names and values of every field (bandwidths as ``bandwidths.<name>``)."""
    out: dict[str, object] = {}

    def walk(obj, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            elif isinstance(value, dict):
                out.update({f"{prefix}{f.name}.{k}": v for k, v in value.items()})
            else:
                out[f"{prefix}{f.name}"] = list(value) if isinstance(value, tuple) else value

    walk(config, "")
    return out


def node_config_from_parameters(values: dict[str, object], where: str = "panoptic_node") -> NodeConfig:
    """A validated :class:`NodeConfig` from dotted parameter names (as ROS gives them); a bad name or value raises
    ``ConfigError`` naming it and what is allowed."""
    nested: dict = {}
    for name, value in values.items():
        *parents, leaf = name.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{where}: parameter {name!r} nests under a value")
        node[leaf] = value
    return _coerce(NodeConfig, nested, where).validate(where)
