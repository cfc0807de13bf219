"""`mmdemo matrix --emit skypilot`: validated offline with SkyPilot's own loaders; `--launch` with a fake `sky`."""

from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path

import pytest
import yaml

from orchestrator.errors import UsageError
from orchestrator.matrix import skypilot
from orchestrator.options import Options
from tests.conftest import mmdemo

PROFILES = Path(__file__).parent / "profiles" / "matrix"
A, TP2 = (str(PROFILES / f"{n}.yaml") for n in ("fake-a", "fake-tp2"))
# SkyPilot 0.14 imports SQLAlchemy's pre-2.0 API, which warns; that is SkyPilot's, not ours.
SKYPILOT_WARNINGS = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@SKYPILOT_WARNINGS
def test_one_task_per_gpu_class_that_skypilot_accepts(tmp_path: Path) -> None:
    import sky
    from sky.utils import dag_utils

    text = skypilot.emit(
        [A, TP2], ["H100", "L4", "A100-80GB", "A100-40GB"], Options(offline=True), bucket="mm-results"
    )
    docs = list(yaml.safe_load_all(text))
    assert docs[0] == {"name": "mmdemo-matrix"}  # a pipeline: several classes, several clusters
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
    assert '"mmdemo-gpu:L4\\": $SKYPILOT_NUM_GPUS_PER_NODE' in run
    path = tmp_path / "matrix.sky.yaml"
    path.write_text(text)
    dag = dag_utils.load_chain_dag_from_yaml(str(path))
    assert [t.name for t in dag.tasks] == [
        "mmdemo-matrix-h100",
        "mmdemo-matrix-l4",
        "mmdemo-matrix-a100-80gb",
    ]


@SKYPILOT_WARNINGS
def test_one_class_is_a_single_task() -> None:
    import sky

    text = skypilot.emit([A], ["A100-80GB"], Options(), bucket=None)
    (config,) = yaml.safe_load_all(text)
    assert sky.Task.from_yaml_config(copy.deepcopy(config)).name == "mmdemo-matrix-a100-80gb"
    assert config["resources"]["accelerators"] == "A100-80GB:1"
    assert "file_mounts" not in config
    assert "--runs-dir ~/mmdemo-runs/A100-80GB" in config["run"]


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
    from orchestrator.gpu import GPU_CLASSES

    assert set(skypilot.SKY_ACCELERATORS) == set(GPU_CLASSES)
    assert skypilot.accelerator("A100-40GB") == "A100"  # SkyPilot's plain A100 is the 40 GB card


def test_launch_hands_the_task_to_sky(tmp_path: Path, mmdemo_env: dict[str, str]) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.json"
    fake_sky = bin_dir / "sky"
    fake_sky.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        "task = open(sys.argv[sys.argv.index('--yes') + 1]).read()\n"
        f"json.dump({{'argv': sys.argv[1:], 'task': task}}, open({str(calls)!r}, 'w'))\n"
    )
    fake_sky.chmod(0o755)
    secret = "hf_never_in_the_yaml_123"
    env = {**mmdemo_env, "PATH": f"{bin_dir}{os.pathsep}{mmdemo_env['PATH']}", "HF_TOKEN": secret}
    runs = tmp_path / "runs"
    done = mmdemo(
        "matrix", A, "--gpu", "H100,L4", "--emit", "skypilot", "--launch", "--runs-dir", str(runs), env=env
    )
    assert done.returncode == 0, done.stdout + done.stderr
    seen = json.loads(calls.read_text())
    path = str(runs / "matrix.sky.yaml")
    assert seen["argv"] == ["jobs", "launch", "--yes", path, "--secret", "HF_TOKEN"]
    assert seen["task"] == Path(path).read_text()
    assert secret not in seen["task"]


def test_launch_without_sky_says_how_to_get_it(tmp_path: Path, mmdemo_env: dict[str, str]) -> None:
    env = {**mmdemo_env, "PATH": str(tmp_path)}
    done = mmdemo("matrix", A, "--gpu", "H100", "--launch", "--runs-dir", str(tmp_path / "runs"), env=env)
    assert done.returncode == 3
    assert "the `sky` command was not found" in done.stderr
