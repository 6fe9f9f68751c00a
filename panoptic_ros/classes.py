"""Class tables: id, name, thing/stuff and display colour of every class a model predicts."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClassInfo:
    id: int
    name: str
    is_thing: bool
    color: tuple[int, int, int]  # RGB, for overlays and RViz


@dataclass(frozen=True)
class ClassTable:
    """Classes indexed by id (ids are 0..len-1); ``ignore_id`` marks void pixels in label maps."""

    name: str
    classes: tuple[ClassInfo, ...]
    ignore_id: int

    def __post_init__(self):
        ids = [c.id for c in self.classes]
        if ids != list(range(len(ids))):
            raise ValueError(f"class table {self.name!r}: ids must be 0..{len(ids) - 1} in order, got {ids}")

    def __len__(self) -> int:
        return len(self.classes)

    def __getitem__(self, class_id: int) -> ClassInfo:
        return self.classes[class_id]

    @property
    def thing_ids(self) -> tuple[int, ...]:
        return tuple(c.id for c in self.classes if c.is_thing)


# CamVid, 11 classes of the SegNet split (../shared/datasets/README.md); colours from the CamVid palette.
CAMVID = ClassTable(
    name="camvid",
    ignore_id=11,
    classes=(
        ClassInfo(0, "sky", False, (128, 128, 128)),
        ClassInfo(1, "building", False, (128, 0, 0)),
        ClassInfo(2, "pole", False, (192, 192, 128)),
        ClassInfo(3, "road", False, (128, 64, 128)),
        ClassInfo(4, "pavement", False, (60, 40, 222)),
        ClassInfo(5, "tree", False, (128, 128, 0)),
        ClassInfo(6, "sign_symbol", False, (192, 128, 128)),
        ClassInfo(7, "fence", False, (64, 64, 128)),
        ClassInfo(8, "car", True, (64, 0, 128)),
        ClassInfo(9, "pedestrian", True, (64, 64, 0)),
        ClassInfo(10, "bicyclist", True, (0, 128, 192)),
    ),
)


def _cityscapes_table() -> ClassTable:
    """The 19 Cityscapes train classes, built from cityscapesscripts' own label table (names, thing/stuff, colours)."""
    from cityscapesscripts.helpers.labels import labels

    train = sorted((label for label in labels if 0 <= label.trainId < 255), key=lambda label: label.trainId)
    return ClassTable(
        name="cityscapes",
        ignore_id=255,
        classes=tuple(ClassInfo(label.trainId, label.name, label.hasInstances, tuple(label.color)) for label in train),
    )


CITYSCAPES = _cityscapes_table()
TABLES = {table.name: table for table in (CAMVID, CITYSCAPES)}
