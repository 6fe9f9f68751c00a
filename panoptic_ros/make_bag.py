"""Build a replay bag from image files or a dataset split, with ground-truth label topics for evaluate_bag.

    python -m panoptic_ros.make_bag IMAGES_DIR_OR_FILES... --out BAG [--labels DIR] [--rate HZ] [--encoding E]
        [--topic /camera/image_raw] [--label-topic /camera/labels] [--frame-id camera] [--storage mcap|sqlite3]
    python -m panoptic_ros.make_bag --dataset camvid|cityscapes --root DIR --split val [--limit N] --out BAG ...

Frame k gets header stamp and log time ``start + k / rate``. Topics written:

* ``--topic``: ``sensor_msgs/Image`` in ``--encoding`` (any camera encoding of ``images.RGB_ENCODINGS``), or
  ``sensor_msgs/CompressedImage`` for ``jpeg`` / ``png``;
* ``camera_info`` next to it: ``sensor_msgs/CameraInfo`` of the image size, uncalibrated (matrices zero);
* ``<label-topic>/semantic``: Image ``mono8``, class ids of the dataset's table, 255 void;
  ``<label-topic>/instances``: Image ``32SC1``, instance index within the image, -1 where none
  (the label convention of ``panoptic_ros.bags``; panoptic ground truth is ``metrics.panoptic_from_labels`` of the
  two, as in the dataset evaluation).

With ``--labels DIR`` the labels are CamVid label maps (8-bit class ids, 11 void) named like the image (``NAME.png``
or ``NAME_label.png``), turned into semantic + instance maps by ``datasets.camvid_targets`` (instances are connected
components). Images without a label map are written without labels. The bag's ``custom_data`` records each frame's
source name by stamp (``bags.FRAME_NAMES_KEY``), which ``evaluate_bag --gt`` uses to find dataset labels.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .bags import FRAME_NAMES_KEY, STORAGES, BagWriter
from .datasets import DATASETS, camvid_targets, read_label, read_rgb
from .evaluation import dataset_items
from .images import COMPRESSED_FORMATS, RGB_ENCODINGS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm")
DEFAULT_TOPIC = "/camera/image_raw"
DEFAULT_LABEL_TOPIC = "/camera/labels"


@dataclass
class Item:
    """One frame to write: rgb uint8 [H, W, 3]; semantic [H, W] uint8 (255 void) and instances [H, W] int32
    (-1 none), or None without labels."""

    name: str
    rgb: np.ndarray
    semantic: np.ndarray | None = None
    instances: np.ndarray | None = None


@dataclass
class BagLayout:
    """Topics, encoding, timing and storage of a replay bag."""

    topic: str = DEFAULT_TOPIC
    label_topic: str = DEFAULT_LABEL_TOPIC
    encoding: str = "rgb8"
    frame_id: str = "camera"
    rate: float = 10.0
    start: float = 1.0  # seconds; stamp 0 reads as "unset" to many ROS tools
    storage: str | None = None  # from the suffix of --out (.mcap, .db3), else mcap

    def __post_init__(self):
        if self.encoding not in (*RGB_ENCODINGS, *COMPRESSED_FORMATS):
            raise ValueError(f"encoding {self.encoding!r} is not allowed: expected one of "
                             f"{', '.join((*RGB_ENCODINGS, *COMPRESSED_FORMATS))}")
        if not self.rate > 0:
            raise ValueError(f"rate {self.rate!r} is not allowed: expected frames per second > 0")

    def stamp(self, k: int) -> int:
        return round(self.start * 1e9 + k * 1e9 / self.rate)

    @property
    def camera_info_topic(self) -> str:
        return f"{self.topic.rsplit('/', 1)[0]}/camera_info"


def image_files(paths: list[Path]) -> list[Path]:
    """Image files of ``paths``: a folder gives its images sorted by name, a file itself."""
    files = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"no image or folder at {path}")
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, paths))}")
    return files


def label_file(labels: Path, name: str) -> Path | None:
    for candidate in (labels / f"{name}.png", labels / f"{name}_label.png"):
        if candidate.is_file():
            return candidate
    return None


def folder_items(files: list[Path], labels: Path | None = None) -> Iterator[Item]:
    """Items of image files, with CamVid labels from ``labels`` where a label map of the same name exists."""
    for path in files:
        rgb = read_rgb(path)
        found = label_file(labels, path.stem) if labels else None
        if found is None:
            yield Item(path.stem, rgb)
            continue
        label = read_label(found)
        if label.shape != rgb.shape[:2]:
            raise ValueError(f"label {found} is {label.shape[1]} x {label.shape[0]}, image {path} is "
                             f"{rgb.shape[1]} x {rgb.shape[0]}")
        yield Item(path.stem, rgb, *camvid_targets(label))


def dataset_bag_items(dataset, limit: int | None = None) -> Iterator[Item]:
    for name, rgb, semantic, instances in dataset_items(dataset, limit):
        yield Item(name, rgb, semantic.astype(np.uint8), instances.astype(np.int32))


def write_bag(items: Iterator[Item], out: Path, layout: BagLayout, total: int | None = None) -> dict:
    """Write the items to a new bag at ``out``; returns counts and the bag's size."""
    names: dict[int, str] = {}
    labelled = 0
    with BagWriter(out, layout.storage) as bag:
        for k, item in enumerate(tqdm(items, total=total, desc="make_bag", unit="frame")):
            stamp = layout.stamp(k)
            if layout.encoding in COMPRESSED_FORMATS:
                bag.write_compressed(layout.topic, stamp, item.rgb, layout.encoding, layout.frame_id)
            else:
                bag.write_image(layout.topic, stamp, item.rgb, layout.encoding, layout.frame_id)
            bag.write_camera_info(layout.camera_info_topic, stamp, item.rgb.shape[1], item.rgb.shape[0], layout.frame_id)
            if item.semantic is not None:
                bag.write_image(f"{layout.label_topic}/semantic", stamp, item.semantic, "mono8", layout.frame_id)
                bag.write_image(f"{layout.label_topic}/instances", stamp, item.instances, "32SC1", layout.frame_id)
                labelled += 1
            names[stamp] = item.name
        bag.set_custom_data(FRAME_NAMES_KEY, json.dumps(names))
    size = sum(p.stat().st_size for p in out.rglob("*")) if out.is_dir() else out.stat().st_size
    return {"bag": str(out), "frames": len(names), "labelled": labelled, "bytes": size, "topics": dict(bag.counts)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("images", nargs="*", type=Path, help="image folders or files (not with --dataset)")
    parser.add_argument("--out", type=Path, required=True, help="new bag: NAME.mcap, NAME.db3 or a folder")
    parser.add_argument("--labels", type=Path, help="folder of CamVid label maps named like the images")
    parser.add_argument("--dataset", choices=sorted(DATASETS), help="take images and labels from a dataset split")
    parser.add_argument("--root", type=Path, help="dataset folder (with --dataset)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--limit", type=int, help="first N images only")
    parser.add_argument("--rate", type=float, default=BagLayout.rate, help="frames per second of the stamps")
    parser.add_argument("--start", type=float, default=BagLayout.start, help="stamp of the first frame, seconds")
    parser.add_argument("--encoding", default=BagLayout.encoding, help="camera encoding, or jpeg / png")
    parser.add_argument("--topic", default=DEFAULT_TOPIC)
    parser.add_argument("--label-topic", default=DEFAULT_LABEL_TOPIC, help="namespace of the label topics")
    parser.add_argument("--frame-id", default=BagLayout.frame_id)
    parser.add_argument("--storage", choices=sorted(STORAGES), help="default: from the --out suffix, else mcap")
    opts = parser.parse_args(argv)
    if bool(opts.dataset) == bool(opts.images):
        parser.error("give image folders or files, or --dataset with --root (not both)")
    if opts.dataset and opts.root is None:
        parser.error("--dataset needs --root")
    try:
        layout = BagLayout(opts.topic, opts.label_topic, opts.encoding, opts.frame_id, opts.rate, opts.start, opts.storage)
    except ValueError as error:
        parser.error(str(error))
    if opts.dataset:
        dataset = DATASETS[opts.dataset](opts.root, opts.split)
        items, total = dataset_bag_items(dataset, opts.limit), min(len(dataset), opts.limit or len(dataset))
    else:
        files = image_files(opts.images)[:opts.limit]
        items, total = folder_items(files, opts.labels), len(files)
    summary = write_bag(items, opts.out, layout, total)
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
