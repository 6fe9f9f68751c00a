"""The Fig. 5 benchmark's twin counting on hand-built instance maps."""

import numpy as np

from benchmarks.mirror import mirror_left_half, twin_pairs


def test_mirror_left_half_copies_the_left_half_mirrored():
    rgb = np.arange(2 * 5 * 3, dtype=np.uint8).reshape(2, 5, 3)
    out = mirror_left_half(rgb)
    assert (out[:, :3] == rgb[:, :3]).all()
    assert (out[:, 3] == rgb[:, 1]).all() and (out[:, 4] == rgb[:, 0]).all()


def test_twins_separate_merged_unmatched_and_the_mirror_line():
    ids = np.full((4, 100), -1)
    ids[1:3, 10:20] = 0   # a car ...
    ids[1:3, 80:90] = 1   # ... and its mirrored twin: separate
    ids[0:2, 30:35] = 2   # a pedestrian whose mirror is the same instance: merged
    ids[0:2, 65:70] = 2
    ids[3, 5:8] = 3       # no twin at all
    ids[3, 49:51] = 4     # on the mirror line: skipped
    counts = twin_pairs(ids, {0: 8, 1: 8, 2: 9, 3: 8, 4: 8})
    assert counts == {"instances": 4, "separate": 2, "merged": 1, "unmatched": 1}
    # a twin of another class is not a separate twin
    assert twin_pairs(ids, {0: 8, 1: 10, 2: 9, 3: 8, 4: 8})["separate"] == 0
