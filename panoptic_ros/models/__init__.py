"""Networks. ``build_model`` maps a config dict (from YAML) to a constructor."""

from __future__ import annotations

from .icnet import ICNet
from .panonet import PanoNet, PanoNetConfig
from .panoptic_fpn import PanopticFPN

ARCHITECTURES = {"panonet": PanoNet, "panoptic_fpn": PanopticFPN}


def build_model(architecture: str, **kwargs):
    """Construct a network by name with its keyword arguments, e.g. ``build_model("panonet", num_classes=11)``."""
    try:
        cls = ARCHITECTURES[architecture]
    except KeyError:
        raise ValueError(f"unknown architecture {architecture!r}; known: {sorted(ARCHITECTURES)}") from None
    return cls(**kwargs)


def network_input_size(model, height: int, width: int, scale: float = 1.0) -> tuple[int, int]:
    """The (height, width) a ``height`` x ``width`` image is resized to for ``model``: each side times ``scale``,
    rounded to the nearest multiple (halves up) of the network's ``input_divisor`` (PanoNet: 32, where its branches
    align; PanopticFPN: 1, it pads inputs itself) and never below its ``min_input_size``."""
    divisor = model.input_divisor
    smallest = -(-model.min_input_size // divisor) * divisor
    return tuple(max(smallest, divisor * int(side * scale / divisor + 0.5)) for side in (height, width))


__all__ = ["ARCHITECTURES", "ICNet", "PanoNet", "PanoNetConfig", "PanopticFPN", "build_model", "network_input_size"]
