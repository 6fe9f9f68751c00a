"""Compiled operators. ``project_instance_masks`` is Instance Mask Projection (IMP)."""

from ._reference import SAMPLING, project_instance_masks_reference
from .imp import extension_available, project_instance_masks

__all__ = ["SAMPLING", "extension_available", "project_instance_masks", "project_instance_masks_reference"]
