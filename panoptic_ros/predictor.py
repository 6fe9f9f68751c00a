"""The one inference path (STYLE 7): preprocess -> network -> the post-processor of the network's family, no ROS.

A model family (``FAMILIES``, keyed by architecture) is a mode and its post-processor: ``panonet`` (fast: the
instances of its ``instance_decoder``, by class-wise mean-shift of embeddings, DCME vote grouping or Bridging box
voting, then the panoptic merge) and ``panoptic_fpn`` (accuracy: Panoptic-FPN-IMP's semantic logits and
detections, masks pasted, then Panoptic FPN's merge or the fusion scheme). Both produce the same ``Prediction``;
the node, the bag evaluator, the benchmarks and the CLI call the Predictor and never look at the family, so all
of them measure the same code in either mode.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checkpoint import load_model, read_weights
from .classes import TABLES, ClassTable
from .config import (INPUT_SCALES, BridgingPostprocessConfig, DCMEPostprocessConfig, DetectionPostprocessConfig,
                     PostprocessConfig)
from .decoders import decode_bridging, decode_dcme
from .backends import Networks
from .models import ARCHITECTURES, network_input_size
from .models.icnet import bilinear_sources
from .panoptic_merge import merge_detections
from .postprocess import (VOID_ID, InstanceMap, Segment, assign_thing_pixels, cluster_instances, merge_codes,
                          panoptic_codes)
from .transforms import normalize_image

DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "panonet_camvid.safetensors"
#: The weights each mode uses when none are named (the accuracy mode ships none yet: issue #9 item 7).
SHIPPED_WEIGHTS = {"fast": DEFAULT_WEIGHTS}
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class Prediction:
    """Outputs at the input image's resolution. semantic [H, W] class ids, uint8 for tables of up to 255 classes
    (what ``~/semantic`` publishes) else int64; instances [H, W] int64 (-1 where no instance); panoptic [H, W]
    int32 segment ids (``postprocess.VOID_ID`` where none); segments as in msg/Segment.msg, sorted by id;
    segment_map [H, W] int16, index + 1 into ``segments``, 0 where void (what ``~/panoptic`` publishes, as
    16UC1); timings in milliseconds per stage."""

    semantic: Tensor
    instances: Tensor
    panoptic: Tensor
    segments: list[Segment]
    segment_map: Tensor
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class OutputBuffers:
    """CPU tensors [H, W] at the input's resolution that a post-processor writes its final maps into instead of
    new tensors (the node passes views of its reused message buffers, so each output is written once, in its
    final dtype): ``semantic`` in ``class_dtype`` of the table, ``segment_map`` int16. Either may be None; a buffer
    whose device, dtype or shape does not fit is filled by one copy. The ``Prediction``'s fields are then these
    tensors."""

    semantic: Tensor | None = None
    segment_map: Tensor | None = None


def fitting(buffer: Tensor | None, device: torch.device, dtype: torch.dtype, shape) -> Tensor | None:
    """``buffer`` if the maps can be computed into it directly (same device, dtype and shape), else None."""
    if buffer is None or buffer.device != device or buffer.dtype != dtype or tuple(buffer.shape) != tuple(shape) \
            or not buffer.is_contiguous():
        return None
    return buffer


def to_output(tensor: Tensor, buffer: Tensor | None) -> Tensor:
    """``tensor`` as the CPU result: ``buffer`` itself when ``tensor`` was computed into it, else copied into
    ``buffer`` once (one device-to-host copy on CUDA), or ``tensor.cpu()`` without a buffer."""
    if buffer is None:
        return tensor.cpu()
    if tensor.data_ptr() != buffer.data_ptr() or tensor.shape != buffer.shape or tensor.dtype != buffer.dtype:
        buffer.copy_(tensor)
    return buffer


@dataclass
class NetworkOutput:
    """Raw network output for one image: ``outputs``, the network's eval dict for this image (floating tensors in
    float32, on the device): PanoNet ``semantic`` [K, h, w] and ``embedding`` [E, h, w]; PanopticFPN ``semantic``
    [K, h, w] and ``detections`` (``boxes`` [n, 4] in network-input pixels, ``labels`` [n], ``scores`` [n],
    ``masks`` [n, 28, 28]); h, w = 1/4 of the network input, rounded up. ``size`` is the input image's (H, W),
    ``network_size`` the network input's (after ``scale``), ``timings`` the stages so far, ``out`` where the
    post-processor writes its final maps (``OutputBuffers``; None: new tensors)."""

    outputs: dict[str, Any]
    size: tuple[int, int]
    network_size: tuple[int, int]
    timings: dict[str, float]
    out: OutputBuffers | None = None

    @property
    def logits(self) -> Tensor:
        """The semantic logits [K, h, w] (every family has them)."""
        return self.outputs["semantic"]


def class_dtype(classes: int) -> torch.dtype:
    """uint8 class maps for up to 255 classes (255 stays free as a marker), int64 beyond."""
    return torch.uint8 if classes < 256 else torch.int64


def argmax_classes(logits: Tensor) -> Tensor:
    """argmax over dim 0 of [K, H, W] (ties: the first class, as torch.argmax), in ``class_dtype(K)``. A running
    maximum over the K planes reads memory contiguously; torch's reduction over the strided class axis was 20x
    slower on the CPU."""
    best = logits[0].clone()
    index = torch.zeros(logits.shape[1:], dtype=class_dtype(len(logits)), device=logits.device)
    for k in range(1, logits.shape[0]):
        better = logits[k] > best
        best = torch.where(better, logits[k], best)
        index.masked_fill_(better, k)
    return index


def nearest_rows_cols(grid: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """``grid[rows][:, cols]`` of a [h, w] grid: [len(rows), len(cols)]. The columns are gathered as rows of the
    transposed grid and every gather copies whole rows; ``index_select`` along dim 1 of the upsampled rows
    instead was 6-10x slower on the CPU (3.5 vs 0.35-0.55 ms at 1024x512 from 256x128)."""
    return grid.t().contiguous().index_select(0, cols).t().contiguous().index_select(0, rows)


def upsample_argmax(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """[K, h, w] logits -> [H, W] class ids in ``class_dtype(K)``: the argmax over classes of the logits upsampled
    bilinearly to ``size`` (``upsample_labels`` with the cells' own argmax as labels). Equal to
    ``argmax_classes(F.interpolate(...))`` except for classes tied to float rounding."""
    return upsample_labels(logits, argmax_classes(logits), size)


def upsample_labels(logits: Tensor, labels: Tensor, size: tuple[int, int], label_class: Tensor | None = None) -> Tensor:
    """Labels of [h, w] cells brought to [H, W] ``size`` in one upsampling, guided by the bilinearly upsampled
    logits [K, h, w] (``F.interpolate(mode="bilinear", align_corners=False)``).

    ``labels`` [h, w] are codes whose class is ``label_class[label]`` (None: the labels are the classes), with
    ``label_class[labels]`` the argmax of each cell's logits, and codes 0..K-1 the classes themselves (as
    ``postprocess.panoptic_codes`` makes them). Where the (up to) four cells a pixel interpolates share their
    label, the pixel takes it: their logits all peak at its class c, so any convex combination of them does too.
    Elsewhere (about a tenth of a street frame's pixels) the pixel's logits are interpolated and its class c is
    their argmax; it takes the label of the one of its four cells of class c with the largest bilinear weight
    (the nearest; ties: top-left, top-right, bottom-left, bottom-right), or the class code c if none of them has
    class c. So the result's class map is exactly the argmax of the bilinear logits (but for float-rounding
    ties), and an instance code spreads into the pixels of its class around its cells, never into another class.

    Returns ``labels``' dtype [H, W].
    """
    k, h, w = logits.shape
    height, width = size
    right = torch.cat([labels[:, 1:], labels[:, -1:]], 1)  # neighbours, clamped at the edges like the sources
    below = torch.cat([labels[1:], labels[-1:]], 0)
    diagonal = torch.cat([right[1:], right[-1:]], 0)
    mixed = 255 if labels.dtype == torch.uint8 else -1  # never a label (uint8 labels: classes, fewer than 256)
    shared = torch.where((labels == right) & (labels == below) & (labels == diagonal), labels, mixed)
    y0, y1, wy = bilinear_sources(height, h, logits.device)
    x0, x1, wx = bilinear_sources(width, w, logits.device)
    out = nearest_rows_cols(shared, y0, x0)
    ys, xs = torch.nonzero(out == mixed, as_tuple=True)
    if not len(ys):
        return out
    cells = logits.permute(1, 2, 0).contiguous().view(h * w, k)  # one row of K logits per cell: rows gather fast
    top, bottom, left, right_ = y0[ys] * w, y1[ys] * w, x0[xs], x1[xs]
    corners = torch.stack([top + left, top + right_, bottom + left, bottom + right_])  # [4, n] flat cell indices
    tl, tr, bl, br = (cells.index_select(0, c) for c in corners)
    fx, fy = wx[xs, None], wy[ys, None]
    upper, lower = tl + (tr - tl) * fx, bl + (br - bl) * fx
    predicted = (upper + (lower - upper) * fy).argmax(1)
    if label_class is None:
        out[ys, xs] = predicted.to(out.dtype)
        return out
    candidates = labels.reshape(-1)[corners]  # [4, n]
    match = label_class[candidates] == predicted
    fx, fy = wx[xs], wy[ys]
    chosen, best = predicted.to(candidates.dtype), torch.full_like(fx, -1.0)
    for corner, weight in enumerate(((1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx)):
        better = match[corner] & (weight > best)  # a running maximum: argmax over the 4 rows was 5x slower
        best = torch.where(better, weight, best)
        chosen = torch.where(better, candidates[corner], chosen)
    out[ys, xs] = chosen.to(out.dtype)
    return out


def instance_scores(ids: Tensor, confidence: Tensor, count: int) -> list[float]:
    """Mean class confidence of each instance's pixels (ids [h, w], -1 = none), in one pass over the map."""
    has = ids >= 0
    sums = confidence.new_zeros(count).index_add_(0, ids[has], confidence[has])
    return (sums / torch.bincount(ids[has], minlength=count).clamp(min=1)).tolist()


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return resolved


