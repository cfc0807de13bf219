"""The vLLM ports of a matrix's cells: a port number goes to one cell only, whichever node runs it.

A free port is found by binding port 0 on the cell's node, then claimed in the matrix's one book
(a lock here; a Ray actor for the ray engine), so two cells never get the same number: not on one
box, not on two Ray nodes that share a host (the two-node test cluster, host-network containers).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from orchestrator.launch.ports import choose_port

TRIES = 100


class PortBook:
    """The ports handed out in one matrix run."""

    def __init__(self) -> None:
        self._taken: set[int] = set()
        self._lock = threading.Lock()

    def claim(self, port: int) -> bool:
        """Take the port for a cell; False if an earlier cell has it."""
        with self._lock:
            if port in self._taken:
                return False
            self._taken.add(port)
            return True

    def taken(self) -> list[int]:
        """Every port handed out so far, in order."""
        with self._lock:
            return sorted(self._taken)


def free_port(host: str) -> int:
    """A port nothing holds on this node right now (bound to port 0 and released)."""
    return choose_port(host, None)


def cell_port(host: str, claim: Callable[[int], bool], pick: Callable[[str], int] = free_port) -> int:
    """A port free on this node right now that no other cell of the matrix was given."""
    for _ in range(TRIES):
        port = pick(host)
        if claim(port):
            return port
    raise RuntimeError(f"no port on {host} that no other cell holds, after {TRIES} tries")
