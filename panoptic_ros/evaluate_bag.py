"""Replay a bag through the Predictor and score it: PQ / SQ / RQ, mIoU, instance AP, latency per stage.

    python -m panoptic_ros.evaluate_bag [BAG] [--topic /camera/image_raw] [--label-topic T ...]
        [--gt DIR --gt-layout camvid|cityscapes [--gt-split val]] [--out DIR] [--weights W] [--device auto]
        [--limit N] [--output-bag PATH] [--export-cityscapes]
    python -m panoptic_ros.evaluate_bag [BAG] --realtime [--rate 1.0] [--out DIR]   # through a real node process

With no arguments it evaluates the embedded sample bag (5 CamVid val frames with labels) and prints the report.

Every frame of the image topic goes through the same ``Predictor`` as the node, in log-time order, none dropped
(this is an offline replay: it measures accuracy and per-frame latency, not behaviour under load); the first frame
is also predicted once before, untimed, so that the latencies describe the steady state. Ground truth:

* label topics in the bag (``bags`` module docstring: mono8 semantic + 32SC1 / 16UC1 instances, or a
  PanopticSegmentation), matched by header stamp; by default the topics make_bag writes, where the bag has them.
  Semantic labels without instances give thing instances as connected components (the CamVid convention);
* or ``--gt DIR``: a dataset folder (datasets.py layouts), the image named like the frame (the source names
  make_bag records in the bag) or like its header stamp in nanoseconds.

Frames without ground truth are predicted and timed but not scored, and counted by reason. Frames whose ground truth
has another size than the image are not scored either (counted): resizing labels would change the metric silently,
and a size mismatch usually means the frames and labels are not the same images.

Outputs in ``--out``: report.json, report.md, class_iou.png, latency.png (evaluation.write_report); with
``--output-bag`` a bag of the predictions (``/panoptic/semantic`` mono8, ``/panoptic/instances`` 32SC1,
``/panoptic/segmentation`` PanopticSegmentation, ``/panoptic/overlay`` rgb8, stamped like the input) for Foxglove;
with ``--export-cityscapes`` the predictions and ground truth as Cityscapes panoptic sets in ``--out/cityscapes``.

``--realtime`` instead plays the bag at its recorded pace (times ``--rate``) into a real node process with the
project's bag player (``panoptic_ros.ros.replay``): frames the busy node skips are dropped as on a vehicle, and the
report adds end-to-end latency and drop counts.

Ctrl-C (or SIGTERM), and a bag that turns out damaged midway, end the run with a report of the frames processed so
far, marked partial; the exit status is then 130 or 1.
"""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .backends import add_backend_argument
from .bags import BagError, BagReader, BagWriter, Frame
from .classes import ClassTable
from .datasets import DATASETS
from .evaluation import (EvaluationAccumulator, decoder_of, describe_commit, instance_scores, markdown, percentiles,
                         write_report)
from .cityscapes_format import CityscapesPanopticWriter
from .instances import instances_from_semantic
from .make_bag import DEFAULT_LABEL_TOPIC, DEFAULT_TOPIC
from .metrics import panoptic_from_labels, segment_classes
from .postprocess import VOID_ID
from .predictor import DEFAULT_WEIGHTS, Prediction, Predictor
from .transforms import IGNORE_LABEL
from .visualize import render_panoptic

log = logging.getLogger(__name__)

DEFAULT_BAG = Path(__file__).resolve().parent / "data" / "samples" / "camvid_val.mcap"
DEFAULT_LABEL_TOPICS = (f"{DEFAULT_LABEL_TOPIC}/semantic", f"{DEFAULT_LABEL_TOPIC}/instances")
OUTPUT_PREFIX = "/panoptic"
EXIT_INTERRUPTED, EXIT_BAG_ERROR = 130, 1


class NoGroundTruth(Exception):
    """A frame that cannot be scored; the message is the reason the report counts."""


@dataclass
class GroundTruth:
    """semantic [H, W] class ids (``IGNORE_LABEL`` void); panoptic [H, W] int64 ids, message convention; note: how
    the instances were obtained, where that is worth counting."""

    semantic: np.ndarray
    panoptic: np.ndarray
    note: str | None = None


