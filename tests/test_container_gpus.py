"""The docker path without a daemon, through a fake runtime (tests/fake_runtime.py): each matrix cell's
GPUs as docker's `--gpus '"device=N"'` and podman's CDI devices, read from the recorded argv; and the
watchdog ending a docker container when mmdemo is killed. No marker: it runs wherever the fast suite does."""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.core.options import Options
from orchestrator.gpus.detect import Gpu
from orchestrator.matrix.local import LocalEngine
from orchestrator.matrix.run import run_matrix
from tests.conftest import FAKE_PROFILE, marked_pids, mmdemo, signal_mmdemo, wait_for

HERE = Path(__file__).parent
PROFILES = HERE / "profiles" / "matrix"
A, TP2 = (str(PROFILES / f"{n}.yaml") for n in ("fake-a", "fake-tp2"))
IMAGE = "vllm/vllm-openai:v0.11.0"


@dataclass
class FakeRuntime:
    name: str
    bin_dir: Path
    state: Path
    record: Path

    def runs(self) -> list[list[str]]:
        """Every server's `run` argv, as recorded (not the short `run --rm` that asks the image's vLLM)."""
        if not self.record.exists():
            return []
        argvs = [json.loads(line)["argv"] for line in self.record.read_text().splitlines()]
        return [argv for argv in argvs if "--rm" not in argv]

    def containers(self) -> list[str]:
        return [p.stem for p in self.state.glob("*.json") if not p.name.endswith(".spec.json")]


