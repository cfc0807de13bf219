"""A SkyPilot job's matrix directory, shipped back through the job's own log and unpacked on the driver.

A managed job's cluster is gone once the job ends, and a bucket may not be given, but `sky jobs
launch` streams the job's output to the launcher. So the task's last step prints its matrix
directory as a tar.gz in base64 lines, each marked with the GPU class (SkyPilot may prefix the
lines; the marker is found anywhere in a line), with a count and a SHA-256 to check it whole:

    MMDEMO-RESULTS <class> begin <chunks> <sha256>
    MMDEMO-RESULTS <class> <n> <base64>
    MMDEMO-RESULTS <class> end

On the cluster: `python -m orchestrator.matrix.gather ship RUNS_DIR CLASS` (the newest *-matrix).
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
import sys
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path

MARK = "MMDEMO-RESULTS"
CHUNK = 4096


def newest_matrix(runs_dir: Path) -> Path | None:
    """The newest matrix directory under runs_dir (their names start with a timestamp)."""
    found = sorted(p for p in runs_dir.glob("*-matrix*") if p.is_dir())
    return found[-1] if found else None


def archive(directory: Path) -> bytes:
    """The directory's contents as a tar.gz."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for child in sorted(directory.iterdir()):
            tar.add(child, arcname=child.name)
    return buffer.getvalue()


def lines(label: str, data: bytes) -> Iterator[str]:
    """The marked lines that carry `data` for the GPU class `label`."""
    text = base64.b64encode(data).decode("ascii")
    chunks = [text[i : i + CHUNK] for i in range(0, len(text), CHUNK)]
    yield f"{MARK} {label} begin {len(chunks)} {hashlib.sha256(data).hexdigest()}"
    for n, chunk in enumerate(chunks):
        yield f"{MARK} {label} {n} {chunk}"
    yield f"{MARK} {label} end"


def read(text: str, label: str) -> bytes | None:
    """The data shipped for `label` in a log (the last complete copy), or None when none came whole."""
    pattern = re.compile(
        rf"{MARK} {re.escape(label)} (begin (\d+) ([0-9a-f]{{64}})|end|(\d+) ([A-Za-z0-9+/=]+))"
    )
    found: bytes | None = None
    expected: tuple[int, str] | None = None
    chunks: dict[int, str] = {}
    for line in text.splitlines():
        match = pattern.search(line)
        if match is None:
            continue
        if match.group(2) is not None:
            expected, chunks = (int(match.group(2)), match.group(3)), {}
        elif match.group(1) == "end":
            if expected is not None and sorted(chunks) == list(range(expected[0])):
                data = base64.b64decode("".join(chunks[n] for n in range(expected[0])))
                if hashlib.sha256(data).hexdigest() == expected[1]:
                    found = data
            expected = None
        elif expected is not None:
            chunks[int(match.group(4))] = match.group(5)
    return found


def unpack(data: bytes, dest: Path) -> None:
    """Extract a shipped archive into dest (tar's data filter: no links out, no absolute paths)."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(dest, filter="data")


def main(argv: Sequence[str]) -> int:
    """`ship RUNS_DIR CLASS`: print the newest matrix directory under RUNS_DIR as marked lines."""
    if len(argv) != 3 or argv[0] != "ship":
        print("usage: python -m orchestrator.matrix.gather ship RUNS_DIR CLASS", file=sys.stderr)
        return 2
    runs_dir, label = Path(argv[1]).expanduser(), argv[2]
    matrix_dir = newest_matrix(runs_dir)
    if matrix_dir is None:
        print(f"{MARK} {label} none: no matrix directory under {runs_dir}")
        return 1
    for line in lines(label, archive(matrix_dir)):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
