"""vllm/runner.py: the one way scripts run in vLLM's Python. Small Python scripts stand in for vLLM's:
a deadline and an interrupt end the whole process group, exit codes and signals become one line with
the script's last words, megabytes of input arrive whole; and which Python runs a `vllm` command is
asked of the command itself (a wrapper script, a `#!/usr/bin/env python3` launcher)."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest
from pydantic import BaseModel

from orchestrator.core.errors import Interrupted, PreflightError
from orchestrator.vllm import runner
from orchestrator.vllm.runner import Process, Script, VllmInfo
from tests import vllm_env
from tests.conftest import marked_pids, wait_for

HOST = VllmInfo("/x/vllm", "0.32.0", python=sys.executable)


class Echo(BaseModel):
    size: int
    env: dict[str, str] = {}


def script(tmp_path: Path, body: str, name: str = "job.py") -> Script:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return Script(path, "the test's script")


def alive(needle: str) -> list[int]:
    """Live processes of this test session whose command line holds `needle`."""
    found = []
    for pid in marked_pids():
        try:
            if needle.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return found


SLEEPER = """
    import pathlib, subprocess, sys, time
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)  # grandchild"])
    pathlib.Path({ready!r}).write_text("x")
    time.sleep(120)
"""


def test_a_script_past_its_deadline_is_ended_with_its_children(tmp_path: Path) -> None:
    ready = tmp_path / "started"
    job = script(tmp_path, SLEEPER.format(ready=str(ready)))
    with pytest.raises(PreflightError) as caught:
        runner.run(HOST, job, Echo, timeout_s=2)
    assert str(caught.value) == "the test's script (job.py) did not answer within 2 s"
    assert ready.exists()
    assert not alive("time.sleep(120)")
    assert not alive(str(job.path))


@pytest.mark.parametrize("interrupt", [Interrupted("SIGINT"), KeyboardInterrupt()], ids=["stop", "ctrl-c"])
def test_an_interrupt_ends_the_process_group_at_once(tmp_path: Path, interrupt: BaseException) -> None:
    ready = tmp_path / "started"
    job = script(tmp_path, SLEEPER.format(ready=str(ready)))

    def check() -> None:
        if ready.exists():
            raise interrupt

    with pytest.raises(type(interrupt)):
        runner.run(HOST, job, Echo, timeout_s=60, check=check)
    assert not alive("time.sleep(120)")
    assert not alive(str(job.path))


def test_an_exit_code_is_one_line_with_the_last_words_and_how_to_see_the_rest(tmp_path: Path) -> None:
    job = script(tmp_path, """
        import sys
        print("INFO vLLM says a lot first", file=sys.stderr)
        print("ValueError: the real reason", file=sys.stderr)
        sys.exit(3)
    """)  # fmt: skip
    with pytest.raises(PreflightError) as caught:
        runner.run(HOST, job, Echo, timeout_s=30)
    assert str(caught.value) == "the test's script (job.py) failed (exit 3): ValueError: the real reason"
    assert caught.value.hint is not None
    assert f"{sys.executable} {job.path}" in caught.value.hint


def test_a_script_killed_by_a_signal_says_which(tmp_path: Path) -> None:
    job = script(tmp_path, "import os, signal; os.kill(os.getpid(), signal.SIGKILL)\n")
    with pytest.raises(PreflightError, match=r"^the test's script \(job\.py\) failed \(killed by SIGKILL\)"):
        runner.run(HOST, job, Echo, timeout_s=30)


def test_an_answer_that_is_not_json_is_the_same_one_line(tmp_path: Path) -> None:
    job = script(tmp_path, "import sys; print('not json'); print('RuntimeError: half', file=sys.stderr)\n")
    with pytest.raises(PreflightError) as caught:
        runner.run(HOST, job, Echo, timeout_s=30)
    assert str(caught.value) == "the test's script (job.py) failed (exit 0): RuntimeError: half"


def test_megabytes_of_input_arrive_whole_at_a_script_that_reads_late(tmp_path: Path) -> None:
    # The script writes before it reads: with communicate() and a pipe's 64 kB, one side would wait forever.
    job = script(tmp_path, """
        import json, sys
        sys.stderr.write("x" * 200_000)
        sys.stderr.flush()
        json.dump({"size": len(sys.stdin.read())}, sys.stdout)
    """)  # fmt: skip
    data = "y" * 5_000_000
    assert runner.run(HOST, job, Echo, data, timeout_s=60).size == len(data)


def test_a_process_started_ahead_answers_later_and_is_ended_when_not_needed(tmp_path: Path) -> None:
    ready = tmp_path / "started"
    job = script(tmp_path, SLEEPER.format(ready=str(ready)))
    with Process(HOST, job) as proc:
        assert proc.pid is not None
        wait_for(lambda: ready.exists() and alive("time.sleep(120)"), timeout_s=30, what="the grandchild")
    assert not alive("time.sleep(120)")
    assert not alive(str(job.path))


def test_a_python_that_cannot_start_is_one_line(tmp_path: Path) -> None:
    job = script(tmp_path, "print(1)\n")
    missing = VllmInfo("/x/vllm", "0.32.0", python=str(tmp_path / "no-python"))
    with pytest.raises(PreflightError, match=r"^cannot run the test's script \(.*no-python\): No such file"):
        runner.run(missing, job, Echo, timeout_s=30)


# -- which Python: asked of the command ------------------------------------------------------------

ECHO_ENV = """
import json, os, sys
sys.stdin.read()
json.dump({"size": 0, "env": {k: os.environ.get(k, "") for k in ("PYTHONPATH", "PYTHONWARNINGS")}}, sys.stdout)
"""


def test_a_wrapper_script_is_asked_which_python_and_its_environment_is_kept(tmp_path: Path) -> None:
    command = vllm_env.wrapper(tmp_path, {"job.py": ECHO_ENV})
    info = runner.host(str(command))
    assert (info.path, info.version, info.python) == (str(command), vllm_env.VERSION, sys.executable)
    assert info.env["PYTHONPATH"] == str(tmp_path / "site")  # the wrapper's export, the question taken out
    answer = runner.run(info, Script(tmp_path / "job.py", "the test's script"), Echo, timeout_s=30)
    assert answer.env == {"PYTHONPATH": str(tmp_path / "site"), "PYTHONWARNINGS": ""}


def test_an_env_launcher_is_asked_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Read from its shebang, `#!/usr/bin/env python3` was an interpreter named /usr/bin/env (exit 126).
    command, env = vllm_env.launcher(tmp_path, {"job.py": ECHO_ENV})
    monkeypatch.setenv("PATH", f"{env['PATH']}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("PYTHONPATH", env["PYTHONPATH"])
    info = runner.host(str(command))
    assert (info.version, info.python) == (vllm_env.VERSION, str(tmp_path / "bin" / "python3"))
    assert runner.run(info, Script(tmp_path / "job.py", "x"), Echo, timeout_s=30).size == 0


def test_a_command_whose_python_has_no_vllm_falls_back_to_its_shebang(tmp_path: Path) -> None:
    command = tmp_path / "vllm"
    command.write_text(f"#!{sys.executable}\nimport sys\nprint('0.1.0')\n")  # answers --version itself
    command.chmod(0o755)
    info = runner.host(str(command))
    assert (info.python, info.version) == (sys.executable, "0.1.0")


@pytest.fixture
def kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache, and no answer remembered in this process: each `host` call asks or reads disk."""
    monkeypatch.setenv("MMDEMO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(runner, "_asked", {})
    return tmp_path / "cache" / "backends"


def counting(command: Path, runs: Path) -> None:
    """Make `command` (a shell script) note each run in `runs`."""
    lines = command.read_text().splitlines(keepends=True)
    command.write_text(lines[0] + f'echo run >> "{runs}"\n' + "".join(lines[1:]))


def test_the_answer_is_kept_until_the_environment_changes(
    tmp_path: Path, kept: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    command = vllm_env.wrapper(tmp_path)
    runs = tmp_path / "runs"
    counting(command, runs)
    first = runner.host(str(command))
    monkeypatch.setattr(runner, "_asked", {})  # a new mmdemo run: only the disk remembers
    again = runner.host(str(command))
    assert again == first
    assert runs.read_text().count("run") == 1  # asked once, then read back
    (answer,) = kept.glob("host-*.json")
    assert answer.stat().st_mode & 0o777 == 0o600  # a wrapper's exports may hold a token
    # `pip install` into the environment: its site-packages changes, and the command is asked again
    site = tmp_path / "site"
    (site / "newpkg-1.0.dist-info").mkdir()
    monkeypatch.setattr(runner, "_asked", {})
    assert runner.host(str(command)).version == vllm_env.VERSION
    assert runs.read_text().count("run") == 2
    # ... and a new wrapper (the command file itself changed) too
    command.write_text(command.read_text() + "# edited\n")
    monkeypatch.setattr(runner, "_asked", {})
    runner.host(str(command))
    assert runs.read_text().count("run") == 3
    # another environment is another question
    monkeypatch.setenv("VLLM_SOMETHING", "1")
    monkeypatch.setattr(runner, "_asked", {})
    runner.host(str(command))
    assert runs.read_text().count("run") == 4


def test_a_command_that_does_not_answer_runs_once_and_is_kept(
    tmp_path: Path, kept: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = tmp_path / "runs"
    command = tmp_path / "bin" / "vllm"
    command.parent.mkdir()
    command.write_text(f"#!{sys.executable}\nopen({str(runs)!r}, 'a').write('run')\nprint('0.2.0')\n")
    command.chmod(0o755)
    assert runner.host(str(command)).version == "0.2.0"
    assert runs.read_text() == "run"  # its `--version` answered the question's run: not run twice
    monkeypatch.setattr(runner, "_asked", {})
    assert (runner.host(str(command)).version, runs.read_text()) == ("0.2.0", "run")
    command.write_text(command.read_text().replace("0.2.0", "0.10.0"))  # reinstalled
    monkeypatch.setattr(runner, "_asked", {})
    assert runner.host(str(command)).version == "0.10.0"


def test_a_kept_answer_that_is_unreadable_is_asked_again(
    tmp_path: Path, kept: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    command = vllm_env.wrapper(tmp_path)
    first = runner.host(str(command))
    (path,) = kept.glob("host-*.json")
    path.write_text("{not json")
    monkeypatch.setattr(runner, "_asked", {})
    assert runner.host(str(command)) == first


def test_a_python_that_is_not_on_this_host_is_refused_with_the_way_out(tmp_path: Path) -> None:
    answer = {"python": "/inside/the/container/python", "env": {}, "vllm": "0.32.0"}
    with pytest.raises(PreflightError) as caught:
        runner.parse_answer(f"MMDEMO-ANSWER {json.dumps(answer)}\n", "/opt/bin/vllm", {})
    assert str(caught.value) == (
        "/opt/bin/vllm runs vLLM with /inside/the/container/python, which is not on this host "
        "(a wrapper around a container?)"
    )
    assert "--image" in (caught.value.hint or "")


# -- in an image (tests/fake_runtime.py as docker: the script runs in the foreground, mounts mapped) ---

HERE = Path(__file__).resolve().parent

INSIDE = """
import json, os, sys
data = sys.stdin.read()
model = os.environ.get("MODEL_DIR", "")
json.dump({"size": len(data), "env": {"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", ""),
           "HF_HUB_CACHE": os.environ.get("HF_HUB_CACHE", ""), "VLLM_X": os.environ.get("VLLM_X", ""),
           "model": str(os.path.isfile(os.path.join(model, "config.json")))}}, sys.stdout)
"""


@pytest.fixture
def image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[runner.Image, Path]:
    """An image (the fake runtime) whose `vllm` is the stand-in wrapper; the file recording each `run`."""
    shim = tmp_path / "docker"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{HERE / "fake_runtime.py"}" docker "$@"\n')
    shim.chmod(0o755)
    command = vllm_env.wrapper(tmp_path / "image")
    record = tmp_path / "runs.jsonl"
    monkeypatch.setenv("FAKE_RUNTIME_RECORD", str(record))
    monkeypatch.setenv("FAKE_RUNTIME_STATE", str(tmp_path / "state"))
    monkeypatch.setenv("FAKE_IMAGE_PATH", str(command.parent))
    monkeypatch.setenv("MMDEMO_CACHE_DIR", str(tmp_path / "cache"))
    hub = tmp_path / "hub"
    hub.mkdir()
    return runner.Image(str(shim), "docker", "example/vllm:1", "sha256:abc", hf_hub_cache=str(hub)), record


def runs(record: Path) -> list[list[str]]:
    return [json.loads(line)["argv"] for line in record.read_text().splitlines()] if record.exists() else []


def test_the_image_is_asked_which_python_once_per_image_id(image: tuple[runner.Image, Path]) -> None:
    where, record = image
    info = runner.in_image(where)
    assert (info.version, info.python, info.image) == (vllm_env.VERSION, sys.executable, where)
    assert info.name == "example/vllm:1 (docker)"
    asked = runs(record)
    assert len(asked) == 1
    assert asked[0][asked[0].index("--entrypoint") + 1] == "vllm"
    assert asked[0][asked[0].index("--network") + 1] == "none"
    assert runner.in_image(where) == info  # the id names the content: asked once
    assert len(runs(record)) == 1


def test_a_script_runs_in_the_image_offline_with_the_model_and_hf_cache_read_only(
    image: tuple[runner.Image, Path], tmp_path: Path
) -> None:
    where, record = image
    info = runner.in_image(where)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    job = script(tmp_path, INSIDE)
    data = "z" * 3_000_000
    answer = runner.run(info, job, Echo, data, timeout_s=60, env={"VLLM_X": "1", "MODEL_DIR": str(model)},
                        mounts=[model])  # fmt: skip
    assert answer.size == len(data)
    assert answer.env == {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": runner.CONTAINER_HF_HUB_CACHE, "VLLM_X": "1",
                          "model": "True"}  # fmt: skip
    argv = runs(record)[-1]
    line = " ".join(argv)
    for words in (
        "run --rm -i --network none --pull=never",
        f"--entrypoint {sys.executable}",
        f"-v {tmp_path}:{runner.SCRIPTS_INSIDE}:ro",
        f"-v {tmp_path / 'hub'}:{runner.CONTAINER_HF_HUB_CACHE}:ro",
        f"-v {model}:{model}:ro",
        f"example/vllm:1 {runner.SCRIPTS_INSIDE}/job.py",
    ):
        assert words in line, (words, line)
    assert "VLLM_X=1" not in line  # values travel in the client's environment, by name in the argv


def test_a_script_in_the_image_past_its_deadline_is_ended(
    image: tuple[runner.Image, Path], tmp_path: Path
) -> None:
    where, _ = image
    info = runner.in_image(where)
    ready = tmp_path / "started"
    job = script(tmp_path, SLEEPER.format(ready=str(ready)))
    with pytest.raises(PreflightError, match=r"did not answer within 2 s"):
        runner.run(info, job, Echo, timeout_s=2)
    assert not alive("time.sleep(120)")
