"""Files written so a reader never sees half of one: a unique temporary file beside the target, renamed
over it only once it is whole, with the mode the umask allows (mkstemp alone makes 0600).

The temporary name comes from mkstemp, never from the process id: a matrix runs its cells as threads
of one process, and two cells writing the same file (one hub cache's refs/main) must not share it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()  # read once, at import (os.umask can only be read by setting it, which is not thread-safe)


@contextmanager
def replacing(path: Path, mode: int | None = None) -> Iterator[IO[bytes]]:
    """A temporary file beside `path`, renamed over it only when the block succeeds (removed otherwise);
    `mode` is the file's permissions, else what the umask allows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
        os.chmod(tmp, 0o666 & ~_UMASK if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: Path, text: str, mode: int | None = None) -> None:
    """Write a text file (UTF-8) so a reader sees the old file or the new one, never half of one."""
    with replacing(path, mode) as out:
        out.write(text.encode("utf-8"))
