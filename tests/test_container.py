"""The container run line, pure and table-tested: a launch plan + image + runtime + GPUs -> `docker run ...`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from orchestrator.core.errors import PreflightError, UsageError
from orchestrator.launch import container as c
from orchestrator.launch.command import LaunchPlan, build_plan
from orchestrator.profile.schema import load_profile
from tests.conftest import FAKE_PROFILE

DOCKER = c.Runtime("docker", "/usr/bin/docker")
PODMAN = c.Runtime("podman", "/usr/bin/podman")
LABELS = {c.LABEL_RUN: "run-1", c.LABEL_PID: "42"}


def serve_plan(host: str = "127.0.0.1", port: int = 41234, env: dict[str, str] | None = None) -> LaunchPlan:
    """The fake profile's `vllm serve` plan, as a run builds it."""
    resolved = load_profile(str(FAKE_PROFILE)).resolve("cpu")
    plan = build_plan(resolved, vllm_bin="/venv/bin/vllm", host=host, port=port, media_dir="/cache/assets")
    if env is not None:
        plan = LaunchPlan(**{**plan.__dict__, "env": env, "display_env": env})
    return plan


def plan(runtime: c.Runtime = PODMAN, **kwargs: Any) -> c.ContainerPlan:
    serve = kwargs.pop("serve", None) or serve_plan()
    return c.ContainerPlan(
        serve=serve, runtime=runtime, image="img:1", name="mmdemo-run-1", labels=LABELS, **kwargs
    )


def pairs(argv: tuple[str, ...], flag: str) -> list[str]:
    """Every value given to `flag` in an argv."""
    return [argv[i + 1] for i, word in enumerate(argv[:-1]) if word == flag]


def test_the_image_gets_the_plans_own_argv_bound_inside_on_8000() -> None:
    serve = serve_plan()
    argv = plan(serve=serve).launch.argv
    image_at = argv.index("img:1")
    inside = list(argv[image_at + 1 :])
    expected = list(serve.argv[2:])  # after `vllm serve`: the entrypoint is `vllm serve`
    expected[expected.index("--host") + 1] = "0.0.0.0"
    expected[expected.index("--port") + 1] = "8000"
    assert inside == expected
    assert argv[:4] == ("/usr/bin/podman", "run", "--name", "mmdemo-run-1")


@pytest.mark.parametrize(
    ("host", "published"),
    [
        ("127.0.0.1", "127.0.0.1:41234:8000"),
        ("0.0.0.0", "0.0.0.0:41234:8000"),  # --host as asked
        ("::1", "[::1]:41234:8000"),
    ],
)
def test_the_port_is_published_on_the_asked_host_only(host: str, published: str) -> None:
    launch = plan(serve=serve_plan(host=host)).launch
    assert pairs(launch.argv, "-p") == [published]
    assert (launch.host, launch.port) == (host, 41234)  # where the supervisor's probes go


@pytest.mark.parametrize(
    ("runtime", "gpus", "flags"),
    [
        (DOCKER, (0, 1), ["--gpus", '"device=0,1"']),
        (DOCKER, (3,), ["--gpus", '"device=3"']),
        (DOCKER, (), ["--gpus", "all"]),
        (PODMAN, (0, 1), ["--device", "nvidia.com/gpu=0", "--device", "nvidia.com/gpu=1"]),
        (PODMAN, (), ["--device", "nvidia.com/gpu=all"]),
        (DOCKER, None, []),  # a cpu variant gets no GPU
        (PODMAN, None, []),
    ],
)
def test_gpu_flags(runtime: c.Runtime, gpus: tuple[int, ...] | None, flags: list[str]) -> None:
    assert c.gpu_flags(runtime.name, gpus) == flags
    argv = plan(runtime, gpus=gpus).launch.argv
    words = argv[: argv.index("img:1")]
    found = [
        w
        for i, w in enumerate(words)
        if w in ("--gpus", "--device") or words[i - 1] in ("--gpus", "--device")
    ]
    assert found == flags


def test_init_ipc_labels_and_no_pull_at_run_time() -> None:
    argv = plan().launch.argv
    assert {"--init", "--ipc=host", "--pull=never"} <= set(argv)
    assert pairs(argv, "--label") == ["mmdemo.run=run-1", "mmdemo.pid=42"]
    assert plan().ref.label == "mmdemo.run=run-1"
    assert plan().ref.runtime == "/usr/bin/podman"


