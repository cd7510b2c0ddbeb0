"""numba kernels: Caffe's solver arithmetic, bit for bit (no I/O, no protobuf, no printing).

``update``     per-blob fused Normalize/Regularize/ComputeUpdateValue/Update for
               SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam; ``sdot`` orders
``lr_policy``  ``GetLearningRate`` for the seven policies, scalar and vectorized
``audit``      the snapshot auditor's recomputations (Nesterov, Adam, gradient witness)
``logscan``    the glog byte scanner behind ``harness.logs.read_runs``

Each module is self-contained (numba's on-disk cache only notices changes to
a function's own file). Importing this package compiles nothing; importing a
module compiles (or loads from the cache) its explicitly typed kernels.
"""

__all__: list[str] = []
