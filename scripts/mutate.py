"""`make mutate`: mutation testing of the core modules with mutmut, one module at a time, each against only its
own test files (issue #14; results in docs/mutation.md).

For each module: a snapshot of the tree (tracked and untracked files, the generated messages and op) in
build/mutation/<name>/, so edits made meanwhile stay out of the run; a [mutmut] section in its setup.cfg naming the
module and its test files; ``mutmut run`` on the module's mutants (mutmut runs, per mutant, those of the tests that
called the mutated function). Prints killed / tested per module and writes build/mutation/scores.json with the
names of the mutants not killed (``cd build/mutation/<name> && mutmut show NAME`` shows one).

    python scripts/mutate.py                    # every module
    python scripts/mutate.py runtime images     # some
    python scripts/mutate.py --tests-at 3e44170 # the modules' tests as at that commit (the score before new tests)
    python scripts/mutate.py --not-killed       # after adding tests: only the mutants the last run did not kill
    python scripts/mutate.py predictor --functions upsample_labels merge_instances  # a part of a module
    python scripts/mutate.py predictor --functions Predictor.to Family.of           # methods: Class.method
    python scripts/mutate.py node --numbers 81-149 183-285   # the rest of a stopped run: these mutants only
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "build" / "mutation"
# The mean-shift engine of postprocess.py (mean_shift and its helpers) is left out: its oracle is sklearn on
# thousands of points (tests of 10-25 s each), which would take this run from about an hour to a day.
POSTPROCESS = ["x_cluster_instances", "x_coarse_cell_index", "x_assign_thing_pixels", "x__max3x3",
               "x_ids_from_segment_map", "x_segment_map_from_ids", "x_merge_panoptic", "x_panoptic_codes",
               "x_merge_codes", "x__check_table", "x__rank_in_class", "x__rows_holding", "x__segments"]
# name: (file, mutant name patterns, test files, extra pytest arguments)
MODULES = {
    "metrics": ("panoptic_ros/metrics.py", ["panoptic_ros.metrics.*"],
                ["test/test_metrics.py", "test/test_panoptic_quality.py", "test/test_instance_ap.py",
                 "test/test_metrics_boundaries.py"], []),
    "losses": ("panoptic_ros/losses.py", ["panoptic_ros.losses.*"], ["test/test_losses.py"], []),
    "postprocess": ("panoptic_ros/postprocess.py", [f"panoptic_ros.postprocess.{f}__mutmut_*" for f in POSTPROCESS],
                    ["test/test_postprocess.py"], []),
    "predictor": ("panoptic_ros/predictor.py", ["panoptic_ros.predictor.*"],
                  ["test/test_predictor.py", "test/test_predictor_decoders.py", "test/test_families.py"], []),
    "images": ("panoptic_ros/images.py", ["panoptic_ros.images.*"], ["test/test_images.py"], []),
    "runtime": ("panoptic_ros/runtime.py", ["panoptic_ros.runtime.*"], ["test/test_runtime.py"], []),
    "bags": ("panoptic_ros/bags.py", ["panoptic_ros.bags.*"], ["test/test_bags.py"], []),
    "conversions": ("panoptic_ros/ros/conversions.py", ["panoptic_ros.ros.conversions.*"],
                    ["test/ros/test_messages.py", "test/ros/test_node_outputs.py", "test/ros/test_conversions.py"], []),
    # ICNet's pyramid pooling as matrix products (and the matrices), against torch's pooling and interpolation
    "icnet": ("panoptic_ros/models/icnet.py",
              [f"panoptic_ros.models.icnet.{f}__mutmut_*" for f in
               ("x_bilinear_sources", "x_adaptive_pool_matrix", "x_upsample_matrix", "xǁPyramidPoolingǁforward")],
              ["test/models/test_icnet.py"], []),
    # the IMP op's reference implementation, the oracle its CPU / CUDA kernels are tested against
    "ops": ("panoptic_ros/ops/_reference.py", ["panoptic_ros.ops._reference.*"], ["test/ops/test_imp.py"], []),
    # the node's output encoding; the ONNX Runtime test (40 s, it exports a network) adds nothing to it
    "node": ("panoptic_ros/ros/panoptic_node.py", ["panoptic_ros.ros.panoptic_node.xǁPanopticNodeǁ_publish__mutmut_*"],
             ["test/ros/test_node_outputs.py", "test/ros/test_panoptic_node.py"],
             ["--deselect", "test/ros/test_panoptic_node.py::test_onnxruntime_backend_and_a_refused_missing_artefact"]),
}
# test failure or error, timeout (mutmut.stats.status_by_exit_code), and a test process the mutant crashed (-11,
# SIGSEGV: e.g. None handed to OpenCV; -6, SIGABRT: seen for None set on a ROS message's string field), which
# mutmut reports as "segfault" / "suspicious" but is as detected as a failure
KILLED = {1, 3, 24, -24, 152, 255, 36, 37, -11, -6}


def snapshot(target: Path, tests_at: str | None) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    generated = [p.relative_to(ROOT) for pattern in ("panoptic_ros/msg", "panoptic_ros/*.so", "panoptic_ros/ops/_C*.so")
                 for p in ROOT.glob(pattern)]
    for name in [f for f in files if f] + [str(p) for p in generated]:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, target / name, dirs_exist_ok=True)
        elif source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    if tests_at:
        shutil.rmtree(target / "test")
        archive = subprocess.run(["git", "archive", tests_at, "test"], cwd=ROOT, check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)


def config(file: str, tests: list[str], pytest_args: list[str]) -> str:
    lines = lambda values: "".join(f"\n    {v}" for v in values)  # noqa: E731
    return (f"[mutmut]\nsource_paths ={lines(['panoptic_ros'])}\nonly_mutate ={lines([file])}\n"
            f"pytest_add_cli_args_test_selection ={lines(tests)}\n"
            f"pytest_add_cli_args ={lines(['-p', 'no:cacheprovider', *pytest_args])}\n"
            f"also_copy ={lines(['pytest.ini', 'config'])}\n"
            # forkserver: torch is not fork-safe once used; generous timeouts: the machine may be busy
            "process_isolation = forkserver\ntimeout_multiplier = 10.0\ntimeout_constant = 5.0\n")


def mutant_prefix(function: str) -> str:
    """mutmut 3's name for the mutants of a module-level function ``f`` (``x_f``) or a method ``C.m`` (``xǁCǁm``)."""
    cls, _, method = function.rpartition(".")
    return f"xǁ{cls}ǁ{method}" if cls else f"x_{function}"