def first_image(outputs):
    """Image 0 of a batch's raw outputs: a tensor [B, ...] -> [...] (float32 when floating), a list -> its first
    item, a dict -> the same for each value (a detection dict's tensors are already one image's: kept whole)."""
    if isinstance(outputs, dict):
        return {k: first_image(v) for k, v in outputs.items()}
    if isinstance(outputs, (list, tuple)):
        return {k: v.float() if v.is_floating_point() else v for k, v in outputs[0].items()}
    return outputs[0].float() if outputs.is_floating_point() else outputs[0]


def lap(timings: dict, stage: str, start: float, device: torch.device) -> float:
    """Record the milliseconds since ``start`` as ``stage`` (after the device's queued work) and return now."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    now = time.perf_counter()
    timings[stage] = (now - start) * 1e3
    return now


def postprocess_panonet(raw: NetworkOutput, table: ClassTable, config: PostprocessConfig) -> Prediction:
    """The fast mode's post-processor: class-wise mean-shift (PanoNet Sec. III-D) at the network's 1/4 resolution,
    then semantic labels and the panoptic merge at the input resolution, every thing pixel in an instance of its
    class (``assign_thing_pixels``). Stages ``clustering`` and ``merge``."""
    logits, embedding = raw.outputs["semantic"], raw.outputs["embedding"]
    timings = dict(raw.timings)
    clock = time.perf_counter()
    probs = logits.softmax(0)
    confidence, coarse_semantic = probs.max(0)
    inst = cluster_instances(embedding, coarse_semantic, config.bandwidths_for(table.thing_ids),
                             config.min_instance_pixels)
    scores = instance_scores(inst.ids, confidence, len(inst.classes))
    clock = lap(timings, "clustering", clock, logits.device)
    return merge_instances(raw, table, inst, scores, confidence, config, timings, clock)


def postprocess_dcme(raw: NetworkOutput, table: ClassTable, config: DCMEPostprocessConfig) -> Prediction:
    """PanoNet with the DCME decoder: the [2, h, w] centre-of-mass vectors (``embedding``) of the argmax thing
    pixels vote for centres and the votes are grouped (``decoders.decode_dcme``, DCME paper Sec. III-IV; the
    instance's class is its pixels' majority semantic class, the departure its docstring explains), scored by
    their pixels' mean class confidence as for embeddings, then the same merge as ``postprocess_panonet``.
    Stages ``clustering`` (the grouping) and ``merge``."""
    logits = raw.outputs["semantic"]
    timings = dict(raw.timings)
    clock = time.perf_counter()
    confidence, coarse_semantic = logits.softmax(0).max(0)
    inst = decode_dcme(raw.outputs["embedding"], coarse_semantic, table.thing_ids, peak_radius=config.peak_radius,
                       min_votes=config.min_votes, max_distance=config.max_distance,
                       min_pixels=config.min_instance_pixels)
    scores = instance_scores(inst.ids, confidence, len(inst.classes))
    clock = lap(timings, "clustering", clock, logits.device)
    return merge_instances(raw, table, inst, scores, confidence, config, timings, clock)


def postprocess_bridging(raw: NetworkOutput, table: ClassTable, config: BridgingPostprocessConfig) -> Prediction:
    """PanoNet with the Bridging decoder: every pixel of a thing class's mask votes the box its [4 T, h, w]
    regression (``embedding``) gives, NMS over the pixel boxes, each kept pixel with those it suppressed is one
    instance scored by its pixels' mean semantic score, then region NMS (``decoders.decode_bridging``, Bridging
    paper Sec. 2.1); then the same merge as ``postprocess_panonet``. Stages ``clustering`` (the voting) and
    ``merge``."""
    logits = raw.outputs["semantic"]
    timings = dict(raw.timings)
    clock = time.perf_counter()
    probs = logits.softmax(0)
    inst = decode_bridging(raw.outputs["embedding"], probs, table.thing_ids, top_n=config.top_n,
                           iou_threshold=config.iou_threshold, region_iou_threshold=config.region_iou_threshold,
                           min_pixels=config.min_instance_pixels)
    clock = lap(timings, "clustering", clock, logits.device)
    return merge_instances(raw, table, inst, inst.scores.tolist(), probs.max(0).values, config, timings, clock)


def merge_instances(raw: NetworkOutput, table: ClassTable, inst: InstanceMap, scores: list[float],
                    confidence: Tensor, config, timings: dict[str, float], clock: float) -> Prediction:
    """What every PanoNet decoder's post-processor ends with: the 1/4-resolution instances ``inst`` (ids [h, w],
    classes [K]) with their ``scores`` [K] and the per-cell class ``confidence`` [h, w], merged at the network's
    1/4 resolution and brought to the input resolution in one upsampling (issue #11 item 4). Stage ``merge``.

    1. Every thing cell joins an instance of its class (``assign_thing_pixels`` on the cells' argmax classes, at
       the cells' own resolution): its own, else one that reaches it within two cells; the rest form new
       instances of at least ``config.min_instance_pixels`` cells, scored by their cells' mean confidence.
    2. Each cell gets its panoptic code (``postprocess.panoptic_codes``: the instance, else the class).
    3. The codes are upsampled once, guided by the bilinear logits (``upsample_labels``): the class map that
       results is exactly the argmax of the bilinearly upsampled logits (what PanoNet's semantic branch
       predicts, Sec. III-B), and every pixel of a thing class that has an instance among its four cells is in
       it.
    4. Areas, boxes, ids and the segment map come from the full-resolution codes (``merge_codes``;
       ``config.stuff_min_area`` in input pixels), the class map and the instance map from two lookups.

    Until commit 8519caf, steps 1-2 ran on the full-resolution class map (assigning each pixel from its nearest
    cell, and growing new instances from full-resolution components); the results differ only in pixels of a
    thing class whose four cells hold none of its instances (void now; they could join an instance two cells
    away before). CamVid val: README "Backends".
    """
    logits = raw.outputs["semantic"]
    height, width = raw.size
    out = raw.out or OutputBuffers()
    device, n_cls = logits.device, len(table)
    coarse = argmax_classes(logits)
    ids, classes = assign_thing_pixels(coarse, inst.ids, inst.classes, table.thing_ids,
                                       min_new_area=config.min_instance_pixels)
    if len(classes) > len(scores):  # new instances from cells of no instance: their cells' mean confidence
        new = torch.where(ids >= len(scores), ids - len(scores), -1)
        scores = scores + instance_scores(new, confidence, len(classes) - len(scores))
    n_inst = len(classes)
    codes = panoptic_codes(coarse, ids, n_cls, n_inst, table.ignore_id).int()  # int32: half the bytes to upsample
    arange = torch.arange(n_cls, device=device)
    void = torch.tensor([table.ignore_id], device=device)
    label_class = torch.cat([arange, classes, void])  # the class of each code
    code = upsample_labels(logits, codes, (height, width), label_class)
    result = merge_codes(code, classes, table, stuff_min_area=config.stuff_min_area, instance_scores=scores,
                         segment_map_out=fitting(out.segment_map, device, torch.int16, (height, width)))
    semantic = fitting(out.semantic, device, class_dtype(n_cls), (height, width))
    semantic = torch.index_select(label_class.to(class_dtype(n_cls)), 0, code.view(-1),
                                  out=None if semantic is None else semantic.view(-1)).view(height, width)
    instance_of_code = torch.cat([arange.new_full((n_cls,), -1), torch.arange(n_inst, device=device),
                                  arange.new_full((1,), -1)])
    instances = torch.index_select(instance_of_code, 0, code.view(-1)).view(height, width)
    lap(timings, "merge", clock, device)
    return Prediction(to_output(semantic, out.semantic), instances.cpu(), result.panoptic.cpu(), result.segments,
                      to_output(result.segment_map, out.segment_map), timings)


def postprocess_panoptic_fpn(raw: NetworkOutput, table: ClassTable, config: DetectionPostprocessConfig) -> Prediction:
    """The accuracy mode's post-processor (Panoptic-FPN-IMP): the stride-4 semantic logits upsampled bilinearly to
    the image (their argmax, ``upsample_argmax``; the logits' grid is cut where the network input ends), the
    detections' 28 x 28 masks pasted into the image at ``config.mask_threshold`` and merged by ``config.merge``
    (``panoptic_merge.merge_detections``: Panoptic FPN's merge or the fusion scheme). The semantic map returned
    is the merged one: instance pixels take their instance's class, so it agrees with the segments. Stages
    ``semantic`` and ``merge`` (pasting and merging)."""
    logits, detections = raw.outputs["semantic"], raw.outputs["detections"]
    timings = dict(raw.timings)
    clock = time.perf_counter()
    (height, width), (net_h, net_w) = raw.size, raw.network_size
    _, h, w = logits.shape
    stride_h, stride_w = 4 * height / net_h, 4 * width / net_w  # image pixels per logit cell
    semantic = upsample_argmax(logits, (round(h * stride_h), round(w * stride_w)))[:height, :width]
    clock = lap(timings, "semantic", clock, logits.device)
    merged = merge_detections(
        semantic, detections["boxes"], detections["masks"], detections["scores"], detections["labels"], table,
        merge=config.merge, box_scale=(width / net_w, height / net_h), score_threshold=config.score_threshold,
        mask_threshold=config.mask_threshold, overlap_threshold=config.overlap_threshold,
        stuff_min_area=config.stuff_min_area, min_new_area=config.min_new_area)
    ids, result = merged.instances, merged.panoptic
    if len(merged.classes):  # instance pixels take their instance's class, as ~/panoptic says (fusion does already)
        semantic = torch.where(ids >= 0, merged.classes[ids.clamp(min=0)], merged.semantic)
    lap(timings, "merge", clock, logits.device)
    out = raw.out or OutputBuffers()
    return Prediction(to_output(semantic.to(class_dtype(len(table))), out.semantic), ids.cpu(), result.panoptic.cpu(),
                      result.segments, to_output(result.segment_map, out.segment_map), timings)


@dataclass(frozen=True)
class Family:
    """A model family: the ``mode`` it serves, its post-processor (``NetworkOutput``, class table, its
    post-processing config -> ``Prediction``), and whether its network exports to one ``torch.export`` graph
    (what the ``onnxruntime`` and ``tensorrt`` backends need)."""

    mode: str
    postprocess: Callable[[NetworkOutput, ClassTable, Any], Prediction]
    exportable: bool
    cpu_precisions: tuple[str, ...] = tuple(PRECISIONS)
    #: (instance decoder, its post-processor) pairs of a family with several (PanoNet's ``instance_decoder``)
    decoders: tuple[tuple[str, Callable[[NetworkOutput, ClassTable, Any], Prediction]], ...] = ()

    def of(self, model: nn.Module) -> "Family":
        """The family as ``model`` needs it: with the post-processor of its instance decoder, where the family has
        several (a network that names none has the first, the default)."""
        if not self.decoders:
            return self
        decoder = getattr(model, "instance_decoder", self.decoders[0][0])
        return dataclasses.replace(self, postprocess=dict(self.decoders)[decoder])


#: PanoNet's post-processor per instance decoder (``model.instance_decoder``, which its weights file records).
PANONET_DECODERS = (("embedding", postprocess_panonet), ("dcme", postprocess_dcme),
                    ("bridging", postprocess_bridging))

#: Per architecture (``models.ARCHITECTURES``, a weights file's ``model.architecture``).
FAMILIES = {
    "panonet": Family("fast", postprocess_panonet, exportable=True, decoders=PANONET_DECODERS),
    # torchvision's RPN, NMS and RoI heads make data-dependent shapes: no single exported graph (eager only).
    # torchvision's CPU NMS has no fp16 / bf16 kernel: fp32 on the CPU, any precision on CUDA.
    "panoptic_fpn": Family("accuracy", postprocess_panoptic_fpn, exportable=False, cpu_precisions=("fp32",)),
}


def mode_of_weights(path: str | Path) -> str:
    """``fast`` or ``accuracy``: the mode of a weights file's family (raises ``WeightsError`` as ``load_model``)."""
    return FAMILIES[read_weights(path)[1].architecture].mode


def family_of(model: nn.Module) -> tuple[str, Family]:
    """The architecture name and family of a network instance (with its instance decoder's post-processor)."""
    for name, cls in ARCHITECTURES.items():
        if isinstance(model, cls):
            return name, FAMILIES[name].of(model)
    raise ValueError(f"{type(model).__name__} is not one of the architectures {sorted(ARCHITECTURES)}")


class Predictor:
    """Panoptic segmentation of RGB images, in the mode of the network's family (``FAMILIES``).

    Args:
        model: a network of ``models.ARCHITECTURES`` (eval mode is set here): PanoNet (fast) or PanopticFPN
            (accuracy).
        table: the class table the model was trained on.
        postprocess: the family's post-processing config: ``PostprocessConfig`` (bandwidth per thing class,
            minimum instance size, minimum stuff area, Sec. III-D) or ``DetectionPostprocessConfig`` (merge and its
            thresholds).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        precision: ``fp32``, ``fp16`` or ``bf16`` for the network (clustering stays fp32).
        scale: the network sees the image resized by this factor (outputs are returned at the input size).
        backend: where the network runs (``backends``): ``auto`` (the default: the fastest for the device and
            precision, by ``backends.resolve_backend``'s rule), ``eager``, ``compile``, ``onnxruntime`` or
            ``tensorrt`` (the accuracy family runs eager only: ``auto`` picks eager for it, the others raise
            ``BackendError``). An exported backend builds a missing artefact on the first frame of a size, with a
            message, unless ``build_missing`` is False; ``python -m panoptic_ros.export`` builds it beforehand.
        cache_dir: the backend's artefacts (default ``backends.default_cache_dir()``).
        build_missing: build a missing or stale artefact (with a message) instead of raising ``BackendError``.
    """

    def __init__(self, model: nn.Module, table: ClassTable, postprocess: PostprocessConfig, device: str = "auto",
                 precision: str = "fp32", scale: float = 1.0, name: str = "panonet", backend: str = "auto",
                 cache_dir: str | Path | None = None, build_missing: bool = True, weights: str = ""):
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r} is not allowed: expected one of {sorted(PRECISIONS)}")
        low, high = INPUT_SCALES
        if not low <= scale <= high:
            raise ValueError(f"scale {scale!r} is not allowed: expected a number in [{low:g}, {high:g}]")
        self.architecture, self.family = family_of(model)
        self.device = resolve_device(device)
        self.dtype = PRECISIONS[precision]
        self.model = model.to(self.device, self.dtype).eval()
        self.table = table
        self.postprocess = postprocess
        self.scale = scale
        self.name = name
        self.precision = precision
        self._backend = (backend, cache_dir, build_missing, weights)
        self.network = self._networks()

    def _networks(self) -> Networks:
        backend, cache_dir, build_missing, weights = self._backend
        return Networks(self.model, backend, self.device, self.precision, cache_dir, build_missing, weights,
                        exportable=self.family.exportable)

    @property
    def mode(self) -> str:
        """``fast`` or ``accuracy``: the mode of the network's family."""
        return self.family.mode

    @property
    def instance_decoder(self) -> str:
        """PanoNet's instance decoder (``embedding``, ``dcme``, ``bridging``); ``""`` for a family without one."""
        return getattr(self.model, "instance_decoder", "")

    @property
    def backend(self) -> str:
        """The backend the network runs on (``auto`` resolved)."""
        return self.network.backend

    @classmethod
    def from_weights(cls, path: str | Path = DEFAULT_WEIGHTS, scale: float | None = None, **kwargs) -> "Predictor":
        """Build from a weights file (the shipped CamVid PanoNet by default) of either family, at ``scale`` or, if
        None, the file's ``input_scale`` (1.0 where it names none); raises ``WeightsError`` for a missing or
        mismatched file."""
        model, model_cfg, post_cfg, info = load_model(path)
        kwargs["scale"] = float(info.get("input_scale", 1.0)) if scale is None else scale
        table = TABLES[info.get("dataset") or "camvid"]
        if len(table) != model_cfg.num_classes:
            raise ValueError(f"{path}: {model_cfg.num_classes} classes, but the {table.name} table has {len(table)}")
        return cls(model, table, post_cfg, name=Path(path).stem, weights=str(path), **kwargs)

    @property
    def bandwidths(self) -> dict[int, float]:
        """Mean-shift bandwidth per thing class (fast mode); empty for a family without clustering."""
        return self.postprocess.bandwidths_for(self.table.thing_ids)

    def __call__(self, rgb: np.ndarray, scale: float | None = None, out: OutputBuffers | None = None) -> Prediction:
        """rgb: uint8 [H, W, 3] image; ``scale`` overrides the configured one for this image; ``out``: buffers the
        final semantic and segment maps are written into (``OutputBuffers``)."""
        raw = self.run_network(rgb, scale)
        raw.out = out
        return self.postprocess_output(raw)

    def to(self, device: str) -> "Predictor":
        """Move the network to ``device`` (``auto``, ``cpu``, ``cuda:N``); moving to the CPU frees its GPU memory."""
        self.device = resolve_device(device)
        self.model.to(self.device)
        if self.device.type == "cpu" and torch.cuda.is_available():
            torch.cuda.empty_cache()
        self._check_precision()
        self.network = self._networks()
        return self

    def _check_precision(self) -> None:
        if self.device.type == "cpu" and self.precision not in self.family.cpu_precisions:
            raise ValueError(f"precision {self.precision!r} on the CPU is not allowed for the {self.mode} mode's "
                             f"{self.architecture}: expected one of {self.family.cpu_precisions} there (torchvision's "
                             f"CPU NMS has no half-precision kernel); other precisions run on CUDA")

    def network_size(self, height: int, width: int, scale: float | None = None) -> tuple[int, int]:
        """The network's input (height, width) for a ``height`` x ``width`` image at ``scale`` (the configured one
        if None): ``models.network_input_size`` (PanoNet's sides are multiples of 32, so a 480 x 360 frame runs at
        480 x 352)."""
        return network_input_size(self.model, height, width, self.scale if scale is None else scale)

    @torch.inference_mode()
    def run_network(self, rgb: np.ndarray, scale: float | None = None) -> NetworkOutput:
        """Preprocess and run the network; outputs stay at the network's resolution (``NetworkOutput``)."""
        self._check_precision()
        least = self.model.min_input_size
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or min(rgb.shape[:2]) < least:
            raise ValueError(f"expected a uint8 RGB image [H, W, 3] of at least {least} x {least} (the network's "
                             f"smallest input), got {rgb.dtype} {rgb.shape}")
        timings: dict[str, float] = {}
        clock = time.perf_counter()
        height, width = rgb.shape[:2]
        scale = self.scale if scale is None else scale
        images = normalize_image(rgb, self.device)[None]  # uploaded as uint8, normalised on the device
        size = self.network_size(height, width, scale)
        if size != (height, width):  # resized there too (antialiased when the scale shrinks it)
            images = F.interpolate(images, size, mode="bilinear", align_corners=False, antialias=scale < 1)
        images = images.to(self.dtype)
        clock = lap(timings, "preprocess", clock, self.device)
        outputs = first_image(self.network(images))
        lap(timings, "model", clock, self.device)
        return NetworkOutput(outputs, (height, width), tuple(images.shape[-2:]), timings)

    @torch.inference_mode()
    def postprocess_output(self, raw: NetworkOutput, postprocess=None) -> Prediction:
        """The family's post-processor on ``raw``; ``postprocess`` overrides the configured settings (e.g. the
        bandwidth search's candidates)."""
        return self.family.postprocess(raw, self.table, self.postprocess if postprocess is None else postprocess)


def filter_prediction(prediction: Prediction, score_threshold: float = 0.0, min_area: int = 0) -> Prediction:
    """Drop thing segments scoring below ``score_threshold`` or smaller than ``min_area`` pixels: their pixels
    become void in ``panoptic`` and ``segment_map`` (whose indices follow the segments kept) and -1 in
    ``instances`` (stuff segments are kept)."""
    keep = [not (s.is_thing and (s.score < score_threshold or s.area < min_area)) for s in prediction.segments]
    if all(keep):
        return prediction
    removed = [s.id for s, kept in zip(prediction.segments, keep) if not kept]
    gone = torch.isin(prediction.panoptic, torch.tensor(removed, dtype=prediction.panoptic.dtype))
    kept = torch.tensor([False, *keep])
    new_index = torch.where(kept, kept.cumsum(0), 0).to(torch.int16)  # old index + 1 -> new index + 1, or 0
    return Prediction(prediction.semantic, prediction.instances.masked_fill(gone, -1),
                      prediction.panoptic.masked_fill(gone, VOID_ID),
                      [s for s, k in zip(prediction.segments, keep) if k],
                      new_index[prediction.segment_map.long()], prediction.timings)
