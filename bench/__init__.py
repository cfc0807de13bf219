"""`python -m bench`: mmdemo's overhead measured against the manual flow, every figure beside its baseline.

One module per scenario (readiness, demos, teardown, overhead, real); each returns rows that put
mmdemo's figure beside a baseline measured in the same run, because this machine is noisy.
"""
