"""The GPUs: NVIDIA and AMD detection, the GPU classes variants name, and memory sizing (pure arithmetic).

May import: core/.
"""
