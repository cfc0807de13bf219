"""`mmdemo matrix --emit skypilot` validated offline with SkyPilot's own loaders; `--launch` with a fake `sky`.

The fake (tests/fakes/fake_sky.py) records every `sky jobs launch`, holds each at a barrier until the
expected number have started (so overlapping launches are seen, not assumed), and prints what the
managed job prints: its class's matrix directory, through the real gather.py, in prefixed log lines.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.core.errors import UsageError
from orchestrator.core.options import Options
from orchestrator.matrix import gather, skypilot
from orchestrator.matrix import record as record_mod
from tests.conftest import FAKES, mmdemo, signal_mmdemo

PROFILES = Path(__file__).parent / "profiles" / "matrix"
A, TP2 = (str(PROFILES / f"{n}.yaml") for n in ("fake-a", "fake-tp2"))
# SkyPilot 0.14 imports SQLAlchemy's pre-2.0 API, which warns; that is SkyPilot's, not ours.
SKYPILOT_WARNINGS = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@SKYPILOT_WARNINGS
def test_several_classes_are_a_job_group_that_skypilot_accepts(tmp_path: Path) -> None:
    import sky
    from sky.utils import dag_utils

    text = skypilot.emit(
        [A, TP2], ["H100", "L4", "A100-80GB", "A100-40GB"], Options(offline=True), bucket="mm-results"
    )
    docs = list(yaml.safe_load_all(text))
    # A job group: SkyPilot starts every class's cluster at once, not one after another.
    assert docs[0] == {"name": "mmdemo-matrix", "execution": "parallel", "inter_connection": False}
    tasks = {d["name"]: d for d in docs[1:]}
    # No profile fits an A100-40GB (fake-a's variant needs 60 GiB): no cluster is rented for it.
    assert set(tasks) == {"mmdemo-matrix-h100", "mmdemo-matrix-l4", "mmdemo-matrix-a100-80gb"}
    for config in tasks.values():
        task = sky.Task.from_yaml_config(copy.deepcopy(config))  # SkyPilot's own validation, offline
        assert task.num_nodes == 1
        assert config["secrets"] == {"HF_TOKEN": None}
        assert config["file_mounts"] == {"/mmdemo-out": {"name": "mm-results", "mode": "MOUNT"}}
    # The largest GPU count a class's cells need: fake-tp2 wants two H100s.
    assert tasks["mmdemo-matrix-h100"]["resources"]["accelerators"] == "H100:2"
    assert tasks["mmdemo-matrix-l4"]["resources"]["accelerators"] == "L4:1"
    # fake-tp2 has no A100-80GB variant: it falls back to its H100 one, the largest that fits.
    assert tasks["mmdemo-matrix-a100-80gb"]["resources"]["accelerators"] == "A100-80GB:2"
    run = tasks["mmdemo-matrix-l4"]["run"]
    assert f"mmdemo matrix {A} {TP2} --gpu L4 --engine ray --runs-dir /mmdemo-out/L4 --offline" in run
    assert "python -m orchestrator.matrix.gather ship /mmdemo-out/L4 L4" in run  # results through the log
    assert '"mmdemo-gpu:L4\\": $SKYPILOT_NUM_GPUS_PER_NODE' in run
    path = tmp_path / "matrix.sky.yaml"
    path.write_text(text)
    assert dag_utils.is_job_group_yaml(str(path))
    group = dag_utils.load_job_group_from_yaml(str(path))
    assert group.is_job_group()
    assert [t.name for t in group.tasks] == [
        "mmdemo-matrix-h100",
        "mmdemo-matrix-l4",
        "mmdemo-matrix-a100-80gb",
    ]


@SKYPILOT_WARNINGS
def test_the_pipeline_stays_available_for_one_after_another(tmp_path: Path) -> None:
    from sky.utils import dag_utils

    text = skypilot.emit([A, TP2], ["H100", "L4"], Options(), bucket=None, pipeline=True)
    docs = list(yaml.safe_load_all(text))
    assert docs[0] == {"name": "mmdemo-matrix"}  # a pipeline's header: serial
    path = tmp_path / "pipeline.sky.yaml"
    path.write_text(text)
    assert not dag_utils.is_job_group_yaml(str(path))
    dag = dag_utils.load_chain_dag_from_yaml(str(path))
    assert [t.name for t in dag.tasks] == ["mmdemo-matrix-h100", "mmdemo-matrix-l4"]


@SKYPILOT_WARNINGS
def test_one_class_is_a_single_task() -> None:
    import sky

    text = skypilot.emit([A], ["a100-80gb"], Options(), bucket=None)
    (config,) = yaml.safe_load_all(text)
    assert sky.Task.from_yaml_config(copy.deepcopy(config)).name == "mmdemo-matrix-a100-80gb"
    assert config["resources"]["accelerators"] == "A100-80GB:1"
    assert "file_mounts" not in config
    assert "--runs-dir ~/mmdemo-runs/A100-80GB" in config["run"]


@SKYPILOT_WARNINGS
def test_an_amd_class_installs_vllms_rocm_wheels() -> None:
    import sky

    configs = skypilot.tasks([A], ["MI300X", "H100"], Options(), bucket=None)
    amd, nvidia = configs["MI300X"], configs["H100"]
    assert sky.Task.from_yaml_config(copy.deepcopy(amd)).name == "mmdemo-matrix-mi300x"
    assert amd["resources"]["accelerators"] == "MI300X:1"
    assert "--python 3.12" in amd["setup"]  # vLLM's ROCm wheels are for Python 3.12 only
    assert "'vllm[audio]' --extra-index-url https://wheels.vllm.ai/rocm/" in amd["setup"]
    assert "wheels.vllm.ai" not in nvidia["setup"]  # PyPI's vllm is the CUDA build


@pytest.mark.parametrize(
    ("classes", "message"),
    [
        (["H2000"], "--emit skypilot: unknown GPU class 'H2000'"),  # SkyPilot itself accepts it offline
        (["cpu"], "--emit skypilot: cpu is not a GPU class; SkyPilot tasks here are for GPUs"),
        ([], "--emit skypilot needs the GPU classes to ask the cloud for: --gpu H100,L4,..."),
        (["T4"], "no profile can run on T4: nothing to emit"),
    ],
)
def test_what_cannot_be_emitted_is_refused(classes: list[str], message: str) -> None:
    with pytest.raises(UsageError) as caught:
        skypilot.emit([TP2], classes, Options(), bucket=None)
    assert str(caught.value) == message


def test_every_mmdemo_gpu_class_has_a_skypilot_name() -> None:
    from orchestrator.gpus.detect import GPU_CLASSES

    assert set(skypilot.SKY_ACCELERATORS) == set(GPU_CLASSES)
    assert skypilot.accelerator("A100-40GB") == "A100"  # SkyPilot's plain A100 is the 40 GB card


# -- the results channel --------------------------------------------------------------------------


def test_a_matrix_directory_survives_the_trip_through_a_prefixed_log(tmp_path: Path) -> None:
    source = tmp_path / "runs" / "20261202-120000-matrix"
    (source / "fake-a-H100").mkdir(parents=True)
    (source / "matrix.json").write_text('{"x": 1}')
    (source / "fake-a-H100" / "server.log").write_bytes(os.urandom(20_000))  # several chunks
    shipped = list(gather.lines("H100", gather.archive(source)))
    log = "\n".join(
        f"\x1b[36m(mmdemo-matrix-h100, pid=7) \x1b[0m{line}" for line in ["noise", *shipped, "bye"]
    )
    data = gather.read(log, "H100")
    assert data is not None
    gather.unpack(data, tmp_path / "back")
    assert (tmp_path / "back" / "fake-a-H100" / "server.log").read_bytes() == (
        source / "fake-a-H100" / "server.log"
    ).read_bytes()
    assert gather.read(log, "L4") is None  # another class's results are not these
    assert gather.read("\n".join(shipped[:-2] + shipped[-1:]), "H100") is None  # a chunk lost: nothing


# -- --launch: one managed job per class, at once -------------------------------------------------


def fake_sky(tmp_path: Path, env: dict[str, str], **switches: str) -> dict[str, str]:
    """PATH with the fake `sky` first, run by this venv's Python; FAKE_SKY_* switches set."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    sky = bin_dir / "sky"
    sky.write_text(
        f"#!{sys.executable}\nimport runpy\nrunpy.run_path({str(FAKES / 'fake_sky.py')!r}, run_name='__main__')\n"
    )
    sky.chmod(0o755)
    extra = {f"FAKE_SKY_{k.upper()}": v for k, v in switches.items()}
    return {
        **env,
        "PATH": f"{bin_dir}{os.pathsep}{env['PATH']}",
        "FAKE_SKY_CALLS": str(tmp_path / "calls"),
        **extra,
    }