def test_podman_reaches_the_hosts_loopback_and_docker_uses_its_bridge() -> None:
    assert pairs(plan(PODMAN).launch.argv, "--network") == [c.PODMAN_NETWORK]
    assert "--network" not in plan(DOCKER).launch.argv


def test_mounts_the_caches_at_the_images_models_and_assets_read_only_then_the_images_own() -> None:
    info = c.ImageInfo(
        "img:1", "sha256:abc", None, (c.Mount("/venv", "/opt/vllm"), c.Mount("/x", "/cache/assets"))
    )
    argv = plan(
        hf_hub_cache="/data/hf-hub",
        vllm_cache="/home/u/.cache/vllm",
        mounts=(
            c.Mount("/cache/models/tiny", "/cache/models/tiny"),
            c.Mount("/cache/assets", "/cache/assets"),
        ),
        image_info=info,
    ).launch.argv
    assert pairs(argv, "-v") == [
        "/data/hf-hub:/root/.cache/huggingface/hub",  # the hub cache, read-write: vLLM may download into it
        "/home/u/.cache/vllm:/root/.cache/vllm",  # vLLM's own cache: no second model inspection
        "/cache/models/tiny:/cache/models/tiny:ro",
        "/cache/assets:/cache/assets:ro",
        "/venv:/opt/vllm:ro",  # the image's own /cache/assets mount is dropped: mmdemo's wins
    ]


def test_the_hub_cache_is_named_inside_and_an_offline_host_keeps_the_container_offline() -> None:
    argv = plan(hf_hub_cache="/data/hf-hub", hf_offline=True).launch.argv
    assert "HF_HUB_CACHE=/root/.cache/huggingface/hub" in pairs(argv, "-e")  # whatever HF_HOME the image sets
    assert "HF_HUB_OFFLINE=1" in pairs(argv, "-e")
    online = plan(hf_hub_cache="/data/hf-hub").launch.argv
    assert [e for e in pairs(online, "-e") if e.startswith("HF_")] == [
        "HF_HUB_CACHE=/root/.cache/huggingface/hub"
    ]
    assert not [e for e in pairs(plan().launch.argv, "-e") if e.startswith("HF_")]  # no cache, nothing said


def test_secrets_go_by_name_and_never_into_the_argv() -> None:
    env = {
        "HF_TOKEN": "hf_secret_value",
        "PLAIN": "1",
        "CUDA_VISIBLE_DEVICES": "2,3",
        "MY_API_KEY": "k-123456",
    }
    serve = serve_plan(env=env)
    serve = LaunchPlan(**{**serve.__dict__, "secrets": ("hf_secret_value",)})
    launch = plan(serve=serve, secret_env={"EXTRA_TOKEN": "tok-abcdef"}).launch
    joined = " ".join(launch.argv)
    for secret in ("hf_secret_value", "k-123456", "tok-abcdef"):
        assert secret not in joined
        assert secret in launch.secrets  # the supervisor's redactor masks them in logs
    assert pairs(launch.argv, "-e") == ["PLAIN=1", "HF_TOKEN", "MY_API_KEY", "EXTRA_TOKEN", "VLLM_API_KEY"]
    assert launch.env == {
        "HF_TOKEN": "hf_secret_value",
        "MY_API_KEY": "k-123456",
        "EXTRA_TOKEN": "tok-abcdef",
    }
    # The cell's GPU selection is the GPU flags' job: inside, the GPUs count from 0.
    assert "CUDA_VISIBLE_DEVICES" not in joined
    assert "CUDA_VISIBLE_DEVICES" not in launch.display_env


def test_the_same_plan_gives_the_same_line() -> None:
    assert plan(gpus=(1,)).launch == plan(gpus=(1,)).launch


def test_a_plan_without_the_run_label_is_refused() -> None:
    broken = c.ContainerPlan(serve=serve_plan(), runtime=DOCKER, image="i", name="n", labels={"a": "b"})
    with pytest.raises(ValueError, match=r"mmdemo\.run"):
        _ = broken.launch


@pytest.mark.parametrize(
    ("devices", "detected", "expected"),
    [("2,3", [0, 1, 2, 3], (2, 3)), (None, [0, 1], (0, 1)), ("", [0], (0,)), (None, [], ())],
)
def test_gpu_indices(devices: str | None, detected: list[int], expected: tuple[int, ...]) -> None:
    assert c.gpu_indices(devices, detected) == expected


