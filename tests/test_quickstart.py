"""--quick-start: eager, no compilation, a small batch limit, only where the profile sets none."""

from __future__ import annotations

import pytest

from orchestrator.launch.command import QUICK_MAX_NUM_SEQS, quick_start, serve_args
from orchestrator.profile.schema import ServeSettings

EAGER = "--enforce-eager"
O0 = "--optimization-level 0"
SEQS = f"--max-num-seqs {QUICK_MAX_NUM_SEQS}"


@pytest.mark.parametrize(
    ("serve", "added", "argv_tail"),
    [
        pytest.param(
            {},
            (EAGER, O0, SEQS),
            [EAGER, "--optimization-level", "0", "--max-num-seqs", str(QUICK_MAX_NUM_SEQS)],
            id="nothing-set",
        ),
        pytest.param(
            {"enforce_eager": True},
            (O0, SEQS),
            [EAGER, "--optimization-level", "0", "--max-num-seqs", str(QUICK_MAX_NUM_SEQS)],
            id="eager-already",
        ),
        pytest.param(
            {"enforce_eager": False},
            (O0, SEQS),
            ["--no-enforce-eager", "--optimization-level", "0", "--max-num-seqs", str(QUICK_MAX_NUM_SEQS)],
            id="profile-wants-graphs",
        ),
        pytest.param(
            {"extra_args": ("--max-num-seqs", "4")},
            (EAGER, O0),
            [EAGER, "--max-num-seqs", "4", "--optimization-level", "0"],
            id="own-batch-limit",
        ),
        pytest.param(
            {"extra_args": ("--max-num-seqs=4",)},
            (EAGER, O0),
            [EAGER, "--max-num-seqs=4", "--optimization-level", "0"],
            id="own-batch-limit-equals",
        ),
        pytest.param(
            {"extra_args": ("-O3",)},
            (EAGER, SEQS),
            [EAGER, "-O3", "--max-num-seqs", str(QUICK_MAX_NUM_SEQS)],
            id="own-O-level",
        ),
        pytest.param(
            {"extra_args": ("--optimization-level", "2")},
            (EAGER, SEQS),
            [EAGER, "--optimization-level", "2", "--max-num-seqs", str(QUICK_MAX_NUM_SEQS)],
            id="own-optimization-level",
        ),
        pytest.param(
            {"extra_args": ("--compilation-config", '{"mode":3}')},
            (EAGER, SEQS),
            [EAGER, "--compilation-config", '{"mode":3}', "--max-num-seqs", str(QUICK_MAX_NUM_SEQS)],
            id="own-compilation-config",
        ),
        pytest.param(
            {"extra_args": ("--compilation-config.mode", "3", "--seed", "0")},
            (EAGER, SEQS),
            [
                EAGER,
                "--compilation-config.mode",
                "3",
                "--seed",
                "0",
                "--max-num-seqs",
                str(QUICK_MAX_NUM_SEQS),
            ],
            id="own-dotted-compilation-config",
        ),
        pytest.param(
            {"extra_args": ("-cc", "{}", "--max-num-seqs", "2")},
            (EAGER,),
            [EAGER, "-cc", "{}", "--max-num-seqs", "2"],
            id="everything-but-eager-set",
        ),
    ],
)
def test_quick_start(serve: dict[str, object], added: tuple[str, ...], argv_tail: list[str]) -> None:
    settings = ServeSettings(max_model_len=2048, **serve)  # type: ignore[arg-type]
    quick, got = quick_start(settings)
    assert got == added
    assert serve_args(quick) == ["--max-model-len", "2048", *argv_tail]


def test_quick_start_keeps_the_other_settings_and_the_input() -> None:
    settings = ServeSettings(dtype="float32", kv_cache_memory_bytes="256M", limit_mm_per_prompt={"image": 2})
    quick, _ = quick_start(settings)
    assert quick.model_dump(exclude={"enforce_eager", "extra_args"}) == settings.model_dump(
        exclude={"enforce_eager", "extra_args"}
    )
    assert settings.enforce_eager is None
    assert settings.extra_args == ()


def test_quick_start_is_idempotent() -> None:
    once, _ = quick_start(ServeSettings())
    twice, added = quick_start(once)
    assert added == ()
    assert twice == once


def test_bench_launches_differ_only_in_the_quick_start_flags() -> None:
    from bench.quickstart import variants
    from orchestrator.launch.command import serve_args

    launches = {name: serve_args(r.serve) for name, r in variants().items()}
    assert "--no-enforce-eager" in launches["compile"]
    assert "--optimization-level" not in launches["compile"]
    assert "--enforce-eager" in launches["profile"]
    quick = launches["quick-start"]
    assert quick[quick.index("--optimization-level") + 1] == "0"
    assert quick[quick.index("--max-num-seqs") + 1] == str(QUICK_MAX_NUM_SEQS)
    # quick_start leaves an explicit `enforce_eager: false` alone: -O0 is what turns compilation off.
    assert "--no-enforce-eager" in quick
    common = [a for a in launches["compile"] if a != "--no-enforce-eager"]
    assert all(a in quick for a in common)
