"""A server's launch: the `vllm serve` command line (pure), the pre-launch checks, the supervised host
process tree and its watchdog, the container backend, readiness and the evidence of a failure.

May import: demos/ and below; never model/, budget/, session/ or above.
"""