class LabelGroundTruth:
    """Ground truth from the label topics matched to each frame."""

    def __init__(self, table: ClassTable):
        self.table = table

    def __call__(self, frame: Frame) -> GroundTruth:
        return ground_truth_from_labels(frame.labels, self.table)


def ground_truth_from_labels(labels: dict[str, np.ndarray], table: ClassTable) -> GroundTruth:
    """Ground truth from a frame's label images (``Frame.labels``)."""
    if "panoptic" in labels:
        panoptic = labels["panoptic"].astype(np.int64)
        try:
            classes = segment_classes(panoptic, table, "the panoptic label")
        except ValueError as error:
            raise NoGroundTruth(f"panoptic label ids of no class in the {table.name} table") from error
        return GroundTruth(np.where(panoptic == VOID_ID, IGNORE_LABEL, classes).astype(np.uint8), panoptic)
    if "semantic" not in labels:
        raise NoGroundTruth("instance label without a semantic label" if labels else "no label with the frame's stamp")
    semantic, note = labels["semantic"], None
    instances = labels.get("instances")
    if instances is None:
        components, _ = instances_from_semantic(semantic, table.thing_ids)
        instances, note = components - 1, "instances from connected components (no instance label)"
    if instances.shape != semantic.shape:
        raise NoGroundTruth("semantic and instance labels differ in size")
    return GroundTruth(semantic, panoptic_from_labels(semantic, instances, table, IGNORE_LABEL), note)


class DatasetGroundTruth:
    """Labels of a dataset folder (``datasets.DATASETS`` layouts), found by the frame's source name (recorded by
    make_bag) or by its header stamp in nanoseconds as the image's name."""

    def __init__(self, root: Path, layout: str, split: str, frame_names: dict[int, str]):
        self.dataset = DATASETS[layout](root, split)
        self.layout = layout
        self.frame_names = frame_names
        self.files = {}
        for files in self.dataset.pairs:
            self.files[files[0].stem] = files
            self.files[files[0].stem.removesuffix("_leftImg8bit")] = files  # Cityscapes names

    def __call__(self, frame: Frame) -> GroundTruth:
        name = self.frame_names.get(frame.stamp_ns, str(frame.stamp_ns))
        files = self.files.get(name)
        if files is None:
            raise NoGroundTruth(f"no {self.layout} image named like the frame")
        semantic, instances = self.dataset.load_targets(files[1:])
        return GroundTruth(semantic, panoptic_from_labels(semantic, instances, self.dataset.table, IGNORE_LABEL))


class OutputBag:
    """The predictions as a bag for Foxglove: semantic mono8, instances 32SC1 (the label convention, so an output
    bag can serve as labels), PanopticSegmentation and an rgb8 overlay, with the input frame's stamp and log time."""

    def __init__(self, path: Path, table: ClassTable, model: str, prefix: str = OUTPUT_PREFIX, mode: str = "fast"):
        self.bag = BagWriter(path)
        self.table, self.model, self.prefix, self.mode = table, model, prefix, mode

    def write(self, frame: Frame, prediction: Prediction, truth: GroundTruth | None = None) -> None:
        stamp, frame_id, log_time = frame.stamp_ns, frame.frame_id, frame.log_time_ns
        semantic = prediction.semantic.numpy().astype(np.uint8)
        panoptic = prediction.panoptic.numpy()
        latency_ns = round(sum(prediction.timings.values()) * 1e6)
        self.bag.write_image(f"{self.prefix}/semantic", stamp, semantic, "mono8", frame_id, log_time)
        self.bag.write_image(f"{self.prefix}/instances", stamp, prediction.instances.numpy().astype(np.int32), "32SC1",
                             frame_id, log_time)
        self.bag.write_panoptic(f"{self.prefix}/segmentation", stamp, panoptic, prediction.segments, self.table,
                                frame_id, self.model, mode=self.mode, latency_ns=latency_ns, log_time_ns=log_time)
        overlay = render_panoptic(frame.rgb, prediction.semantic.numpy(), panoptic, self.table)
        self.bag.write_image(f"{self.prefix}/overlay", stamp, overlay, "rgb8", frame_id, log_time)

    def close(self) -> None:
        self.bag.close()


