"""Build and install panoptic_ros into a Python environment (the venv route; colcon uses CMakeLists.txt).

Two native parts are built here:
  * the ROS 2 messages in msg/: rosidl can only generate them with CMake, so ``build_py`` runs the package's
    CMakeLists.txt (messages only) and copies the generated ``panoptic_ros.msg`` package next to the sources;
  * the IMP op ``panoptic_ros.ops._C`` with torch.utils.cpp_extension. This is the only definition of its sources
    and flags: CMakeLists.txt builds it for colcon by running ``setup.py build_ext``.

Environment: FORCE_CUDA=1 builds the CUDA kernels, FORCE_CUDA=0 never does, unset builds them when torch is a CUDA
build and nvcc is found under CUDA_HOME. MAX_JOBS limits parallel compiles.
"""

import glob
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PACKAGE = "panoptic_ros"

# torch locates CUDA when cpp_extension is imported; the nvcc on PATH here is a wrapper script outside the
# toolkit, from which torch would infer a wrong CUDA_HOME.
if "CUDA_HOME" not in os.environ and os.path.exists("/usr/local/cuda/bin/nvcc"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

import torch  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _version() -> str:
    text = (ROOT / PACKAGE / "__init__.py").read_text()
    return re.search(r'^__version__ = "([^"]+)"', text, re.M).group(1)


def _cuda_decision() -> tuple[bool, str]:
    """Whether to build the CUDA kernels, and why."""
    force = os.environ.get("FORCE_CUDA")
    if force == "1":
        return True, "FORCE_CUDA=1"
    if force == "0":
        return False, "FORCE_CUDA=0"
    if force is not None:
        sys.exit(f"setup.py: FORCE_CUDA={force!r} is not allowed; use 1 (build CUDA), 0 (CPU only) or leave it unset")
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is a CPU-only build"
    nvcc = os.path.join(CUDA_HOME, "bin", "nvcc") if CUDA_HOME else None
    if nvcc is None or not os.path.exists(nvcc):
        return False, f"torch is a CUDA {torch.version.cuda} build but no nvcc under CUDA_HOME={CUDA_HOME}"
    return True, f"torch is a CUDA {torch.version.cuda} build and nvcc is at {nvcc}"


def _extensions() -> list:
    cpp = sorted(glob.glob(f"{PACKAGE}/ops/csrc/*.cpp", root_dir=ROOT))
    if not cpp:
        print(f"{PACKAGE}: no sources in {PACKAGE}/ops/csrc/, the IMP op is not built")
        return []
    # Headers are listed so that editing one rebuilds the op (setuptools otherwise compares only the sources).
    depends = sorted(glob.glob(f"{PACKAGE}/ops/csrc/**/*.h", root_dir=ROOT, recursive=True)
                     + glob.glob(f"{PACKAGE}/ops/csrc/**/*.cuh", root_dir=ROOT, recursive=True))
    with_cuda, reason = _cuda_decision()
    print(f"{PACKAGE}: building the IMP op {'with' if with_cuda else 'without'} CUDA kernels ({reason})")
    # No FMA contraction: the CPU and CUDA kernels must agree bit for bit with the reference.
    extra_compile_args = {"cxx": ["-O3", "-ffp-contract=off"]}
    if not with_cuda:
        return [CppExtension(f"{PACKAGE}.ops._C", cpp, depends=depends, extra_compile_args=extra_compile_args)]
    if "TORCH_CUDA_ARCH_LIST" not in os.environ and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0+PTX"  # Ampere, Hopper, PTX for newer GPUs
    cu = sorted(glob.glob(f"{PACKAGE}/ops/csrc/cuda/*.cu", root_dir=ROOT))
    extra_compile_args["nvcc"] = ["-O3", "--fmad=false"]
    return [
        CUDAExtension(
            f"{PACKAGE}.ops._C",
            cpp + cu,
            depends=depends,
            define_macros=[("WITH_CUDA", None)],
            extra_compile_args=extra_compile_args,
        )
    ]


def _newest_mtime(paths) -> float:
    return max(p.stat().st_mtime for p in paths)


def build_messages(dest: Path) -> None:
    """Generate the messages with CMake and copy the Python package ``msg`` (with the .msg files) and its C
    extensions into ``dest``.

    The C libraries go to ``sys.prefix/lib``, which the ros-* wheels' bootstrapper puts on LD_LIBRARY_PATH.
    """
    inputs = [ROOT / "CMakeLists.txt", ROOT / "package.xml", *(ROOT / "msg").glob("*.msg")]
    marker = dest / "msg" / "__init__.py"
    lib = Path(sys.prefix) / "lib" / f"lib{PACKAGE}__rosidl_typesupport_c.so"
    typesupports = list(dest.glob(f"{PACKAGE}_s__*.so"))
    definitions = [dest / "msg" / f.name for f in (ROOT / "msg").glob("*.msg")]
    if (marker.exists() and lib.exists() and len(typesupports) == 3 and all(d.exists() for d in definitions)
            and min(p.stat().st_mtime for p in [marker, *typesupports]) > _newest_mtime(inputs)):
        print(f"{PACKAGE}: messages are up to date in {dest}")
        return

    build_dir = ROOT / "build" / "msgs"
    stage = ROOT / "build" / "msgs_stage"
    shutil.rmtree(stage, ignore_errors=True)
    cmake = shutil.which("cmake", path=os.path.dirname(sys.executable)) or shutil.which("cmake")
    if cmake is None:
        sys.exit("setup.py: cmake not found; it is needed to generate the ROS 2 messages (pip install cmake)")
    jobs = os.environ.get("MAX_JOBS", str(os.cpu_count() or 1))
    subprocess.run(
        [
            cmake, "-S", str(ROOT), "-B", str(build_dir),
            f"-DCMAKE_INSTALL_PREFIX={sys.prefix}",
            f"-DCMAKE_PREFIX_PATH={sys.prefix}",
            f"-DPYTHON_INSTALL_DIR={stage}",
            f"-DPython3_EXECUTABLE={sys.executable}",
            "-DPANOPTIC_ROS_BUILD_OP=OFF",
            "-DBUILD_TESTING=OFF",
        ],
        check=True,
    )
    subprocess.run([cmake, "--build", str(build_dir), "--parallel", jobs], check=True)
    subprocess.run([cmake, "--install", str(build_dir)], check=True)

    built = stage / PACKAGE
    shutil.rmtree(dest / "msg", ignore_errors=True)
    # copy (not copy2): fresh mtimes make the up-to-date check above hold until an input changes
    shutil.copytree(built / "msg", dest / "msg", ignore=shutil.ignore_patterns("__pycache__"),
                    copy_function=shutil.copy)
    for definition in (ROOT / "msg").glob("*.msg"):  # the text rosbags needs to (de)serialise them, in any install
        shutil.copy(definition, dest / "msg")
    for old in dest.glob(f"{PACKAGE}_s__*.so"):
        old.unlink()
    for so in built.glob(f"{PACKAGE}_s__*.so"):
        shutil.copy(so, dest)
    print(f"{PACKAGE}: generated messages copied to {dest}")


class BuildPyWithMessages(build_py):
    """build_py that also generates the ROS 2 messages (into the sources for editable installs)."""

    def run(self):
        super().run()
        dest = ROOT / PACKAGE if self.editable_mode else Path(self.build_lib) / PACKAGE
        try:
            build_messages(dest)
        except Exception as error:
            # Raised as SystemExit: in editable installs setuptools (79) turns any Exception from a customised
            # build_py into a deprecation warning, and pip would report success with no messages built.
            raise SystemExit(f"setup.py: generating the ROS 2 messages failed: {error} (the CMake output above "
                             "says why)") from error


setup(
    name=PACKAGE,
    version=_version(),
    description="Real-time panoptic segmentation for ROS 2 with a compiled Instance Mask Projection op",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    package_data={PACKAGE: ["data/samples/*", "weights/*"], f"{PACKAGE}.ros": ["*.xml"]},
    # Pinned versions, ROS wheels included, are in requirements.txt; a ROS workspace gets them from package.xml.
    install_requires=["torch", "numpy"],
    ext_modules=_extensions(),
    cmdclass={"build_py": BuildPyWithMessages, "build_ext": BuildExtension},
    zip_safe=False,
)
