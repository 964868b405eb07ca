"""The sweep on Ray: cluster, search space, the Tune trainable, the Train worker, the driver's
progress callback and MLflow writer, the sweep directory's records and the end-of-sweep report.

Import the submodules themselves: this package imports nothing, so `records` and `report` can be
read without Ray (by `best`, `infer`, `compare`).
"""
