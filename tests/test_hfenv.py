"""One Hugging Face environment: HfEnv resolves HF_HOME, HF_HUB_CACHE, XDG_CACHE_HOME, the endpoint, the token
and offline mode as huggingface_hub does, and prefetch, the container's mount, the disk check and doctor
all name the directory it resolves."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from orchestrator.core.errors import PreflightError
from orchestrator.core.hfenv import HfEnv
from orchestrator.model import prefetch
from tests.conftest import FAKE_PROFILE, mmdemo

HOME = os.path.expanduser("~")
IMAGE = "vllm/vllm-openai:v0.11.0"  # an image the fake runtime has
HERE = Path(__file__).parent


@pytest.mark.parametrize(
    ("environ", "cache", "decided_by"),
    [
        ({}, f"{HOME}/.cache/huggingface/hub", "the default"),
        ({"HF_HOME": "/data/hf"}, "/data/hf/hub", "HF_HOME"),
        ({"XDG_CACHE_HOME": "/xdg"}, "/xdg/huggingface/hub", "XDG_CACHE_HOME"),
        ({"XDG_CACHE_HOME": "/xdg", "HF_HOME": "/data/hf"}, "/data/hf/hub", "HF_HOME"),  # HF_HOME wins
        (
            {"HF_HOME": "/data/hf", "HF_HUB_CACHE": "/fast/hub"},
            "/fast/hub",
            "HF_HUB_CACHE",
        ),  # and this over it
        ({"XDG_CACHE_HOME": "/xdg", "HF_HUB_CACHE": "/fast/hub"}, "/fast/hub", "HF_HUB_CACHE"),
        ({"HUGGINGFACE_HUB_CACHE": "/old/hub"}, "/old/hub", "HUGGINGFACE_HUB_CACHE"),  # the old name
        ({"HF_HUB_CACHE": "~/hub"}, f"{HOME}/hub", "HF_HUB_CACHE"),
        ({"HF_HOME": "", "XDG_CACHE_HOME": "/xdg"}, "/xdg/huggingface/hub", "XDG_CACHE_HOME"),  # empty: unset
    ],
)
def test_the_hub_cache_is_resolved_as_huggingface_hub_does(
    environ: dict[str, str], cache: str, decided_by: str
) -> None:
    hf = HfEnv.read(environ)
    assert hf.hub_cache == Path(cache)
    assert hf.hub_cache_from == decided_by
    assert hf.where == f"{cache} ({decided_by})"


@pytest.mark.parametrize(
    ("environ", "endpoint", "offline"),
    [
        ({}, "https://huggingface.co", False),
        ({"HF_ENDPOINT": "http://127.0.0.1:9/", "HF_HUB_OFFLINE": "1"}, "http://127.0.0.1:9", True),
        ({"HF_HUB_OFFLINE": "TRUE"}, "https://huggingface.co", True),
        ({"HF_HUB_OFFLINE": "0"}, "https://huggingface.co", False),
        ({"TRANSFORMERS_OFFLINE": "1"}, "https://huggingface.co", True),
    ],
)
def test_endpoint_and_offline(environ: dict[str, str], endpoint: str, offline: bool) -> None:
    hf = HfEnv.read(environ)
    assert (hf.endpoint, hf.offline) == (endpoint, offline)


def test_the_token_comes_from_the_environment_else_the_token_file_of_that_hf_home(tmp_path: Path) -> None:
    xdg = tmp_path / "xdg"
    (xdg / "huggingface").mkdir(parents=True)
    (xdg / "huggingface" / "token").write_text("hf_from_file\n")
    from_file = HfEnv.read({"XDG_CACHE_HOME": str(xdg)})
    assert from_file.token == "hf_from_file"
    assert from_file.token_source == f"the token file {xdg / 'huggingface' / 'token'}"
    from_env = HfEnv.read({"XDG_CACHE_HOME": str(xdg), "HF_TOKEN": "hf_secret"})
    assert (from_env.token, from_env.token_source) == ("hf_secret", "the environment")
    assert "hf_secret" not in repr(from_env)
    (tmp_path / "elsewhere").write_text("hf_path\n")
    by_path = HfEnv.read({"XDG_CACHE_HOME": str(xdg), "HF_TOKEN_PATH": str(tmp_path / "elsewhere")})
    assert by_path.token == "hf_path"
    assert HfEnv.read({"HF_HOME": str(tmp_path / "empty")}).token_source is None

    from orchestrator.launch import checks  # the token check and `${HF_TOKEN}` read the same file

    assert checks.hf_token({"XDG_CACHE_HOME": str(xdg)}) == "hf_from_file"
    assert checks.user_env({"XDG_CACHE_HOME": str(xdg)})["HF_TOKEN"] == "hf_from_file"


def fake_docker(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """tests/fake_runtime.py as `docker`, first on PATH: the variables to run with, and its record of `run`s."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "docker"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{HERE / "fake_runtime.py"}" docker "$@"\n')
    script.chmod(0o755)
    record = tmp_path / "runtime-record.jsonl"
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "FAKE_RUNTIME_STATE": str(tmp_path / "runtime-state"),
        "FAKE_RUNTIME_RECORD": str(record),
    }
    return env, record