def test_run_ids_are_names_the_runtimes_accept() -> None:
    assert c.run_id("20261201-120000-phi 3.5/vision", "a1b2c3") == "20261201-120000-phi-3.5-vision-a1b2c3"
    assert c.run_id("...", "ff") == "run-ff"


@pytest.mark.parametrize(
    ("name", "on_path", "daemon", "expected"),
    [
        (None, {"docker", "podman"}, True, "docker"),  # docker first
        (None, {"docker", "podman"}, False, "podman"),  # a docker client without its daemon gives way
        (None, {"docker"}, False, "docker"),
        (None, {"podman"}, True, "podman"),
        ("podman", {"docker", "podman"}, True, "podman"),
        ("docker", {"docker", "podman"}, False, "docker"),
    ],
)
def test_find_runtime(name: str | None, on_path: set[str], daemon: bool, expected: str) -> None:
    found = c.find_runtime(
        name, which=lambda n: f"/bin/{n}" if n in on_path else None, daemon_answers=lambda d: daemon
    )
    assert found == c.Runtime(expected, f"/bin/{expected}")  # type: ignore[arg-type]


def test_find_runtime_refusals() -> None:
    with pytest.raises(PreflightError, match="neither is on PATH"):
        c.find_runtime(None, which=lambda n: None)
    with pytest.raises(PreflightError, match="`podman` is not on PATH"):
        c.find_runtime("podman", which=lambda n: None)
    with pytest.raises(UsageError, match="not docker or podman"):
        c.find_runtime("lxc", which=lambda n: "/bin/lxc")


MOUNTS = json.dumps([["/usr", "/usr"], ["/venv", "/opt/vllm"]], separators=(",", ":"))


@pytest.mark.parametrize(
    ("inspect", "digest", "mounts"),
    [
        # podman: a Digest even for a local image, labels both under Config and at the top
        (
            {
                "Id": "abc",
                "Digest": "sha256:d1",
                "RepoDigests": [],
                "Config": {"Labels": {c.MOUNTS_LABEL: MOUNTS}},
            },
            "sha256:d1",
            (c.Mount("/usr", "/usr"), c.Mount("/venv", "/opt/vllm")),
        ),
        # docker: the registry digest from RepoDigests; a pulled official image borrows nothing
        (
            {"Id": "sha256:e", "RepoDigests": ["vllm/vllm-openai@sha256:d2"], "Config": {"Labels": None}},
            "sha256:d2",
            (),
        ),
        ({"Id": "sha256:f", "RepoDigests": [], "Config": {}}, None, ()),  # docker, built locally
    ],
)
def test_parse_image_inspect(
    inspect: dict[str, Any], digest: str | None, mounts: tuple[c.Mount, ...]
) -> None:
    info = c.parse_image_inspect("img", json.dumps([inspect]))
    assert (info.id, info.digest, info.mounts) == (inspect["Id"], digest, mounts)


def test_a_broken_mounts_label_is_refused() -> None:
    with pytest.raises(PreflightError, match="not a JSON list"):
        c.parse_mounts("img", {c.MOUNTS_LABEL: "/usr:/usr"})


def test_an_image_borrowing_a_missing_host_directory_is_refused(tmp_path: Path) -> None:
    info = c.ImageInfo("img", "id", None, (c.Mount(str(tmp_path / "gone"), "/opt/vllm"),))
    with pytest.raises(PreflightError, match=r"borrows .*gone from the host"):
        c.check_borrowed(info)


def test_a_profile_or_its_variant_names_the_image(tmp_path: Path) -> None:
    from orchestrator.core.errors import ProfileError
    from orchestrator.profile.schema import parse_profile_text

    text = FAKE_PROFILE.read_text() + "image: vllm/vllm-openai:v0.10.2\n"
    text = text.replace("  cpu: {}", "  cpu: {image: 'localhost/mmdemo/vllm-cpu:test'}")
    profile = parse_profile_text(text, "p.yaml", "p")
    assert profile.resolve("cpu").image == "localhost/mmdemo/vllm-cpu:test"  # the variant's wins
    assert profile.resolve("H100").image == "vllm/vllm-openai:v0.10.2"
    with pytest.raises(ProfileError, match=r"p\.yaml:\d+: image = 'vllm openai'"):
        parse_profile_text(FAKE_PROFILE.read_text() + "image: vllm openai\n", "p.yaml", "p")