class CityscapesExport:
    """Predictions of every frame, and the ground truth of scored frames, as Cityscapes panoptic sets."""

    def __init__(self, out_dir: Path, table: ClassTable, frame_names: dict[int, str]):
        self.predictions = CityscapesPanopticWriter(out_dir, table, "predictions")
        self.ground_truth = CityscapesPanopticWriter(out_dir, table, "ground_truth")
        self.frame_names = frame_names
        self.used: set[str] = set()

    def image_id(self, frame: Frame) -> str:
        name = self.frame_names.get(frame.stamp_ns, str(frame.stamp_ns))
        name = name if name not in self.used else f"{name}_{frame.index}"
        self.used.add(name)
        return name

    def write(self, frame: Frame, prediction: Prediction, truth: GroundTruth | None) -> None:
        image_id = self.image_id(frame)
        self.predictions.add(image_id, prediction.panoptic.numpy(), instance_scores(prediction))
        if truth is not None:
            self.ground_truth.add(image_id, truth.panoptic)

    def close(self) -> None:
        self.predictions.close()
        self.ground_truth.close()


class BagEvaluation:
    """Predicts, scores and writes the outputs of one frame at a time; ``report`` summarises the frames so far."""

    def __init__(self, predictor: Predictor, ground_truth, outputs: list):
        self.predictor = predictor
        self.ground_truth = ground_truth
        self.outputs = outputs
        self.accumulator = EvaluationAccumulator(predictor.table)
        self.predicted = 0
        self.rejected: Counter = Counter()
        self.not_scored: Counter = Counter()
        self.notes: Counter = Counter()
        self.overhead_ms: dict[str, list[float]] = {"bag decode": [], "metrics": [], "outputs": []}
        self.started = time.perf_counter()
        self.warmup_s = 0.0

    def frames(self, frames: Iterator[Frame], limit: int | None) -> Iterator[Frame]:
        """The first ``limit`` (all for None) of ``frames``, recording the time spent reading and decoding each."""
        frames = islice(frames, limit)
        while True:
            start = time.perf_counter()
            frame = next(frames, None)
            if frame is None:
                return
            self.overhead_ms["bag decode"].append((time.perf_counter() - start) * 1e3)
            yield frame

    def process(self, frame: Frame) -> None:
        try:
            if not self.predicted:  # untimed warm-up (lazy initialisation, CUDA context): steady-state latencies
                start = time.perf_counter()
                self.predictor(frame.rgb)
                self.warmup_s += time.perf_counter() - start
            prediction = self.predictor(frame.rgb)
        except ValueError as error:  # the Predictor's own input checks
            self._count(self.rejected, str(error), f"frame {frame.index}")
            return
        self.predicted += 1
        self.accumulator.add_timings(prediction.timings)
        start = time.perf_counter()
        truth = self.score(frame, prediction)
        lap = time.perf_counter()
        for output in self.outputs:
            output.write(frame, prediction, truth)
        self.overhead_ms["metrics"].append((lap - start) * 1e3)
        self.overhead_ms["outputs"].append((time.perf_counter() - lap) * 1e3)

    def score(self, frame: Frame, prediction: Prediction) -> GroundTruth | None:
        try:
            truth = self.ground_truth(frame)
            if truth.semantic.shape != frame.rgb.shape[:2]:
                raise NoGroundTruth("label size differs from the image")
        except NoGroundTruth as reason:
            self._count(self.not_scored, str(reason), f"frame {frame.index} (stamp {frame.stamp_ns})")
            return None
        if truth.note:
            self.notes[truth.note] += 1
        self.accumulator.add(prediction, truth.semantic, truth.panoptic)
        return truth

    def _count(self, counter: Counter, reason: str, what: str) -> None:
        if not counter[reason]:
            log.warning("%s not scored: %s; further ones are only counted", what, reason)
        counter[reason] += 1

    def report(self, reader: BagReader, stopped: str | None) -> dict:
        stats = reader.stats
        frames = {"decoded": len(self.overhead_ms["bag decode"]), "predicted": self.predicted,
                  "scored": self.accumulator.scored, "not decoded": dict(stats.skipped),
                  "rejected by the predictor": dict(self.rejected), "not scored": dict(self.not_scored),
                  "label messages not decoded": dict(stats.labels_skipped),
                  "label messages matching no frame": stats.unmatched_labels, "notes": dict(self.notes)}
        return {
            "partial": stopped is not None,
            "stopped": stopped,
            **self.accumulator.metrics(),
            "latency_ms": self.accumulator.latency(),
            "overhead_ms": {k: percentiles(v) for k, v in self.overhead_ms.items()},
            "wall_s": time.perf_counter() - self.started - self.warmup_s,  # the loop, without the warm-up
            "device": str(self.predictor.device),
            "frames": {k: v for k, v in frames.items() if v != {}},
        }


