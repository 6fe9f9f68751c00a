"""Proposal-free instance decoders besides PanoNet's embeddings (``postprocess``): DCME centre-of-mass vectors
(``dcme``) and Bridging box voting (``bridging``). Each has a head with ICNet's decoder contract (it can stand in
for PanoNet's ``embedding_decoder``), targets built from instance maps, a loss, and a pure decoding function that
returns a ``postprocess.InstanceMap`` for the existing panoptic merge.

Decode time, measured once on the 2-core development CPU while a training run kept it loaded (load average ~7),
one torch thread, median of 11 interleaved runs on the same synthetic 1/4-resolution maps of a 1024 x 512 frame
(128 x 256 cells, 24 instances of 3 thing classes, 4619 thing cells, predictions = targets + 0.5-pixel noise;
PanoNet's 12-D embeddings with 0.05 noise): ``postprocess.cluster_instances`` (mean shift) 70 ms, ``decode_dcme``
16 ms (0.23 x), ``decode_bridging`` 34 ms (0.49 x; 57 ms, 0.82 x, with top_n=2). With two torch threads on the
loaded machine every decoder ran 15-30 times slower (thread contention), ratios 0.17 / 0.23 / 0.42.
"""

from .bridging import (BridgingHead, BridgingTargets, ScoredInstanceMap, bridging_cascade_loss, bridging_loss,
                       bridging_targets, decode_bridging)
from .dcme import DCMEHead, dcme_cascade_loss, dcme_loss, dcme_targets, decode_dcme

__all__ = ["BridgingHead", "BridgingTargets", "DCMEHead", "ScoredInstanceMap", "bridging_cascade_loss",
           "bridging_loss", "bridging_targets", "dcme_cascade_loss", "dcme_loss", "dcme_targets", "decode_bridging",
           "decode_dcme"]
