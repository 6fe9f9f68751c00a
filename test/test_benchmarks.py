"""The benchmarks run and write their result files. Timings are not bounded (they belong in the files), but the
numbers derived from them must agree with them, and what is not a timing (labels equal to sklearn's, twins counted
once each, the commit measured) is asserted."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from panoptic_ros.backends import BACKENDS
from panoptic_ros.ops import extension_available
from panoptic_ros.predictor import DEFAULT_WEIGHTS, PRECISIONS


@pytest.mark.slow
@pytest.mark.parametrize("name", ["imp", "panonet", "clustering", "replay", "node", "mirror", "accuracy", "backends",
                                  "baseline"])
def test_benchmark_writes_its_results(name, tmp_path, monkeypatch):
    if name == "imp" and not extension_available():
        pytest.skip("IMP extension not built")
    if name in ("panonet", "replay", "mirror", "backends", "baseline") and not DEFAULT_WEIGHTS.exists():
        pytest.skip("no shipped weights")
    module = __import__(f"benchmarks.{name}", fromlist=["main"])
    monkeypatch.setenv("PANOPTIC_ROS_BENCH_DIR", str(tmp_path))
    # the baseline against this very commit (a clone may lack older ones), at a small size: its own code must
    # agree with it pixel for pixel
    extra = ["--commit", "HEAD", "--resolution", "256x128"] if name == "baseline" else []
    monkeypatch.setattr(sys, "argv", [name, "--quick", *extra])
    try:
        module.main()
    finally:
        if name == "baseline":  # its worktree of HEAD is of no use after this run
            worktree = module.worktree_path(module.short_commit("HEAD"))
            subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=module.ROOT)
    result = json.loads((tmp_path / f"{name}-cpu.json").read_text())
    assert result["commit"] and result["cpu"] and (tmp_path / f"{name}-cpu.md").read_text().startswith("#")
    check_result(name, result)


def check_result(name: str, result: dict) -> None:
    """What a result file of benchmark ``name`` must hold whatever the machine: derived numbers equal to their
    definition, and the values that are not timings. Kills e.g. a share divided by the wrong total, a speedup
    inverted, a target test turned around or twins counted twice (the files used to be checked for existence)."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                          text=True).stdout.strip()
    assert result["commit"].split("+")[0] == head and result["device"] == "cpu"
    if name == "imp":
        for row in result["cpu_kernel_vs_reference"]:
            assert row["speedup"] == pytest.approx(row["reference_ms"] / row["kernel_ms"])
    elif name == "clustering":
        for row in result["cpu_vs_sklearn"]:
            assert row["same_labels"] and row["adjusted_rand_index"] == 1.0
            assert row["clusters"] == result["workload"]["instances"]
            assert row["speedup"] == pytest.approx(row["sklearn_ms"] / row["ours_ms"])
    elif name == "panonet":
        for run in result["results"].values():
            total = sum(run["median_ms"].values())
            assert run["share"] == pytest.approx({k: v / total for k, v in run["median_ms"].items()})
            assert set(run["median_ms"]) == {"preprocess", "model", "clustering", "merge"} and run["frames"] >= 5
    elif name == "replay":
        run, share = result["result"], result["result"]["share"]
        loop = run["per_frame_ms"]["loop"]
        assert share["bag decode"] == pytest.approx(run["per_frame_ms"]["bag decode"] / loop)
        assert share["metrics"] == pytest.approx(run["per_frame_ms"]["metrics"] / loop)
        assert share["decode + metrics"] == pytest.approx(share["bag decode"] + share["metrics"])
        assert result["meets_target"] == (share["decode + metrics"] < 0.1) and run["fps"] == pytest.approx(1e3 / loop)
    elif name == "node":
        assert set(result["overhead_2048x1024"]) == {"default", "default_synchronous", "all"}
        assert result["publication_mode"] == "ASYNCHRONOUS"  # launch/panoptic.launch.py's default
        assert len(result["overhead_2048x1024"]["default"]["node_overhead_ms_per_run"]) == (1 if result["quick"] else 3)
        for run in result["overhead_2048x1024"].values():
            assert run["node_overhead_share"] == pytest.approx(run["node_overhead_ms"] / run["median_ms"]["total"])
            assert run["node_overhead_ms"] == pytest.approx(float(np.median(run["node_overhead_ms_per_frame"])))
            assert {f"publish.{output}" for output in run["outputs"]} <= set(run["median_ms"])
    elif name == "mirror":
        for run in result["results"].values():
            assert run["separate"] + run["merged"] + run["unmatched"] == run["instances"]
    elif name == "accuracy":
        for resolution, runs in result["results"].items():
            assert set(runs) == {"with IMP", "without IMP"}
            assert "imp" in runs["with IMP"]["median_ms"] and "imp" not in runs["without IMP"]["median_ms"]
            for run in runs.values():
                assert {"backbone", "rpn", "heads", "semantic head", "semantic", "merge"} <= set(run["median_ms"])
                assert run["fps"] == pytest.approx(1e3 / run["end_to_end_ms"])
            assert result["imp_share_of_frame"][resolution] == pytest.approx(
                runs["with IMP"]["median_ms"]["imp"] / runs["with IMP"]["end_to_end_ms"])
    elif name == "baseline":
        assert result["baseline"] and set(result["models"]) == {"shipped now", f"shipped at {result['baseline']}"}
        for model, ratios in result["fps_ratios"].items():
            runs = {key.split(": ", 1)[1]: r for key, r in result["results"].items() if key.startswith(model + ":")}
            base = runs[f"{result['baseline']} eager"]
            assert set(ratios) >= set(runs) and ratios[f"{result['baseline']} eager"] == 1.0
            each = result["fps_ratios_per_run"][model]
            for side, r in runs.items():
                assert len(r["fps_per_run"]) == result["runs"]
                assert r["fps"] == pytest.approx(np.median(r["fps_per_run"]))
                assert each[side] == pytest.approx([a / b for a, b in zip(r["fps_per_run"], base["fps_per_run"])])
                assert ratios[side] == pytest.approx(np.median(each[side]))
                total = sum(r["median_ms"].values())
                assert r["share"] == pytest.approx({k: v / total for k, v in r["median_ms"].items()})
                assert set(r["median_ms"]) == {"preprocess", "model", "clustering", "merge"} and r["frames"] >= 5
            for backend, agreement in result["agreement_with_baseline"][model].items():
                assert 0 <= agreement["semantic_pixels_equal"] <= 1 and 0 <= agreement["pq_against_baseline"] <= 1
                if backend != "eager":
                    assert each[f"{backend} / eager"] == pytest.approx(
                        [a / b for a, b in zip(runs[backend]["fps_per_run"], runs["eager"]["fps_per_run"])])
                    assert ratios[f"{backend} / eager"] == pytest.approx(np.median(each[f"{backend} / eager"]))
        if result["quick"] and result["commit"] == result["baseline"]:  # this code, committed, as its own baseline
            assert all(a["semantic_pixels_equal"] == 1.0 and a["pq_against_baseline"] == 1.0
                       for sides in result["agreement_with_baseline"].values() for a in sides.values())
    elif name == "backends":
        assert result["resolutions"] == (["512x256"] if result["quick"] else ["512x256", "1024x512", "2048x1024"])
        measured = {(r["backend"], r["precision"]) for r in result["results"].values()}
        every = {(b, p) for b in BACKENDS if b != "auto" for p in PRECISIONS}
        assert measured | {tuple(k.split()) for k in result["skipped"]} == every and ("eager", "fp32") in measured
        assert not measured & {tuple(k.split()) for k in result["skipped"]}
        for key, row in result["results"].items():
            assert key == f"{row['resolution']} {row['backend']} {row['precision']}"
            assert row["resolution"] in result["resolutions"] and row["frames"] >= 3
            assert row["fps"] == pytest.approx(1e3 / row["p50_ms"]) and row["p99_ms"] >= row["p50_ms"]
            eager = result["results"][f"{row['resolution']} eager fp32"]
            assert row["speedup_over_eager_fp32"] == pytest.approx(eager["p50_ms"] / row["p50_ms"])
            if row["precision"] == "fp32":  # artefacts are checked against eager before they are used
                assert row["argmax_agreement"] >= 0.999
        for resolution in result["resolutions"]:
            assert {(r["backend"], r["precision"]) for r in result["results"].values()
                    if r["resolution"] == resolution} == measured
            eager = result["results"][f"{resolution} eager fp32"]
            assert eager["argmax_agreement"] == 1.0 and eager["max_abs_logit_difference"] == 0.0