def resolve_label_topics(reader: BagReader, label_topics: list[str] | None) -> list[str]:
    """The given label topics (checked), or the default ones the bag has."""
    if label_topics is not None:
        return label_topics
    return [t for t in DEFAULT_LABEL_TOPICS if t in reader.topics]


def evaluate_bag(bag: Path, predictor: Predictor, out: Path, topic: str = DEFAULT_TOPIC,
                 label_topics: list[str] | None = None, gt: tuple[Path, str, str] | None = None,
                 limit: int | None = None, output_bag: Path | None = None, export_cityscapes: bool = False,
                 weights: Path | None = None) -> dict:
    """Evaluate ``predictor`` on the frames of ``topic``; writes the report to ``out`` and returns it.

    gt: (dataset folder, layout, split) instead of label topics. Raises ``BagError`` when the bag or topic cannot
    be used at all; a damaged bag or Ctrl-C midway gives a partial report (``report["partial"]``), any other
    error midway a partial report and then the error.
    """
    with BagReader(bag) as reader, ExitStack() as stack:
        names = reader.frame_names
        if gt is not None:
            label_topics, ground_truth = [], DatasetGroundTruth(*gt, names)
        else:
            label_topics, ground_truth = resolve_label_topics(reader, label_topics), LabelGroundTruth(predictor.table)
        frames = reader.frames(topic, label_topics)
        outputs = []
        if output_bag is not None:
            outputs.append(stack.enter_context(closing(OutputBag(output_bag, predictor.table, predictor.name, mode=predictor.mode))))
        if export_cityscapes:
            outputs.append(stack.enter_context(closing(CityscapesExport(out / "cityscapes", predictor.table, names))))
        evaluation = BagEvaluation(predictor, ground_truth, outputs)
        total = min(reader.topics[topic].count, limit or reader.topics[topic].count)
        stopped, failure = None, None
        try:
            for frame in tqdm(evaluation.frames(frames, limit), total=total, desc="evaluate_bag", unit="frame"):
                evaluation.process(frame)
        except KeyboardInterrupt:
            stopped = "interrupted"
        except BagError as error:
            stopped = f"bag error: {error}"
        except Exception as error:  # a bug: keep what was measured, then fail loudly
            stopped, failure = f"error: {type(error).__name__}: {error}", error
        report = evaluation.report(reader, stopped)
    report["run"] = {"bag": str(bag), "topic": topic, "ground truth": _describe_truth(gt, label_topics),
                     "model": predictor.name, "mode": predictor.mode, **decoder_of(predictor),
                     "weights": str(weights or "(in memory)"),
                     "device": str(predictor.device),
                     "commit": describe_commit()}
    write_report(report, title(report), out, evaluation.accumulator.latency_ms)
    if failure is not None:
        raise failure
    return report


def title(report: dict) -> str:
    return f"Bag evaluation: {report['run']['model']} on {Path(report['run']['bag']).name} {report['run']['topic']}"


