"""A vLLM recipe served for real: the tiny model as the recipe's `model_id`, on the real CPU vLLM.

The recipe (written here, in the format of vllm-project/recipes) says how to serve; what it does not
say (the demos, their limits and expected words) comes from the model's derivation, as for a bare
model. A tiny model's run is never marked verified.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import mmdemo

pytestmark = pytest.mark.vllm


def recipe_for(model: Path) -> str:
    return f"""\
meta:
  title: "tiny omni"
  tasks: [multimodal]
  hardware:
    h100: verified
model:
  model_id: "{model}"
  min_vllm_version: "0.10.0"
  base_args: ["--dtype", "float32", "--enforce-eager", "--kv-cache-memory-bytes", "256M"]
  base_env:
    VLLM_ENABLE_V1_MULTIPROCESSING: "0"
variants:
  default:
    precision: fp32
    vram_minimum_gb: 0
guide: |
  vllm serve {model} --a-flag-no-vllm-has
"""


@pytest.mark.timeout(900)
def test_a_recipe_serves_the_tiny_model_and_is_never_marked_verified(
    tmp_path: Path, mmdemo_env: dict[str, str], vllm_bin: str
) -> None:
    built = mmdemo("models", "build", "tiny-omni", "--vllm-bin", vllm_bin, env=mmdemo_env, timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr
    model = Path(mmdemo_env["MMDEMO_CACHE_DIR"]) / "models" / "tiny-omni"
    recipe = tmp_path / "tiny-omni.yaml"
    recipe.write_text(recipe_for(model))
    runs = tmp_path / "runs"
    done = mmdemo(
        "run", str(recipe), "--gpu", "cpu", "--offline", "--media", "known", "--vllm-bin", vllm_bin, "--only", "text-only,audio",
        "--no-worst-case", "--grace", "15", "--runs-dir", str(runs), env=mmdemo_env, timeout=900,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    report = json.loads(next(runs.glob("*/report.json")).read_text())
    assert report["recipe"]["model_id"] == str(model)
    argv = report["server"]["argv"]
    assert argv[argv.index("--kv-cache-memory-bytes") + 1] == "256M"  # the recipe's base args
    assert "--a-flag-no-vllm-has" not in argv  # the guide is prose
    assert report["server"]["env"].get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0"  # the recipe's base env
    # the demos came from the derivation; the trained tiny-omni names each known answer
    assert report["summary"]["understood"] == report["summary"]["total"] > 0, out
    assert report["teardown"]["remaining"] == 0

    patch = mmdemo("report", "--recipe-patch", str(next(runs.glob("*"))), env=mmdemo_env)
    assert patch.returncode == 1, patch.stdout + patch.stderr  # nothing to mark: a tiny model on a CPU
    assert "verified" not in patch.stdout


@pytest.mark.timeout(900)
def test_recipe_args_vllms_parser_rejects_are_refused_by_validate(
    tmp_path: Path, mmdemo_env: dict[str, str], vllm_bin: str
) -> None:
    built = mmdemo("models", "build", "tiny-omni", "--vllm-bin", vllm_bin, env=mmdemo_env, timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr
    model = Path(mmdemo_env["MMDEMO_CACHE_DIR"]) / "models" / "tiny-omni"
    recipe = tmp_path / "bogus.yaml"
    recipe.write_text(recipe_for(model).replace('"256M"]', '"256M", "--no-such-flag-in-vllm"]'))
    done = mmdemo(
        "validate", "--against-vllm", "--vllm-bin", vllm_bin, str(recipe), env=mmdemo_env, timeout=600
    )
    out = done.stdout + done.stderr
    assert done.returncode == 2, out
    refused = [
        line for line in out.splitlines() if line.startswith("error") and "--no-such-flag-in-vllm" in line
    ]
    assert refused, out