@pytest.mark.parametrize("name", ["imp", "panonet", "clustering", "replay", "node", "mirror", "backends", "baseline"])
def test_the_checks_hold_for_the_committed_results(name):
    """The committed result files pass ``check_result`` (less the commit, which is older), so the checks above
    describe what the benchmarks write."""
    result = json.loads((Path(__file__).parents[1] / "benchmarks" / "results" / f"{name}-cpu.json").read_text())
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    check_result(name, {**result, "commit": head})


def test_baseline_weights_drop_the_model_keys_the_baseline_does_not_know(tmp_path):
    """The baseline commit's loader refuses the model keys added after it: its copy of the weights drops them (the
    tensors and the other metadata as they were), a file without them is used as it is, and a model the baseline
    cannot build (another instance decoder) is refused, naming the key."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from benchmarks.baseline import baseline_weights

    def write(name, **model):
        path = tmp_path / name
        save_file({"w": torch.arange(3.0)}, str(path), metadata={"format": "x", "model": json.dumps(model)})
        return path

    old = {"architecture": "panonet", "width": 0.5}
    converted = baseline_weights(write("new.safetensors", **old, instance_decoder="embedding", semantic_head="icnet",
                                       thing_classes=[8, 9, 10]), tmp_path)
    assert converted == tmp_path / "baseline-new.safetensors"
    with safe_open(str(converted), "pt") as f:
        assert {k: v if k == "format" else json.loads(v) for k, v in f.metadata().items()} == {"format": "x",
                                                                                               "model": old}
    assert torch.equal(load_file(str(converted))["w"], torch.arange(3.0))
    unchanged = write("old.safetensors", **old)
    assert baseline_weights(unchanged, tmp_path) == unchanged
    with pytest.raises(ValueError, match="model.instance_decoder is 'dcme'; the baseline only has 'embedding'"):
        baseline_weights(write("dcme.safetensors", **old, instance_decoder="dcme"), tmp_path)
