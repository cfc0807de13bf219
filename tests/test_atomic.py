"""Atomic writes: a reader sees the old file or the new one; two writers of one file never share a name."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from orchestrator.core.atomic import replacing, write_atomic


def test_a_second_writer_of_the_same_file_meanwhile_does_not_take_the_first_ones_temporary_file(
    tmp_path: Path,
) -> None:
    # The matrix's cells are threads of one process: a name made of the pid is the same for both writers.
    target = tmp_path / "refs" / "main"
    with replacing(target) as first:
        first.write(b"one")
        write_atomic(target, "two")
        assert target.read_text() == "two"
    assert target.read_text() == "one"  # the last to finish wins, and neither failed
    assert [p.name for p in target.parent.iterdir()] == ["main"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "report.md"
    write_atomic(target, "old")

    def fail_halfway() -> None:
        with replacing(target) as out:
            out.write(b"half of the n")
            raise RuntimeError("the writer failed")

    with pytest.raises(RuntimeError):
        fail_halfway()
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_the_mode_is_the_umasks_unless_given(tmp_path: Path) -> None:
    write_atomic(tmp_path / "shared", "x")
    write_atomic(tmp_path / "cache", "x", mode=0o644)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "shared").stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    assert stat.S_IMODE((tmp_path / "cache").stat().st_mode) == 0o644


def test_text_is_written_as_utf_8(tmp_path: Path) -> None:
    write_atomic(tmp_path / "t", "✅ naïve\n")
    assert (tmp_path / "t").read_bytes() == "✅ naïve\n".encode()
