"""Panoptic maps in the Cityscapes (COCO) panoptic format, for cityscapesscripts'
``evalPanopticSemanticLabeling.evaluatePanoptic`` and panopticapi.

A set named ``name`` in ``out_dir`` is ``<out_dir>/<name>/<image_id>.png``, one RGB PNG per image with segment id
``R + 256 G + 256^2 B`` (panopticapi ``id2rgb``), and ``<out_dir>/<name>.json`` with ``images``, ``annotations``
(``image_id``, ``file_name``, ``segments_info``) and ``categories``. Predictions and ground truth are written the same
way; ``evaluatePanoptic(gt.json, gt_folder, pred.json, pred_folder, result_file)`` compares two sets.

Ids: the PNG holds the message-convention id + 1, so void (-1) becomes 0, the format's void, and a stuff segment of
class 0 stays a segment; ``segments_info`` records it as ``message_id``. ``category_id`` is the Cityscapes label id
(person = 24, as the official evaluator expects) for the ``cityscapes`` table, and the table's own class id for any
other table. ``iscrowd`` is 1 for thing-class ids < 1000 (the evaluator reads it from the ground truth only),
``area`` is the pixel count, and ``score`` is added where a score is given.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np

from .classes import CITYSCAPES, ClassTable
from .metrics import segment_classes
from .postprocess import INSTANCE_OFFSET, VOID_ID


def category_ids(table: ClassTable) -> list[int]:
    """Category id of each class of ``table``: Cityscapes label ids for the cityscapes table, else the class ids."""
    if table.name != CITYSCAPES.name:
        return [c.id for c in table.classes]
    from cityscapesscripts.helpers.labels import trainId2label

    return [trainId2label[c.id].id for c in table.classes]


def id2rgb(ids: np.ndarray) -> np.ndarray:
    """[H, W] segment ids in [0, 256^3) -> [H, W, 3] uint8 RGB (panopticapi ``id2rgb``)."""
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)


class CityscapesPanopticWriter:
    """Writes one set incrementally: ``add`` writes the image's PNG at once, ``flush`` (re)writes the JSON with every
    image added so far (atomically, replacing the previous one; its cost grows with the number of images), so an
    interrupted run leaves a consistent set. Used as a context manager, the JSON is written on exit, errors included.
    """

    def __init__(self, out_dir: str | Path, table: ClassTable, name: str = "predictions"):
        self.table = table
        self.folder = Path(out_dir) / name
        self.json_path = Path(out_dir) / f"{name}.json"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.category_ids = np.array(category_ids(table))
        self.is_thing = np.array([c.is_thing for c in table.classes])
        self.images: list[dict] = []
        self.annotations: list[dict] = []
        self._image_ids: set[str] = set()

    def add(self, image_id: str, panoptic: np.ndarray, scores: dict[int, float] | None = None) -> dict:
        """panoptic: [H, W] integer panoptic ids (message convention) of image ``image_id`` (a file-name stem, unique
        in the set); scores: optional confidence by message id. Returns the image's annotation."""
        if not image_id or Path(image_id).name != image_id or image_id in self._image_ids:
            raise ValueError(f"image_id {image_id!r} must be a unique file-name stem without folders")
        panoptic = np.asarray(panoptic)
        if panoptic.ndim != 2 or not np.issubdtype(panoptic.dtype, np.integer):
            raise ValueError(f"image {image_id!r}: expected an integer [H, W] panoptic map, got {panoptic.dtype} "
                             f"{panoptic.shape}")
        panoptic = panoptic.astype(np.int64)
        ids, areas = np.unique(panoptic[panoptic != VOID_ID], return_counts=True)
        classes = segment_classes(ids, self.table, f"image {image_id!r}")
        file_name = f"{image_id}.png"
        if not cv2.imwrite(str(self.folder / file_name), cv2.cvtColor(id2rgb(panoptic + 1), cv2.COLOR_RGB2BGR)):
            raise OSError(f"cannot write {self.folder / file_name}")
        scores = scores or {}
        segments = []
        for i, c, area in zip(ids.tolist(), classes.tolist(), areas.tolist()):
            segment = {"id": i + 1, "category_id": int(self.category_ids[c]), "message_id": i, "area": area,
                       "iscrowd": int(bool(self.is_thing[c]) and i < INSTANCE_OFFSET)}
            if i in scores:
                segment["score"] = float(scores[i])
            segments.append(segment)
        annotation = {"image_id": image_id, "file_name": file_name, "segments_info": segments}
        self.images.append({"id": image_id, "height": panoptic.shape[0], "width": panoptic.shape[1]})
        self.annotations.append(annotation)
        self._image_ids.add(image_id)
        return annotation

    def flush(self) -> Path:
        """Write the JSON for the images added so far; returns its path."""
        categories = [{"id": int(cid), "name": c.name, "isthing": int(c.is_thing), "color": list(c.color)}
                      for cid, c in zip(self.category_ids, self.table.classes)]
        partial = self.json_path.with_name(self.json_path.name + ".partial")
        partial.write_text(json.dumps({"images": self.images, "annotations": self.annotations,
                                       "categories": categories}))
        os.replace(partial, self.json_path)
        return self.json_path

    def close(self) -> Path:
        return self.flush()

    def __enter__(self) -> "CityscapesPanopticWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_ground_truth(out_dir: str | Path, samples: Iterable[tuple[str, np.ndarray]], table: ClassTable,
                       name: str = "ground_truth") -> Path:
    """Write (image_id, [H, W] panoptic ids) ground-truth pairs, e.g. from ``panoptic_from_labels``, as a set the
    official evaluator can use as its ground truth (crowd regions flagged ``iscrowd``); returns the JSON path."""
    with CityscapesPanopticWriter(out_dir, table, name) as writer:
        for image_id, panoptic in samples:
            writer.add(image_id, panoptic)
    return writer.json_path