@pytest.mark.parametrize("hub_cache_set", [False, True], ids=["XDG_CACHE_HOME", "HF_HUB_CACHE"])
def test_prefetch_the_container_mount_the_disk_check_and_doctor_name_one_hf_cache(
    tmp_path: Path, mmdemo_env: dict[str, str], hub_cache_set: bool
) -> None:
    xdg = tmp_path / "xdg"
    env = {k: v for k, v in mmdemo_env.items() if k not in ("HF_HOME", "HF_HUB_CACHE", "HF_TOKEN")}
    env["XDG_CACHE_HOME"] = str(xdg)  # and no HF_HOME: huggingface_hub's cache is $XDG_CACHE_HOME/huggingface
    expected, decided_by = xdg / "huggingface" / "hub", "XDG_CACHE_HOME"
    if hub_cache_set:
        env["HF_HUB_CACHE"] = str(tmp_path / "fast-hub")
        expected, decided_by = tmp_path / "fast-hub", "HF_HUB_CACHE"
    (xdg / "huggingface").mkdir(parents=True)
    (xdg / "huggingface" / "token").write_text("hf_logged_in\n")  # `hf auth login` under XDG_CACHE_HOME
    runtime_env, record = fake_docker(tmp_path)
    env.update(runtime_env)

    # prefetch and the container's mount: a run of a hub model (fake/omni, on the session's loopback hub)
    runs = tmp_path / "runs"
    done = mmdemo(
        "run", str(FAKE_PROFILE), "--image", IMAGE, "--gpu", "cpu", "--offline", "--only", "text-only",
        "--runs-dir", str(runs), "--grace", "2", env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(next(runs.glob("*/report.json")).read_text())
    assert report["download"]["hf_cache"] == str(expected)
    assert Path(report["download"]["path"]).is_relative_to(expected)
    assert (expected / "models--fake--omni" / "refs" / "main").is_file()
    runs_recorded = [json.loads(line)["argv"] for line in record.read_text().splitlines()]
    (argv,) = [a for a in runs_recorded if "-p" in a]  # the server's; not a script run in the image (--rm)
    volumes = [argv[i + 1] for i, word in enumerate(argv[:-1]) if word == "-v"]
    assert f"{expected}:/root/.cache/huggingface/hub" in volumes
    assert "HF_HUB_CACHE=/root/.cache/huggingface/hub" in argv
    assert not (Path(HOME) / ".cache" / "huggingface" / "hub" / "models--fake--omni").exists()

    # the disk check: a model not fetched yet, on a disk with no room
    hub = prefetch.plan("fake/a", env=HfEnv.read(env))
    probed: list[Path] = []
    with pytest.raises(PreflightError, match=rf"^fake/a needs .* more in {expected}, which has 0 B free$"):
        prefetch.check_disk(hub, free_space=lambda d: probed.append(d) or 0)
    assert probed == [expected]

    # doctor
    doctor = mmdemo("doctor", env=env)
    assert doctor.returncode == 0, doctor.stderr
    assert f"HF cache:    {expected} (from {decided_by}, " in doctor.stdout
    assert f"HF token:    present (from the token file {xdg / 'huggingface' / 'token'})" in doctor.stdout
    assert f"HF hub:      {env['HF_ENDPOINT']}\n" in doctor.stdout