def _describe_truth(gt: tuple[Path, str, str] | None, label_topics: list[str]) -> str:
    if gt is not None:
        return f"{gt[1]} {gt[2]} labels in {gt[0]}"
    return f"label topics {', '.join(label_topics)}" if label_topics else "none (no label topics)"


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (``timeout``, ``docker stop``) ends the run like Ctrl-C, with a partial report; restored after."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def realtime(opts, parser) -> int:
    """The --realtime mode: ``panoptic_ros.ros.replay`` in its own process (this module stays free of ROS)."""
    unsupported = [flag for flag, used in (("--gt", opts.gt), ("--limit", opts.limit), ("--output-bag", opts.output_bag),
                                           ("--export-cityscapes", opts.export_cityscapes)) if used]
    if unsupported:
        parser.error(f"--realtime scores the node's published results against label topics; {unsupported[0]} is for "
                     f"the offline replay")
    command = [sys.executable, "-m", "panoptic_ros.ros.replay", str(opts.bag), "--topic", opts.topic, "--out",
               str(opts.out), "--rate", str(opts.rate), "--device", opts.device, "--weights", str(opts.weights),
               "--evaluate"] + (["--label-topics", *opts.label_topics] if opts.label_topics else [])
    return subprocess.run(command).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bag", nargs="?", type=Path, default=DEFAULT_BAG, help="bag folder or file (default: sample)")
    parser.add_argument("--topic", default=DEFAULT_TOPIC, help="Image or CompressedImage topic")
    parser.add_argument("--label-topic", action="append", dest="label_topics",
                        help=f"label topic, repeatable (default: {', '.join(DEFAULT_LABEL_TOPICS)} where present)")
    parser.add_argument("--gt", type=Path, help="dataset folder with the ground truth instead of label topics")
    parser.add_argument("--gt-layout", choices=sorted(DATASETS), default="camvid")
    parser.add_argument("--gt-split", default="val")
    parser.add_argument("--out", type=Path, default=Path("bag_evaluation"), help="report folder")
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--device", default="auto")
    add_backend_argument(parser)
    parser.add_argument("--limit", type=int, help="first N frames only")
    parser.add_argument("--output-bag", type=Path, help="write the predictions to this new bag (.mcap, .db3 or folder)")
    parser.add_argument("--export-cityscapes", action="store_true", help="Cityscapes panoptic sets in OUT/cityscapes")
    parser.add_argument("--realtime", action="store_true",
                        help="play the bag at its recorded pace into a real node process instead (drops and latency "
                             "as a vehicle sees them; label topics only): runs panoptic_ros.ros.replay")
    parser.add_argument("--rate", type=float, default=1.0, help="--realtime: speed factor of the recorded pace")
    opts = parser.parse_args(argv)
    if opts.gt is not None and opts.label_topics:
        parser.error("--gt and --label-topic are alternatives")
    if opts.realtime:
        return realtime(opts, parser)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    predictor = Predictor.from_weights(opts.weights, device=opts.device, backend=opts.backend)
    if opts.gt is not None and DATASETS[opts.gt_layout].table.name != predictor.table.name:
        parser.error(f"--gt-layout {opts.gt_layout} labels {DATASETS[opts.gt_layout].table.name} classes, but "
                     f"{opts.weights.name} predicts {predictor.table.name} classes")
    gt = (opts.gt, opts.gt_layout, opts.gt_split) if opts.gt is not None else None
    try:
        with sigterm_as_interrupt():
            report = evaluate_bag(opts.bag, predictor, opts.out, opts.topic, opts.label_topics, gt, opts.limit,
                                  opts.output_bag, opts.export_cityscapes, opts.weights)
    except (BagError, FileNotFoundError, FileExistsError) as error:
        print(f"evaluate_bag: {error}", file=sys.stderr)
        return 2
    print(markdown(report, title(report)))
    print(f"wrote {opts.out}/report.json, report.md and plots")
    if report["partial"]:
        print(f"evaluate_bag: partial report: {report['stopped']}", file=sys.stderr)
        return EXIT_INTERRUPTED if report["stopped"] == "interrupted" else EXIT_BAG_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
