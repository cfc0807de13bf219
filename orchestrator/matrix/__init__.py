"""`mmdemo matrix`: every profile on every GPU class, on this box (local) or a Ray cluster.

run.py is the matrix written out once (plan -> engine -> record). cells.py plans profile x GPU
class (skips with reasons); cell.py runs one cell as a session over a launched target (the one adapter);
local.py and ray_engine.py schedule cells; record.py writes matrix.json / matrix.md / junit.xml;
skypilot.py emits SkyPilot tasks; interrupt.py carries Ctrl-C to cells running in threads.
"""