def mutant_numbers(parts: list[str]) -> list[int]:
    """``["81-149", "183"]`` -> [81, ..., 149, 183]: mutmut numbers a function's mutants from 1."""
    numbers = set()
    for part in parts:
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        first, last = (int(match[1]), int(match[2] or match[1])) if match else (0, 0)
        if not 1 <= first <= last:
            raise ValueError(f"--numbers: {part!r} is not N or N-M with 1 <= N <= M")
        numbers.update(range(first, last + 1))
    return sorted(numbers)


def score(work: Path, file: str, patterns: list[str]) -> dict:
    codes = json.loads((work / "mutants" / f"{file}.meta").read_text())["exit_code_by_key"]
    tested = {k: c for k, c in codes.items() if any(fnmatch.fnmatch(k, p) for p in patterns) and c is not None}
    killed = sum(c in KILLED for c in tested.values())
    return {"killed": killed, "tested": len(tested), "timeouts": sum(c in (24, -24, 152, 255, 36) for c in tested.values()),
            "no_tests": sum(c in (5, 33) for c in tested.values()),
            "not_killed": sorted(k for k, c in tested.items() if c not in KILLED)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help=f"some of {', '.join(MODULES)} (default: all)")
    parser.add_argument("--tests-at", help="take test/ from this commit")
    parser.add_argument("--not-killed", action="store_true",
                        help="run only the mutants the last run of each module did not kill (tests only added since: "
                             "the others stay killed) and count the newly killed ones in")
    parser.add_argument("--functions", nargs="+", metavar="NAME",
                        help="only the mutants of these module-level functions or methods (Class.method; a partial "
                             "run, recorded as '<module>[<functions>]', beside the module's whole run)")
    parser.add_argument("--numbers", nargs="+", metavar="N[-M]",
                        help="only the mutants of these numbers (ranges inclusive) among those selected, e.g. the ones "
                             "a stopped run did not reach (recorded as '<module>#<numbers>')")
    parser.add_argument("--max-children", type=int, default=2)
    args = parser.parse_args()
    if set(args.modules) - set(MODULES):
        parser.error(f"unknown modules {sorted(set(args.modules) - set(MODULES))}; known: {', '.join(MODULES)}")
    try:
        numbers = mutant_numbers(args.numbers or [])
    except ValueError as error:
        parser.error(str(error))
    results_path = OUT / "scores.json"
    load = lambda: json.loads(results_path.read_text()) if results_path.exists() else {}  # noqa: E731
    mutmut = Path(sys.executable).with_name("mutmut")
    for module in args.modules or MODULES:
        file, patterns, tests, pytest_args = MODULES[module]
        name = module
        if args.functions:
            prefix = file.removesuffix(".py").replace("/", ".")
            patterns = [f"{prefix}.{mutant_prefix(function)}__mutmut_*" for function in args.functions]
            name = f"{module}[{','.join(args.functions)}]"
        if args.numbers:
            patterns = [pattern.replace("__mutmut_*", f"__mutmut_{n}") for pattern in patterns for n in numbers]
            name = f"{name}#{','.join(args.numbers)}"
        previous = load().get(name)
        if args.not_killed:
            if previous is None:
                sys.exit(f"{name}: no earlier run to continue")
            if not previous["not_killed"]:
                continue
            patterns = previous["not_killed"]
        work = OUT / module
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        snapshot(work, args.tests_at)
        (work / "setup.cfg").write_text(config(file, tests, pytest_args))
        start = time.monotonic()
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        with open(work / "mutmut.log", "w") as log:
            run = subprocess.run([str(mutmut), "run", "--max-children", str(args.max_children), *patterns], cwd=work,
                                 env=env, stdout=log, stderr=subprocess.STDOUT)
        result = {**score(work, file, patterns), "seconds": round(time.monotonic() - start), "exit": run.returncode,
                  "tests_at": args.tests_at or "working tree"}
        if args.not_killed:
            result = {**result, "killed": previous["killed"] + result["killed"], "tested": previous["tested"],
                      "timeouts": previous["timeouts"] + result["timeouts"],
                      "seconds": previous["seconds"], "rerun_seconds": result["seconds"],
                      "rerun_of": {k: previous[k] for k in ("killed", "tested", "tests_at")}}
        results = {**load(), name: result}  # read again: another run may have written meanwhile
        results_path.write_text(json.dumps(results, indent=1))
        print(f"{name}: {result['killed']} / {result['tested']} killed ({result['timeouts']} by timeout), "
              f"{len(result['not_killed'])} not ({result['no_tests']} without tests), {result['seconds']} s", flush=True)
    print("| module | killed / tested | score |\n| --- | --- | --- |")
    for name, r in load().items():
        print(f"| {name} | {r['killed']} / {r['tested']} | {100 * r['killed'] / max(r['tested'], 1):.1f}% |")


if __name__ == "__main__":
    main()
