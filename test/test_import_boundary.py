"""Only panoptic_ros/ros/ may import rclpy or ROS message code; everything else must run without ROS."""

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROS_ONLY_DIR = REPO / "panoptic_ros" / "ros"
GENERATED_DIR = REPO / "panoptic_ros" / "msg"  # rosidl output, itself message code
ROS_BENCHMARKS = {REPO / "benchmarks" / "node.py", REPO / "benchmarks" / "soak.py"}  # measure the node through rclpy
FORBIDDEN = re.compile(
    r"^(rclpy|rosidl_\w+|\w+_msgs|\w+_interfaces|builtin_interfaces|panoptic_ros\.msg)(\.|$)")


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """Absolute names of all modules that ``source`` imports, with their line numbers.

    ``from a import b`` yields both ``a`` and ``a.b`` (``b`` may be a submodule); relative imports are resolved
    against ``module``; ``importlib.import_module("x")`` and ``__import__("x")`` with a literal count as imports.
    """
    package = module if is_package else module.rpartition(".")[0]
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names.append((node.lineno, base))
            names += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                names.append((node.lineno, node.args[0].value))
    return names


def ros_imports(path: Path) -> list[str]:
    relative = path.relative_to(REPO).with_suffix("")
    is_package = relative.name == "__init__"
    module = ".".join(relative.parent.parts if is_package else relative.parts)
    return [f"{path.relative_to(REPO)}:{line}: {name}"
            for line, name in imported_modules(path.read_text(), module, is_package) if FORBIDDEN.match(name)]


def checked_files() -> list[Path]:
    files = []
    for top in ("panoptic_ros", "benchmarks"):
        for path in sorted((REPO / top).rglob("*.py")):
            if not (path.is_relative_to(ROS_ONLY_DIR) or path.is_relative_to(GENERATED_DIR) or path in ROS_BENCHMARKS):
                files.append(path)
    return files


def test_nothing_outside_panoptic_ros_ros_imports_ros():
    files = checked_files()
    assert REPO / "panoptic_ros" / "__init__.py" in files
    violations = [v for path in files for v in ros_imports(path)]
    assert not violations, "ROS imports outside panoptic_ros/ros/:\n" + "\n".join(violations)


@pytest.mark.parametrize("source", [
    "import rclpy",
    "import rclpy.node as n",
    "from rclpy.node import Node",
    "from sensor_msgs.msg import Image",
    "import rosidl_runtime_py",
    "from builtin_interfaces.msg import Time",
    "from panoptic_ros.msg import Segment",
    "from panoptic_ros import msg",
    "from ..msg import Segment",
    "from .. import msg",
    "import importlib\nimportlib.import_module('rclpy')",
    "def f():\n    import rclpy",
])
def test_checker_flags_ros_imports(source):
    names = [name for _, name in imported_modules(source, "panoptic_ros.ops.imp", is_package=False)]
    assert any(FORBIDDEN.match(name) for name in names), names


@pytest.mark.parametrize("source", [
    "import torch", "from panoptic_ros.ops import imp", "from . import _reference", "import numpy as np",
    "from ..models import msgnet", "import rclpy_like_but_not",
])
def test_checker_allows_other_imports(source):
    names = [name for _, name in imported_modules(source, "panoptic_ros.ops.imp", is_package=False)]
    assert not any(FORBIDDEN.match(name) for name in names), names
