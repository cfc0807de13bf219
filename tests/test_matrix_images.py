"""vLLM versions as a matrix axis: cells once per image, the versions side by side, SkyPilot in the image."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from orchestrator.core.options import Options
from orchestrator.matrix import record as record_mod
from orchestrator.matrix import skypilot
from orchestrator.matrix.cells import Cell, with_images
from orchestrator.matrix.record import CellRecord, MatrixRecord
from tests.conftest import mmdemo

PROFILES = Path(__file__).parent / "profiles" / "matrix"
A = str(PROFILES / "fake-a.yaml")
OLD, NEW = "vllm/vllm-openai:v0.10.2", "vllm/vllm-openai:v0.11.0"


def cell(image: str, version: str, statuses: dict[str, str], ready: float, ttft: float) -> CellRecord:
    passed = sum(s == "passed" for s in statuses.values())
    return CellRecord(
        profile="phi",
        gpu_class="H100",
        status="passed" if passed == len(statuses) else "failed",
        exit_code=0 if passed == len(statuses) else 1,
        image=image,
        vllm_version=version,
        demo_statuses=statuses,
        demos_passed=passed,
        demos_total=len(statuses),
        time_to_ready_s=ready,
        median_ttft_s=ttft,
    )


def matrix(*cells: CellRecord, images: tuple[str, ...] = (OLD, NEW)) -> MatrixRecord:
    return MatrixRecord(
        mmdemo_version="0",
        engine="local",
        status="failed",
        exit_code=1,
        profiles=["phi"],
        gpu_classes=["H100"],
        images=list(images),
        started_at="t",
        finished_at="t",
        wall_s=1.0,
        cells=list(cells),
    )


def test_each_cell_runs_once_per_image_with_its_own_key_and_directory() -> None:
    cells = with_images([Cell("phi", "phi.yaml", "H100", variant="H100")], [OLD, NEW])
    assert [c.key for c in cells] == [f"phi@H100@{OLD}", f"phi@H100@{NEW}"]
    assert [c.dirname for c in cells] == [
        "phi-H100-vllm-vllm-openai-v0.10.2",
        "phi-H100-vllm-vllm-openai-v0.11.0",
    ]
    assert with_images(cells[:1], []) == cells[:1]  # no --image: the cells as planned


def test_what_changed_between_two_versions_is_named() -> None:
    old = cell(
        OLD, "0.10.2", {"text-only/text": "passed", "video/url": "passed", "audio/url": "failed"}, 40.0, 0.1
    )
    new = cell(
        NEW, "0.11.0", {"text-only/text": "passed", "video/url": "failed", "audio/url": "passed"}, 45.5, 0.25
    )
    (row,) = record_mod.compare_images(matrix(old, new))
    assert (row.profile, row.gpu) == ("phi", "H100")
    assert row.results == ("failed, 2/3, ready 40.0 s, TTFT 100 ms", "failed, 2/3, ready 45.5 s, TTFT 250 ms")
    assert row.changes == (
        f"{NEW}: vLLM 0.10.2 → 0.11.0; failed now: video/url; passes now: audio/url; ready +5.5 s; TTFT +150 ms",
    )
    same = cell(NEW, "0.10.2", dict(old.demo_statuses), 40.0, 0.1)
    assert record_mod.compare_images(matrix(old, same))[0].changes[-1].endswith("ready +0.0 s; TTFT +0 ms")


def test_matrix_md_and_html_put_the_versions_side_by_side() -> None:
    old = cell(OLD, "0.10.2", {"video/url": "passed"}, 40.0, 0.1)
    new = cell(NEW, "0.11.0", {"video/url": "failed"}, 41.0, 0.1)
    rec = matrix(old, new)
    md = record_mod.to_markdown(rec)
    assert f"- images: {OLD} (vLLM 0.10.2), {NEW} (vLLM 0.11.0)" in md
    assert f"| phi on {OLD} |" in md
    assert f"| phi on {NEW} |" in md
    assert "## vLLM versions side by side" in md
    assert "failed now: video/url" in md.split("## vLLM versions side by side")[1]
    html = record_mod.to_html(rec)
    assert "vLLM versions side by side" in html
    assert "failed now: video/url" in html
    assert html.count(f'<small class="mono">{OLD}</small>') == 1


def test_one_image_has_no_comparison() -> None:
    rec = matrix(cell(OLD, "0.10.2", {"t": "passed"}, 1.0, 0.1), images=(OLD,))
    assert record_mod.compare_images(rec) == []
    assert "side by side" not in record_mod.to_markdown(rec)


# SkyPilot 0.14 imports SQLAlchemy's pre-2.0 API, which warns; that is SkyPilot's, not ours.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_skypilot_runs_each_image_as_its_own_task_without_installing_vllm() -> None:
    import sky

    text = skypilot.emit([A], ["H100"], Options(), bucket=None, images=[OLD, NEW])
    docs = list(yaml.safe_load_all(text))
    # A job group: the two images' tasks run at the same time, like two GPU classes'.
    assert docs[0] == {"name": "mmdemo-matrix", "execution": "parallel", "inter_connection": False}
    tasks = docs[1:]
    assert [t["resources"]["image_id"] for t in tasks] == [f"docker:{OLD}", f"docker:{NEW}"]
    assert [t["name"] for t in tasks] == [
        "mmdemo-matrix-h100-vllm-vllm-openai-v0.10.2",
        "mmdemo-matrix-h100-vllm-vllm-openai-v0.11.0",
    ]
    for config in tasks:
        assert sky.Task.from_yaml_config(copy.deepcopy(config)).name == config["name"]
        assert "vllm" not in config["setup"].replace("mmdemo-venv", "")  # the image's vLLM, none installed
        assert "--runs-dir ~/mmdemo-runs/H100/vllm-vllm-openai-v0" in config["run"]
    (plain,) = yaml.safe_load_all(skypilot.emit([A], ["H100"], Options(), bucket=None))
    assert "image_id" not in plain["resources"]
    assert "'vllm[audio]'" in plain["setup"]


def test_matrix_takes_repeated_images(mmdemo_env: dict[str, str]) -> None:
    done = mmdemo(
        "matrix",
        A,
        "--gpu",
        "H100",
        "--emit",
        "skypilot",
        "--image",
        OLD,
        "--image",
        NEW,
        "--image",
        OLD,
        env=mmdemo_env,
    )
    assert done.returncode == 0, done.stderr
    images = [d["resources"]["image_id"] for d in list(yaml.safe_load_all(done.stdout))[1:]]
    assert images == [f"docker:{OLD}", f"docker:{NEW}"]  # the same image twice is one


def test_report_diff_names_the_image_and_version_of_each_run(
    tmp_path: Path, cache_root: Path, mmdemo_env: dict[str, str]
) -> None:
    from orchestrator.record.report import ContainerRecord, VllmRecord
    from tests.records import passed_run

    base = passed_run(cache_root)
    runs = []
    for name, image, version, digest in (
        ("a", OLD, "0.10.2", "sha256:" + "1" * 64),
        ("b", NEW, "0.11.0", None),
    ):
        demos = base.demos if name == "a" else [d.model_copy(update={"status": "failed"}) for d in base.demos]
        rec = base.model_copy(
            update={
                "vllm": VllmRecord(version=version, path=f"{image} (docker)"),
                "container": ContainerRecord(
                    runtime="docker", image=image, image_id="sha256:beef", digest=digest
                ),
                "demos": demos,
            }
        )
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.json").write_text(rec.to_json())
        runs.append(str(tmp_path / name))
    done = mmdemo("report", "diff", *runs, "--html", str(tmp_path / "diff.html"), env=mmdemo_env)
    assert done.returncode == 1, done.stderr  # demos changed status
    assert f"A: vLLM 0.10.2 in {OLD} (sha256:111111111111)" in done.stdout
    assert f"B: vLLM 0.11.0 in {NEW} (sha256:beef)" in done.stdout
    page = (tmp_path / "diff.html").read_text()
    assert f"vLLM 0.10.2 in {OLD}" in page
    assert f"vLLM 0.11.0 in {NEW}" in page
