"""Clustering benchmark: ``cluster_embeddings`` against sklearn's ``MeanShift(bin_seeding=True)`` on the CPU.

Workload (issue #3): one thing class's pixel embeddings as a trained PanoNet produces them (12-D, 8 instances of
Dirichlet-distributed sizes, spread 0.06 per dimension so ||x - mu|| ~ delta_v, centres >= 2 delta_d apart),
N in {5k, 20k, 100k} points (a car class at 1024 x 512 covers up to ~100k pixels), bandwidth 0.5. Both run in
this one process on the same points (float32, as the network outputs them; sklearn gets them as float64), on
``--threads`` torch threads (default 1: sklearn's MeanShift with n_jobs=None runs on one core). The result is
their time ratio and whether the partitions are identical (same labels, and adjusted Rand index 1).

    python -m benchmarks.clustering [--quick] [--threads T]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.cluster import MeanShift
from sklearn.metrics import adjusted_rand_score
from torch.utils import benchmark

from panoptic_ros.postprocess import cluster_embeddings

from .common import environment, report

DIM = 12
INSTANCES = 8
SPREAD = 0.06
SEPARATION = 2.0
BANDWIDTH = 0.5


def embeddings(n: int, seed: int = 0) -> np.ndarray:
    """[n, DIM] float32 points in INSTANCES blobs."""
    rng = np.random.default_rng(seed)
    centres: list[np.ndarray] = []
    while len(centres) < INSTANCES:
        c = rng.uniform(-2.5, 2.5, DIM)
        if all(np.linalg.norm(c - d) >= SEPARATION for d in centres):
            centres.append(c)
    which = rng.choice(INSTANCES, n, p=rng.dirichlet(np.full(INSTANCES, 2.0)))
    return (np.asarray(centres)[which] + rng.normal(0, SPREAD, (n, DIM))).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 5k only, short timing runs (smoke test)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as sklearn uses)")
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    cpu = torch.device("cpu")
    rows = []
    for n in (5000,) if opts.quick else (5000, 20000, 100000):
        points = embeddings(n)
        tensor = torch.from_numpy(points)
        labels = cluster_embeddings(tensor, BANDWIDTH)
        timer = benchmark.Timer("f(x, bw)", globals={"f": cluster_embeddings, "x": tensor, "bw": BANDWIDTH})
        ours = timer.blocked_autorange(min_run_time=0.5 if opts.quick else 3.0).median
        start = time.perf_counter()
        reference = MeanShift(bandwidth=BANDWIDTH, bin_seeding=True, min_bin_freq=1, cluster_all=True).fit(
            points.astype(np.float64))
        sklearn_s = time.perf_counter() - start
        rows.append({
            "N": n,
            "seeds": int(len(np.unique(np.round(points.astype(np.float64) / BANDWIDTH), axis=0))),
            "clusters": int(labels.max()) + 1,
            "ours_ms": ours * 1e3,
            "sklearn_ms": sklearn_s * 1e3,
            "speedup": sklearn_s / ours,
            "same_labels": bool(np.array_equal(labels.numpy(), reference.labels_)),
            "adjusted_rand_index": float(adjusted_rand_score(reference.labels_, labels.numpy())),
        })
        print(rows[-1], flush=True)
    payload = {
        **environment(cpu),
        "workload": {"dim": DIM, "instances": INSTANCES, "spread_per_dim": SPREAD, "min_centre_distance": SEPARATION,
                     "bandwidth": BANDWIDTH, "dtype": "float32 (sklearn: float64 of the same values)"},
        "timing": "ours: median of torch.utils.benchmark blocked_autorange; sklearn: one fit (seconds long)",
        "cpu_vs_sklearn": rows,
        "target": ">= 50x faster than sklearn MeanShift(bin_seeding=True) with identical partitions",
    }
    lines = [
        "# Clustering benchmark (CPU): cluster_embeddings vs sklearn MeanShift(bin_seeding=True)",
        "",
        f"commit {payload['commit']}, {payload['date']}, torch {payload['torch']}, {payload['cpu']}, "
        f"{payload['cpu_threads']} torch thread(s); sklearn single-threaded",
        f"{DIM}-D embeddings, {INSTANCES} instances, spread {SPREAD}/dim, centres >= {SEPARATION} apart, "
        f"bandwidth {BANDWIDTH}",
        "",
        "| N | bin seeds | clusters | ours (ms) | sklearn (ms) | speed-up | identical labels | ARI |",
        "|---|---|---|---|---|---|---|---|",
        *(f"| {r['N']} | {r['seeds']} | {r['clusters']} | {r['ours_ms']:.1f} | {r['sklearn_ms']:.0f} | "
          f"{r['speedup']:.0f}x | {'yes' if r['same_labels'] else 'no'} | {r['adjusted_rand_index']:.3f} |"
          for r in rows),
        "",
    ]
    report("clustering", cpu, payload, lines)


if __name__ == "__main__":
    main()
