"""Training and evaluation datasets in their own folder layouts: CamVid (SegNet copy) and Cityscapes (gtFine).

Each item is a dict: ``image`` float32 [3, H, W] (normalised), ``semantic`` int64 [H, W] (class ids,
``IGNORE_LABEL`` for void), ``instances`` int64 [H, W] (0..K-1 per image, ``NO_INSTANCE`` elsewhere),
``coordinates`` float32 [2, H, W] (the CoordConv x, y of each pixel in full-image terms, PanoNet Sec. III-A),
``name``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from .classes import CAMVID, CITYSCAPES, ClassTable
from .instances import instances_from_semantic
from .transforms import IGNORE_LABEL, NO_INSTANCE, coordinate_map, normalize_image, normalized_centres


def read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"cannot read image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_label(path: Path) -> np.ndarray:
    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if label is None:
        raise FileNotFoundError(f"cannot read label map {path}")
    return label


def camvid_targets(label: np.ndarray, min_instance_area: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Training targets from a CamVid label map: semantic (void -> ``IGNORE_LABEL``) and instances, the connected
    components of each thing class (0..K-1, ``NO_INSTANCE`` elsewhere)."""
    label = label.astype(np.int64)
    instance_map, _ = instances_from_semantic(label, CAMVID.thing_ids, min_instance_area)
    semantic = np.where(label == CAMVID.ignore_id, IGNORE_LABEL, label).astype(np.uint8)
    return semantic, instance_map.astype(np.int32) - 1  # 0 (none) becomes NO_INSTANCE


class SegmentationDataset(Dataset):
    """Pairs of files plus a per-dataset way to turn the label files into semantic and instance maps.

    ``preload`` decodes every sample once, at construction (CamVid train: 367 x 480 x 360 RGB + labels, about
    320 MB), so that training epochs spend no time in PNG decoding and connected components; DataLoader workers
    started by fork share the decoded arrays.
    """

    table: ClassTable

    def __init__(self, pairs: list[tuple[Path, ...]], augment: Callable | None = None, preload: bool = False):
        if not pairs:
            raise ValueError(f"{type(self).__name__}: no samples found")
        self.pairs = pairs
        self.augment = augment
        self._decoded = None
        if preload:
            self._decoded = [self.decode(i) for i in range(len(pairs))]

    def __len__(self) -> int:
        return len(self.pairs)

    def load_targets(self, files: tuple[Path, ...]) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def decode(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rgb uint8 [H, W, 3], semantic uint8 [H, W], instances int32 [H, W]) of sample ``index``, without
        augmentation (from memory when preloaded)."""
        if self._decoded is not None:
            return self._decoded[index]
        files = self.pairs[index]
        rgb = read_rgb(files[0])
        semantic, instances = self.load_targets(files[1:])
        if semantic.shape != rgb.shape[:2]:
            raise ValueError(f"{files[0].name}: label {semantic.shape} and image {rgb.shape[:2]} differ in size")
        return rgb, semantic, instances

    def __getitem__(self, index: int) -> dict:
        rgb, semantic, instances = self.decode(index)
        if self.augment is not None:
            rgb, semantic, instances, coordinates = self.augment(rgb, semantic, instances)
        else:
            h, w = semantic.shape
            coordinates = coordinate_map(normalized_centres(0, w, w), normalized_centres(0, h, h))
        return {
            "image": normalize_image(rgb),
            "semantic": torch.from_numpy(semantic.astype(np.int64)),
            "instances": torch.from_numpy(instances.astype(np.int64)),
            "coordinates": coordinates,
            "name": self.pairs[index][0].stem,
        }


class CamVid(SegmentationDataset):
    """CamVid as in ../shared/datasets/camvid: ``{split}.txt`` lists ``/SegNet/CamVid/<img> /SegNet/CamVid/<label>``.

    CamVid has no instance labels: instances are connected components of each thing class (Car, Pedestrian,
    Bicyclist), computed on the full-resolution label map before augmentation.
    """

    table = CAMVID

    def __init__(self, root: str | Path, split: str = "train", augment: Callable | None = None, min_instance_area: int = 1,
                 preload: bool = False):
        root = Path(root)
        listing = root / f"{split}.txt"
        if not listing.exists():
            raise FileNotFoundError(f"CamVid: no {listing}; expected the SegNet layout with train.txt / val.txt")
        pairs = []
        for line in listing.read_text().split("\n"):
            if line.strip():
                image, label = (root / p.split("/CamVid/", 1)[-1] for p in line.split())
                pairs.append((image, label))
        self.min_instance_area = min_instance_area
        super().__init__(pairs, augment, preload)

    def load_targets(self, files):
        return camvid_targets(read_label(files[0]), self.min_instance_area)


class Cityscapes(SegmentationDataset):
    """Cityscapes gtFine: ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` with ``gtFine/<split>/<city>/
    *_gtFine_labelIds.png`` and ``*_gtFine_instanceIds.png``. Label ids map to the 19 train ids with
    cityscapesscripts' table; instances are instanceIds >= 1000 (crowd regions of thing classes get no instance)."""

    table = CITYSCAPES

    def __init__(self, root: str | Path, split: str = "train", augment: Callable | None = None, preload: bool = False):
        from cityscapesscripts.helpers.labels import labels

        root = Path(root)
        pairs = []
        for image in sorted((root / "leftImg8bit" / split).glob("*/*_leftImg8bit.png")):
            stem = image.name[: -len("_leftImg8bit.png")]
            gt = root / "gtFine" / split / image.parent.name
            pairs.append((image, gt / f"{stem}_gtFine_labelIds.png", gt / f"{stem}_gtFine_instanceIds.png"))
        lut = np.full(256, IGNORE_LABEL, np.uint8)
        for label in labels:
            if 0 <= label.id < 256 and 0 <= label.trainId < 255:
                lut[label.id] = label.trainId
        self.lut = lut
        super().__init__(pairs, augment, preload)

    def load_targets(self, files):
        semantic = self.lut[read_label(files[0])]
        raw = read_label(files[1]).astype(np.int64)
        instances = np.full(raw.shape, NO_INSTANCE, np.int32)
        labelled = raw >= 1000
        instances[labelled] = np.unique(raw[labelled], return_inverse=True)[1]
        return semantic, instances


DATASETS = {"camvid": CamVid, "cityscapes": Cityscapes}