def install_fake(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeRuntime:
    """The fake runtime as `name`, first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / name
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{HERE / "fake_runtime.py"}" {name} "$@"\n')
    script.chmod(0o755)
    fake = FakeRuntime(name, bin_dir, tmp_path / "runtime-state", tmp_path / "runtime-record.jsonl")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_RUNTIME_STATE", str(fake.state))
    monkeypatch.setenv("FAKE_RUNTIME_RECORD", str(fake.record))
    return fake


@pytest.fixture(params=["docker", "podman"])
def runtime(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeRuntime:
    return install_fake(request.param, tmp_path, monkeypatch)


@pytest.fixture
def docker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeRuntime:
    return install_fake("docker", tmp_path, monkeypatch)


def box(*names: str) -> list[Gpu]:
    memory = {"NVIDIA H100 80GB HBM3": 81559, "NVIDIA L4": 23034}
    return [Gpu(i, n, memory[n], memory[n] - 500, "999.1") for i, n in enumerate(names)]


def gpu_words(argv: list[str]) -> list[str]:
    words = argv[: argv.index(IMAGE)]
    return [
        w
        for i, w in enumerate(words)
        if w in ("--gpus", "--device") or words[i - 1] in ("--gpus", "--device")
    ]


# huggingface_hub keeps one HTTP session per thread: a cell's thread prefetching from the loopback hub
# leaves its kept-alive socket to the collector once the thread is gone (the prefetch's, not the runtime's).
@pytest.mark.filterwarnings("ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning")
def test_each_cell_gets_its_own_gpus_through_the_runtime(
    runtime: FakeRuntime, tmp_path: Path, mmdemo_env: dict[str, str]
) -> None:
    opts = Options(
        offline=True, grace_s=2.0, runs_dir=tmp_path / "runs", timeout_s=20.0, container_runtime=runtime.name
    )
    engine = LocalEngine(lambda: box("NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3", "NVIDIA L4"))
    outcome = run_matrix([A, TP2], [], opts, engine, images=[IMAGE])
    assert outcome.exit_code == 0, outcome.record.model_dump_json(indent=1)
    by_port = {argv[argv.index("-p") + 1].split(":")[1]: argv for argv in runtime.runs()}
    ran = [c for c in outcome.record.cells if c.status != "skipped"]
    assert {c.key for c in ran} == {f"fake-a@H100@{IMAGE}", f"fake-a@L4@{IMAGE}", f"fake-tp2@H100@{IMAGE}"}
    for cell in ran:
        argv = by_port[str(cell.port)]
        if runtime.name == "docker":
            assert gpu_words(argv) == ["--gpus", '"device=' + ",".join(map(str, cell.gpus)) + '"']
        else:
            assert gpu_words(argv) == [w for g in cell.gpus for w in ("--device", f"nvidia.com/gpu={g}")]
        assert "CUDA_VISIBLE_DEVICES" not in " ".join(argv)  # inside, the GPUs count from 0
        assert "--network" in argv if runtime.name == "podman" else "--network" not in argv
        assert cell.image == IMAGE
        assert cell.image_digest == "sha256:" + "d" * 64  # docker's registry digest, from RepoDigests
        assert cell.vllm_version == "0.32.0"  # the server's own /version
        assert cell.containers_remaining == 0
    assert sorted(len(c.gpus) for c in ran) == [1, 1, 2]
    assert runtime.containers() == []
    gc.collect()  # the cells' hub sessions, collected inside this test and not in whichever runs next


def test_sigkill_of_mmdemo_ends_a_docker_container_through_the_watchdog(
    docker: FakeRuntime, tmp_path: Path, mmdemo_env: dict[str, str]
) -> None:
    # (podman's own path is tested with podman itself, test_container_run.py)
    env = {**mmdemo_env, "PATH": os.environ["PATH"]}
    args = [
        "serve",
        str(FAKE_PROFILE),
        "--image",
        IMAGE,
        "--gpu",
        "cpu",
        "--runs-dir",
        str(tmp_path / "runs"),
    ]
    args += ["--grace", "2"]  # no --container-runtime: docker is first on PATH, and its "daemon" answers
    out = tmp_path / "out.txt"
    code = signal_mmdemo(args, env, out, lambda: "serving until Ctrl-C" in out.read_text(), signal.SIGKILL)
    assert code == -9
    (argv,) = docker.runs()
    assert argv[0] == "docker"
    # The client died with mmdemo (PDEATHSIG); the container did not: the watchdog stopped and removed it.
    wait_for(lambda: not docker.containers(), timeout_s=15, what="the watchdog to remove the container")
    wait_for(lambda: not marked_pids(), timeout_s=10, what="the container's processes to be gone")


def test_doctor_names_the_runtime_and_the_vllm_images_at_hand(
    docker: FakeRuntime, mmdemo_env: dict[str, str]
) -> None:
    done = mmdemo("doctor", env={**mmdemo_env, "PATH": os.environ["PATH"]})
    assert done.returncode == 0, done.stderr
    assert f"containers:  docker 27.0.0-fake ({docker.bin_dir / 'docker'}), for --image" in done.stdout
    assert "images:      vllm/vllm-openai:v0.11.0 (0123456789ab)\n" in done.stdout  # busybox is no vLLM


def test_the_profiles_own_image_is_used_without_image_on_the_command_line(
    docker: FakeRuntime, tmp_path: Path, mmdemo_env: dict[str, str]
) -> None:
    profile = tmp_path / "fake-omni.yaml"
    profile.write_text(FAKE_PROFILE.read_text() + f"image: {IMAGE}\n")
    runs = tmp_path / "runs"
    env = {**mmdemo_env, "PATH": os.environ["PATH"]}
    done = mmdemo(
        "run",
        str(profile),
        "--gpu",
        "cpu",
        "--offline",
        "--only",
        "text-only",
        "--runs-dir",
        str(runs),
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(next(runs.glob("*/report.json")).read_text())
    assert report["container"]["image"] == IMAGE
    assert report["container"]["runtime"] == "docker"
    assert report["container"]["run_line"].startswith("docker run --name mmdemo-")
    assert "--gpus" not in report["container"]["run_line"]  # a cpu variant gets no GPU
    assert docker.containers() == []
