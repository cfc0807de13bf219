"""The container runtime's own failures diagnosed from the server log: runc refusing RLIMIT_NOFILE says
that CONTAINERS_CONF must point at the configuration `make install-podman` wrote, not only "exit 126"."""

from __future__ import annotations

from pathlib import Path

from orchestrator.launch.evidence import server_error
from orchestrator.launch.runtime_failures import diagnose_runtime
from orchestrator.vllm.logscan import LogFollower

LOG = Path(__file__).parent / "logs" / "podman-runc-rlimit.log"


def lines() -> list[str]:
    return LOG.read_text().splitlines()


def test_runc_rlimit_names_the_configuration_install_podman_wrote(tmp_path: Path) -> None:
    conf = tmp_path / ".containers" / "containers.conf"
    conf.parent.mkdir()
    conf.write_text("[containers]\ndefault_ulimits = []\n")
    found = diagnose_runtime(lines(), {}, conf)
    assert found is not None
    assert "open-files limit (RLIMIT_NOFILE)" in found.message
    assert found.hint == (
        f"CONTAINERS_CONF must point at the configuration `make install-podman` wrote: "
        f"export CONTAINERS_CONF={conf}"
    )


def test_without_the_configuration_it_says_how_to_get_one(tmp_path: Path) -> None:
    found = diagnose_runtime(lines(), {}, tmp_path / "absent.conf")
    assert found is not None
    assert found.hint.startswith("run `make install-podman`: it writes")
    assert "default_ulimits = []" in found.hint


def test_a_configuration_that_does_not_fix_it_is_named(tmp_path: Path) -> None:
    found = diagnose_runtime(lines(), {"CONTAINERS_CONF": "/etc/mine.conf"}, tmp_path / "c.conf")
    assert found is not None
    assert found.hint.startswith("CONTAINERS_CONF=/etc/mine.conf is set but does not fix it")


def test_crun_and_docker_spellings(tmp_path: Path) -> None:
    crun = ["Error: crun: setrlimit `RLIMIT_NOFILE`: Operation not permitted: OCI permission denied"]
    assert diagnose_runtime(crun, {}, tmp_path / "c") is not None
    docker = [
        "docker: Error response from daemon: failed to create task for container: runc create failed: "
        "unable to start container process: error during container init: error setting rlimits for ready "
        "process: error setting rlimit type 7: operation not permitted: unknown."
    ]
    found = diagnose_runtime(docker, {}, tmp_path / "c")
    assert found is not None
    assert "daemon.json" in found.hint
    hybrid = ["Error: crun: cgroups in hybrid mode not supported, drop all controllers from cgroupv2"]
    found = diagnose_runtime(hybrid, {}, tmp_path / "c")
    assert found is not None
    assert 'runtime = "runc"' in found.hint


def test_a_vllm_log_is_no_runtime_failure() -> None:
    vllm = (Path(__file__).parent / "logs" / "vllm-0.32-cpu-startup.log").read_text().splitlines()
    assert diagnose_runtime(vllm, {}) is None


def test_the_server_error_carries_the_diagnosis() -> None:
    follower = LogFollower(LOG)
    follower.poll()
    error = server_error(
        "vllm serve exited before it was ready",
        argv=["podman", "run"],
        follower=follower,
        redact=lambda text: text,
        returncode=126,
        hint="the container runtime did not start it: its reason is the log's last line",
    )
    assert str(error).startswith("vllm serve exited before it was ready: exited with code 126")
    assert "(the container runtime cannot set the container's open-files limit (RLIMIT_NOFILE)" in str(error)
    assert error.hint is not None
    assert "CONTAINERS_CONF" in error.hint
