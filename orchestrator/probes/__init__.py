"""Scripts run inside vLLM's own Python (stdlib and vLLM only, nothing from mmdemo)."""
