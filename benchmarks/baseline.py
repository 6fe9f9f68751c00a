"""The fast mode end to end against an older commit's, side by side in one run (issue #11: the fastest CPU backend
at >= 2x the FPS of the eager path of commit 8838f7f at 1024x512).

This checkout's Predictor (eager and each fast CPU backend) and the baseline commit's eager Predictor run the
embedded CamVid frame resized to ``--resolution``, frames taken in turn (``benchmarks.panonet.measure``), so that a
load that changes during the run weighs on every side alike; the whole comparison runs ``--runs`` times (the
ratio moved by up to 12% between two runs here) and the medians are reported. The baseline runs in a child process from a git
worktree of its commit (``build/baseline-<commit>``, made on first use), serving one frame per request over a pipe;
the two processes never run at once. Every side uses the same number of threads.

Two models are compared, each on every side: the weights this checkout ships, and the weights the baseline commit
shipped (same model on both sides: what the pipeline alone gains). The result also says how far the outputs agree
with the baseline's on the frame: the semantic map pixel for pixel, the panoptic map as PQ against it.

    python -m benchmarks.baseline [--commit 8838f7f] [--resolution 1024x512] [--backends eager onnxruntime]
        [--runs 3] [--seconds 20]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BASELINE = "8838f7f"  # the eager path before issue #11 (no backends, merge at the input resolution)


def serve(weights: str, frame_path: str, threads: int) -> None:
    """The child: the Predictor of the package on ``sys.path`` (the baseline's worktree) answers each request line
    with one frame's timings (JSON); its outputs for the frame go to ``frame_path`` + ``.out.npz`` first."""
    import torch

    from panoptic_ros.predictor import Predictor

    torch.set_num_threads(threads)
    predictor = Predictor.from_weights(weights, device="cpu")
    rgb = np.load(frame_path)
    first = predictor(rgb)
    np.savez(frame_path + ".out.npz", semantic=first.semantic.numpy(), panoptic=first.panoptic.numpy())
    print("ready", flush=True)
    for _ in sys.stdin:
        print(json.dumps(predictor(rgb).timings), flush=True)


class Remote:
    """A baseline Predictor in a child process: ``remote(rgb).timings`` runs one frame there (``rgb`` must be the
    frame it was started with); ``outputs`` are its semantic and panoptic maps of that frame."""

    def __init__(self, worktree: Path, weights: Path, rgb: np.ndarray, threads: int, scratch: Path):
        self.frame = scratch / f"frame-{id(self)}.npy"
        np.save(self.frame, rgb)
        self.rgb = rgb
        env = {**os.environ, "PYTHONPATH": str(worktree), "OMP_NUM_THREADS": str(threads)}
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(weights), str(self.frame), str(threads)], cwd=worktree,
            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the baseline at {worktree} did not start (exit {self.process.wait()})")
        with np.load(str(self.frame) + ".out.npz") as out:
            self.outputs = {k: out[k] for k in out.files}

    def __call__(self, rgb: np.ndarray):
        if rgb is not self.rgb:
            raise ValueError("the baseline process runs the frame it was started with")
        self.process.stdin.write("frame\n")
        self.process.stdin.flush()
        return SimpleNamespace(timings=json.loads(self.process.stdout.readline()))

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def short_commit(commit: str) -> str:
    return subprocess.run(["git", "rev-parse", "--short", commit], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()


def worktree_path(commit: str) -> Path:
    return ROOT / "build" / f"baseline-{commit}"


def worktree(commit: str) -> Path:
    """A git worktree of ``commit`` (a short hash) under build/ (made once, then reused)."""
    path = worktree_path(commit)
    if not (path / "panoptic_ros").is_dir():
        subprocess.run(["git", "worktree", "prune"], cwd=ROOT, check=True)
        subprocess.run(["git", "worktree", "add", "--force", "--detach", str(path), commit], cwd=ROOT, check=True,
                       capture_output=True)
    return path


# Model config keys added after the baseline commit, with the value the baseline's code implies for each (None: any
# value; the key only matters to decoders the baseline does not have).
NEWER_MODEL_KEYS = {"instance_decoder": "embedding", "semantic_head": "icnet", "thing_classes": None}


def baseline_weights(weights: Path, scratch: Path) -> Path:
    """``weights`` as the baseline reads them: its model config without ``NEWER_MODEL_KEYS`` (its loader refuses
    unknown keys), written to ``scratch`` when there were any. Raises ``ValueError`` for a model the baseline's
    code cannot build (another instance decoder or semantic head)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(weights), "pt") as f:
        metadata = dict(f.metadata() or {})
    model = json.loads(metadata["model"])
    newer = {key: model.pop(key) for key in NEWER_MODEL_KEYS if key in model}
    if not newer:
        return weights
    for key, value in newer.items():
        if NEWER_MODEL_KEYS[key] not in (None, value):
            raise ValueError(f"{weights}: model.{key} is {value!r}; the baseline only has {NEWER_MODEL_KEYS[key]!r}")
    path = scratch / f"baseline-{weights.name}"
    save_file(load_file(str(weights)), str(path), metadata={**metadata, "model": json.dumps(model)})
    return path


def agreement(ours, theirs: dict, table) -> dict:
    """How far ``ours`` (a Prediction) agrees with the baseline's maps of the same frame: the share of equal
    semantic pixels, and PQ of our panoptic map scored against theirs as ground truth."""
    from panoptic_ros.metrics import PanopticQuality

    pq = PanopticQuality(table)
    pq.update(ours.panoptic.numpy(), theirs["panoptic"])
    return {"semantic_pixels_equal": float((ours.semantic.numpy() == theirs["semantic"]).mean()),
            "pq_against_baseline": pq.compute()["all"]["pq"]}


def combine(runs: list[dict]) -> dict:
    """One side's ``measure`` results of several runs: FPS of each and the median; per stage the median of the
    runs' medians, and its share of their sum."""
    stages = {k: float(np.median([r["median_ms"][k] for r in runs])) for k in runs[0]["median_ms"]}
    fps = [r["fps"] for r in runs]
    return {"frames": sum(r["frames"] for r in runs), "fps_per_run": fps, "fps": float(np.median(fps)),
            "median_ms": stages, "share": {k: v / sum(stages.values()) for k, v in stages.items()}}


def main() -> None:
    import cv2
    import torch

    from panoptic_ros.backends import BACKENDS
    from panoptic_ros.datasets import read_rgb
    from panoptic_ros.demo import DEFAULT_IMAGE
    from panoptic_ros.predictor import DEFAULT_WEIGHTS, Predictor

    from .common import environment, report
    from .panonet import measure

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--commit", default=BASELINE)
    parser.add_argument("--resolution", default="1024x512")
    parser.add_argument("--backends", nargs="+", default=["eager", "onnxruntime"],
                        choices=[b for b in BACKENDS if b != "tensorrt"])
    parser.add_argument("--seconds", type=float, default=20.0, help="per side and model")
    parser.add_argument("--runs", type=int, default=3, help="the whole comparison, this many times")
    parser.add_argument("--quick", action="store_true", help="one run, 2 s per side")
    opts = parser.parse_args()
    seconds = 2.0 if opts.quick else opts.seconds
    opts.runs = 1 if opts.quick else opts.runs
    width, height = (int(v) for v in opts.resolution.split("x"))
    threads = torch.get_num_threads()
    commit = short_commit(opts.commit)
    base = worktree(commit)
    models = {"shipped now": DEFAULT_WEIGHTS,
              f"shipped at {commit}": base / DEFAULT_WEIGHTS.relative_to(ROOT)}
    rgb = cv2.resize(read_rgb(DEFAULT_IMAGE), (width, height), interpolation=cv2.INTER_LINEAR)
    scratch = Path(tempfile.mkdtemp(prefix="baseline_bench_"))
    results, ratios, per_run, agreements = {}, {}, {}, {}
    for model, weights in models.items():
        sides = {b: Predictor.from_weights(weights, device="cpu", backend=b, cache_dir=scratch)
                 for b in opts.backends}
        remote = Remote(base, baseline_weights(weights, scratch), rgb, threads, scratch)
        table = sides[opts.backends[0]].table
        agreements[model] = {b: agreement(p(rgb), remote.outputs, table) for b, p in sides.items()}
        try:
            runs = [measure({f"{commit} eager": remote, **sides}, rgb, seconds) for _ in range(opts.runs)]
        finally:
            remote.close()
        for side in runs[0]:
            results[f"{model}: {side}"] = combine([run[side] for run in runs])
        pairs = {side: (side, f"{commit} eager") for side in runs[0]}
        pairs.update({f"{b} / eager": (b, "eager") for b in opts.backends if b != "eager" and "eager" in sides})
        per_run[model] = {name: [run[a]["fps"] / run[b]["fps"] for run in runs] for name, (a, b) in pairs.items()}
        ratios[model] = {name: float(np.median(values)) for name, values in per_run[model].items()}
    payload = {**environment(torch.device("cpu")), "baseline": commit, "resolution": opts.resolution,
               "quick": opts.quick, "seconds_per_side": seconds, "models": {k: str(v) for k, v in models.items()},
               "runs": opts.runs, "results": results, "fps_ratios": ratios, "fps_ratios_per_run": per_run,
               "agreement_with_baseline": agreements}
    lines = [f"# Fast mode end to end vs {commit} (CPU, {opts.resolution})", "",
             f"commit {payload['commit']}, {payload['date']}, {payload['cpu']}, {threads} threads, torch "
             f"{payload['torch']}; every side measured in turn (the baseline in a worktree of {commit}), {seconds:.0f} s "
             f"each, {opts.runs} run(s): FPS, ratios and stage times are the medians over the runs", "",
             "| model | side | FPS | median ms | x baseline FPS (each run) | share of time |", "|---|---|---|---|---|---|"]
    for key, r in results.items():
        model, side = key.split(": ", 1)
        share = ", ".join(f"{k} {100 * v:.0f}%" for k, v in r["share"].items())
        each = ", ".join(f"{v:.2f}" for v in per_run[model][side])
        lines.append(f"| {model} | {side} | {r['fps']:.1f} | {sum(r['median_ms'].values()):.1f} | "
                     f"{ratios[model][side]:.2f}x ({each}) | {share} |")
    lines += ["", "Backend over this checkout's eager: " + "; ".join(
        f"{model}: {k.split(' / ')[0]} {v:.2f}x" for model, r in ratios.items() for k, v in r.items() if " / " in k),
        "", "Agreement with the baseline's outputs on the frame (semantic pixels equal; PQ of ours scored against "
        "theirs):", ""]
    lines += [f"- {model}, {side}: {100 * a['semantic_pixels_equal']:.2f}% of pixels, PQ {100 * a['pq_against_baseline']:.1f}"
              for model, sides in agreements.items() for side, a in sides.items()]
    report("baseline", torch.device("cpu"), payload, lines + [""])


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        main()