def calls(tmp_path: Path) -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in (tmp_path / "calls").glob("*.json")}


def test_launch_starts_one_job_per_class_together_and_gathers_one_matrix(
    tmp_path: Path, mmdemo_env: dict[str, str]
) -> None:
    secret = "hf_never_in_the_yaml_123"
    env = fake_sky(tmp_path, {**mmdemo_env, "HF_TOKEN": secret}, together="2")
    runs = tmp_path / "runs"
    done = mmdemo("matrix", A, TP2, "--gpu", "h100,MI300X", "--launch", "--runs-dir", str(runs), env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    seen = calls(tmp_path)
    assert set(seen) == {"mmdemo-matrix-h100", "mmdemo-matrix-mi300x"}
    h100, amd = seen["mmdemo-matrix-h100"], seen["mmdemo-matrix-mi300x"]
    assert h100["saw"] == amd["saw"] == 2  # each launch was running when the other started
    assert h100["started"] < amd["ended"]
    assert amd["started"] < h100["ended"]
    matrix_dir = next(runs.glob("*-matrix"))
    for name, call in seen.items():
        gpu_class = "H100" if name.endswith("h100") else "MI300X"
        task = str(matrix_dir / "sky" / f"{gpu_class}.sky.yaml")
        assert call["argv"] == ["jobs", "launch", "--yes", "--name", name, task, "--secret", "HF_TOKEN"]
        assert secret not in call["task"]
    record = record_mod.load(matrix_dir / "matrix.json")  # one matrix for every class
    assert record.engine == "skypilot"
    assert record.exit_code == 0
    assert {(c.profile, c.gpu_class, c.status) for c in record.cells} == {
        ("fake-a", "H100", "passed"),
        ("fake-tp2", "H100", "passed"),
        ("fake-a", "MI300X", "passed"),
        ("fake-tp2", "MI300X", "passed"),
    }
    for cell in record.cells:  # the cells' own directories, gathered beside each other
        assert (matrix_dir / str(cell.directory) / "report.md").is_file()
    assert (matrix_dir / "sky" / "MI300X.log").is_file()  # each job's log, kept
    assert "| fake-a |" in (matrix_dir / "matrix.md").read_text()
    assert "matrix   4 cell(s), 4 to run, on skypilot" in done.stdout
    assert "fake-tp2@MI300X" in done.stdout  # a line per cell, as each class's job comes back


def test_a_class_whose_job_brings_nothing_back_fails_its_cells_only(
    tmp_path: Path, mmdemo_env: dict[str, str]
) -> None:
    env = fake_sky(tmp_path, mmdemo_env, together="2", fail="MI300X")
    runs = tmp_path / "runs"
    done = mmdemo("matrix", A, "--gpu", "H100,MI300X", "--launch", "--runs-dir", str(runs), env=env)
    assert done.returncode == 3, done.stdout + done.stderr
    record = record_mod.load(next(runs.glob("*-matrix")) / "matrix.json")
    cells = {c.key: c for c in record.cells}
    assert cells["fake-a@H100"].status == "passed"
    assert cells["fake-a@MI300X"].status == "error"
    assert cells["fake-a@MI300X"].reason == (
        "SkyPilot job mmdemo-matrix-mi300x brought back no results (exit 1; see sky/MI300X.log)"
    )


def test_launch_with_pipeline_runs_one_job_of_every_class(tmp_path: Path, mmdemo_env: dict[str, str]) -> None:
    env = fake_sky(tmp_path, mmdemo_env)
    runs = tmp_path / "runs"
    done = mmdemo("matrix", A, "--gpu", "H100,L4", "--launch", "--pipeline", "--runs-dir", str(runs), env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    (call,) = calls(tmp_path).values()
    assert call["argv"][:5] == ["jobs", "launch", "--yes", "--name", "mmdemo-matrix"]
    assert call["argv"][5].endswith("sky/pipeline.sky.yaml")
    record = record_mod.load(next(runs.glob("*-matrix")) / "matrix.json")
    assert {(c.gpu_class, c.status) for c in record.cells} == {("H100", "passed"), ("L4", "passed")}


def test_launch_without_sky_says_how_to_get_it(tmp_path: Path, mmdemo_env: dict[str, str]) -> None:
    env = {**mmdemo_env, "PATH": str(tmp_path)}
    done = mmdemo("matrix", A, "--gpu", "H100", "--launch", "--runs-dir", str(tmp_path / "runs"), env=env)
    assert done.returncode == 3
    assert "the `sky` command was not found" in done.stderr
    assert not (tmp_path / "runs").exists()


def test_ctrl_c_stops_the_launchers_and_says_the_jobs_go_on(
    tmp_path: Path, mmdemo_env: dict[str, str]
) -> None:
    env = fake_sky(tmp_path, mmdemo_env, together="3")  # two launches wait at the barrier for a third
    runs = tmp_path / "runs"
    started = tmp_path / "calls"
    code = signal_mmdemo(
        ["matrix", A, "--gpu", "H100,MI300X", "--launch", "--runs-dir", str(runs)],
        env,
        tmp_path / "out.txt",
        until=lambda: len(list(started.glob("*.started"))) == 2,
        sig=signal.SIGINT,
    )
    assert code == 130, (tmp_path / "out.txt").read_text()
    record = record_mod.load(next(runs.glob("*-matrix")) / "matrix.json")
    assert {c.status for c in record.cells} == {"interrupted"}
    reasons = {c.gpu_class: c.reason for c in record.cells}
    assert reasons["H100"] == (
        "launcher stopped by SIGINT; the managed job goes on: `sky jobs cancel -n mmdemo-matrix-h100` "
        "(see sky/H100.log)"
    )
    assert not calls(tmp_path)  # neither fake job got to its end: both launchers were stopped


def test_skypilot_options_without_skypilot_are_refused_not_ignored(mmdemo_env: dict[str, str]) -> None:
    done = mmdemo("matrix", A, "--pipeline", env=mmdemo_env)
    assert done.returncode == 2
    assert "--pipeline and --bucket go with --emit skypilot or --launch (SkyPilot)" in done.stderr
