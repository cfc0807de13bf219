"""The hub prefetch against a loopback fake hub: plan, disk check, progress, cache reuse, resume."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from orchestrator.core.errors import HubUnavailable, PreflightError
from orchestrator.core.hfenv import HfEnv
from orchestrator.model.prefetch import HubPlan, check_disk, fetch, needs_prefetch, plan
from tests.conftest import REPO, free_port, wait_for
from tests.fake_hub import FakeHub, FakeRepo, serve

MIB = 1 << 20
WEIGHTS = "model.safetensors"
# Bigger than huggingface_hub's 10 MiB read chunk, so an interrupted download leaves bytes on disk.
WEIGHTS_SIZE = 12 * MIB
FILES = {
    "config.json": json.dumps({"architectures": ["TinyForCausalLM"], "hidden_size": 64}).encode(),
    "tokenizer.json": json.dumps({"vocab": {str(i): i for i in range(300)}}).encode(),
    WEIGHTS: random.Random(0).randbytes(WEIGHTS_SIZE),
}
TOTAL = sum(len(b) for b in FILES.values())


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    repos = {
        "org/tiny": FakeRepo("org/tiny", dict(FILES)),
        "org/gated": FakeRepo("org/gated", {"config.json": b"{}"}, gated=True, tokens=frozenset({"hf_good"})),
    }
    with serve(FakeHub(repos)) as running:
        yield running


@pytest.fixture
def env(hub: FakeHub, tmp_path: Path) -> HfEnv:
    return HfEnv(hub_cache=tmp_path / "hub", endpoint=hub.url)


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("Qwen/Qwen2.5-Omni-3B", True),
        ("gpt2", True),
        ("llava-hf/llava-1.5-7b-hf", True),
        ("mmdemo:tiny-omni", False),
        ("/models/phi", False),
        ("./models/phi", False),
        ("~/models/phi", False),
        ("not a/valid id", False),
        ("a/b/c", False),
    ],
)
def test_needs_prefetch(model: str, expected: bool) -> None:
    assert needs_prefetch(model) is expected


def test_needs_prefetch_is_false_for_an_existing_relative_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "org" / "model").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert needs_prefetch("org/model") is False


def test_plan_lists_files_and_sizes_from_the_hub(env: HfEnv, hub: FakeHub) -> None:
    p = plan("org/tiny", env=env)
    assert p.commit == hub.repos["org/tiny"].sha
    assert {f.path: f.size for f in p.files} == {name: len(data) for name, data in FILES.items()}
    assert (p.total_bytes, p.cached_bytes, p.missing_bytes) == (TOTAL, 0, TOTAL)
    assert not hub.downloads(WEIGHTS)  # planning reads metadata only


def test_fetch_downloads_then_a_second_fetch_makes_no_request(env: HfEnv, hub: FakeHub) -> None:
    first = fetch(plan("org/tiny", env=env))
    assert first.bytes_downloaded == TOTAL
    assert first.files_downloaded == len(FILES)
    assert first.path == env.hub_cache / "models--org--tiny" / "snapshots" / hub.repos["org/tiny"].sha
    for name, data in FILES.items():
        assert (first.path / name).read_bytes() == data
    # A load by name (revision main) finds the snapshot through the ref.
    assert (env.hub_cache / "models--org--tiny" / "refs" / "main").read_text() == hub.repos["org/tiny"].sha

    again = plan("org/tiny", env=env)
    assert (again.missing_bytes, again.cached_bytes) == (0, TOTAL)
    before = len(hub.requests)
    second = fetch(again)
    assert (second.bytes_downloaded, second.files_downloaded) == (0, 0)
    assert second.path == first.path
    assert len(hub.requests) == before


def test_two_fetches_of_one_model_at_once_both_succeed(env: HfEnv, hub: FakeHub) -> None:
    # A matrix runs its cells as threads of one process: two cells of one model, planned before either
    # fetched, download, link and write refs/main at the same time (a pid-named temporary ref collided).
    plans = [plan("org/tiny", env=env) for _ in range(2)]
    start = threading.Barrier(2)

    def fetch_after_the_other_is_ready(p: HubPlan) -> Path:
        start.wait(timeout=10)
        return fetch(p).path

    with ThreadPoolExecutor(2) as pool:
        paths = list(pool.map(fetch_after_the_other_is_ready, plans))
    assert paths[0] == paths[1]
    for name, data in FILES.items():
        assert (paths[0] / name).read_bytes() == data
    assert (env.hub_cache / "models--org--tiny" / "refs" / "main").read_text() == hub.repos["org/tiny"].sha
    assert not [f for f in (env.hub_cache / "models--org--tiny" / "refs").iterdir() if f.name != "main"]


def test_offline_plan_uses_the_cache_and_never_the_network(env: HfEnv, hub: FakeHub) -> None:
    fetch(plan("org/tiny", env=env))
    offline = dataclasses.replace(env, offline=True)
    before = len(hub.requests)
    p = plan("org/tiny", env=offline)
    assert p.missing_bytes == 0
    assert {f.path for f in p.files} == set(FILES)
    assert fetch(p).bytes_downloaded == 0
    assert len(hub.requests) == before


def test_offline_plan_refuses_a_model_not_in_the_cache(env: HfEnv, hub: FakeHub) -> None:
    offline = dataclasses.replace(env, offline=True)
    with pytest.raises(HubUnavailable) as err:
        plan("org/tiny", env=offline)
    assert str(err.value) == (
        f"org/tiny is not in the HF cache {env.hub_cache} and HF_HUB_OFFLINE is set: run `hf download org/tiny` "
        "(or `huggingface-cli download org/tiny`) on a machine with access, then copy its models--org--tiny "
        f"folder into {env.hub_cache}"
    )
    assert err.value.exit_code == 3
    assert hub.requests == []


def test_offline_plan_refuses_a_snapshot_without_its_weights(env: HfEnv, hub: FakeHub) -> None:
    fetch(plan("org/tiny", env=env))
    snapshot = env.repo_dir("org/tiny") / "snapshots" / hub.repos["org/tiny"].sha
    (snapshot / WEIGHTS).unlink()  # what `validate`'s download of the small files leaves
    with pytest.raises(
        HubUnavailable, match=r"^org/tiny is incomplete in the HF cache .* \(no weight files\) and "
    ):
        plan("org/tiny", env=dataclasses.replace(env, offline=True))
    (snapshot / WEIGHTS).symlink_to(env.repo_dir("org/tiny") / "blobs" / "gone")  # an interrupted download
    with pytest.raises(HubUnavailable, match=rf"\({WEIGHTS} not downloaded\)"):
        plan("org/tiny", env=dataclasses.replace(env, offline=True))


def test_progress_reports_bytes_up_to_the_total(env: HfEnv) -> None:
    seen: list[tuple[int, int]] = []
    fetch(plan("org/tiny", env=env), lambda done, total: seen.append((done, total)))
    assert seen[-1] == (TOTAL, TOTAL)
    dones = [done for done, _ in seen]
    assert dones == sorted(dones)
    assert any(0 < done < TOTAL for done in dones)
    assert {total for _, total in seen} == {TOTAL}


def test_progress_of_a_cached_model_is_complete_at_once(env: HfEnv) -> None:
    fetch(plan("org/tiny", env=env))
    seen: list[tuple[int, int]] = []
    fetch(plan("org/tiny", env=env), lambda done, total: seen.append((done, total)))
    assert seen == [(TOTAL, TOTAL)]


def test_gated_model_without_token_is_refused_before_any_download(env: HfEnv, hub: FakeHub) -> None:
    with pytest.raises(PreflightError, match=r"^model org/gated is gated and no HF_TOKEN is set$") as err:
        plan("org/gated", env=env)
    assert err.value.hint is not None
    assert f"{hub.url}/org/gated" in err.value.hint
    assert not hub.downloads("config.json")


def test_gated_model_with_a_token_without_access_is_refused(env: HfEnv) -> None:
    with pytest.raises(PreflightError, match=r"^model org/gated is gated and HF_TOKEN has no access to it$"):
        plan("org/gated", env=env, token="hf_wrong")


def test_gated_model_with_a_good_token_downloads(env: HfEnv, hub: FakeHub) -> None:
    got = fetch(plan("org/gated", env=env, token="hf_good"))
    assert (got.path / "config.json").read_bytes() == b"{}"
    assert all(r.headers.get("authorization") == "Bearer hf_good" for r in hub.downloads("config.json"))


@pytest.mark.parametrize(
    ("model", "revision", "message"),
    [
        (
            "org/nope",
            None,
            r"^model org/nope on http://127\.0\.0\.1:\d+ not found \(or private and HF_TOKEN has no access\)$",
        ),
        ("org/tiny", "v9", r"^revision 'v9' of org/tiny on http://127\.0\.0\.1:\d+ does not exist$"),
    ],
)
def test_unknown_repo_or_revision_is_one_line(
    env: HfEnv, model: str, revision: str | None, message: str
) -> None:
    with pytest.raises(PreflightError, match=message):
        plan(model, revision=revision, env=env)


def test_an_unreachable_hub_and_no_cached_copy_is_one_line(tmp_path: Path) -> None:
    env = HfEnv(hub_cache=tmp_path / "hub", endpoint=f"http://127.0.0.1:{free_port()}")  # refused
    with pytest.raises(HubUnavailable) as err:
        plan("org/tiny", env=env)
    message = str(err.value)
    assert message.startswith(
        f"org/tiny is not in the HF cache {tmp_path / 'hub'} and the hub at {env.endpoint} cannot be reached ("
    )
    assert "run `hf download org/tiny`" in message
    assert "\n" not in message


def test_an_unreachable_hub_plans_from_a_complete_cached_snapshot(env: HfEnv, hub: FakeHub) -> None:
    fetch(plan("org/tiny", env=env))
    cut_off = dataclasses.replace(env, endpoint=f"http://127.0.0.1:{free_port()}")
    p = plan("org/tiny", env=cut_off)
    assert (p.commit, p.missing_bytes, p.total_bytes) == (hub.repos["org/tiny"].sha, 0, TOTAL)
    assert fetch(p).path == env.repo_dir("org/tiny") / "snapshots" / hub.repos["org/tiny"].sha


def test_disk_check_refuses_when_the_cache_cannot_hold_what_is_left(env: HfEnv) -> None:
    p = plan("org/tiny", env=env)
    probed: list[Path] = []

    def free(path: Path) -> int:
        probed.append(path)
        return p.missing_bytes - 1

    with pytest.raises(
        PreflightError, match=r"^org/tiny needs 12\.0 MiB more in .*hub, which has 12\.0 MiB free$"
    ):
        check_disk(p, free_space=free)
    assert probed == [env.hub_cache]
    check_disk(p, free_space=lambda _: p.missing_bytes)


def test_disk_check_passes_a_cached_model_on_a_full_disk(env: HfEnv) -> None:
    fetch(plan("org/tiny", env=env))
    check_disk(plan("org/tiny", env=env), free_space=lambda _: 0)


def test_disk_check_default_probe_walks_up_to_an_existing_dir(env: HfEnv) -> None:
    p = plan("org/tiny", env=env)
    assert not env.hub_cache.exists()
    check_disk(p)  # the loopback repo is 12 MiB: any test machine has that free


_CHILD = """
import sys
from orchestrator.model.prefetch import fetch, plan
fetch(plan(sys.argv[1]))
"""


def test_an_interrupted_download_resumes_where_it_stopped(hub: FakeHub, tmp_path: Path) -> None:
    stop_at = 11 * MIB  # the client has written its first 10 MiB chunk by then
    hub.stall_after[WEIGHTS] = stop_at
    env_vars = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf")}
    for name in ("HF_HUB_CACHE", "HF_TOKEN", "HF_HUB_OFFLINE"):
        env_vars.pop(name, None)
    blobs = tmp_path / "hf" / "hub" / "models--org--tiny" / "blobs"
    partial = blobs / (hub.repos["org/tiny"].etag(WEIGHTS) + ".incomplete")

    child = subprocess.Popen([sys.executable, "-c", _CHILD, "org/tiny"], env=env_vars, cwd=REPO)
    try:
        wait_for(lambda: partial.exists() and partial.stat().st_size >= 10 * MIB, 60, "a partial download")
        assert hub.stalled.is_set()
    finally:
        child.kill()
        child.wait()
    kept = partial.stat().st_size

    resumed_plan: HubPlan = plan("org/tiny", env=HfEnv.read(env_vars))
    weights = next(f for f in resumed_plan.files if f.path == WEIGHTS)
    assert (weights.cached, weights.partial) == (False, kept)
    got = fetch(resumed_plan)

    assert got.bytes_downloaded == resumed_plan.missing_bytes < TOTAL
    last = hub.downloads(WEIGHTS)[-1]
    assert last.headers.get("range") == f"bytes={kept}-"
    data = (got.path / WEIGHTS).read_bytes()
    assert hashlib.sha256(data).digest() == hashlib.sha256(FILES[WEIGHTS]).digest()
