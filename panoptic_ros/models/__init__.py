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


__all__ = ["ARCHITECTURES", "ICNet", "PanoNet", "PanoNetConfig", "PanopticFPN", "build_model"]
