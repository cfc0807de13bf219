"""Which vLLM mmdemo talks to and what it says: the `vllm` command and the Python beside it, the version,
the model probe (what vLLM says about a model without loading it), and what its log lines mean.

May import: core/.
"""
