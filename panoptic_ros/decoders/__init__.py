"""Proposal-free instance decoders besides PanoNet's embeddings (``postprocess``): DCME centre-of-mass vectors
(``dcme``) and Bridging box voting (``bridging``). Each has a head with ICNet's decoder contract, targets, a loss and
a pure decoding function returning ``postprocess.InstanceMap``."""
