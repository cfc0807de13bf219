"""vLLM recipes as a profile source (model/recipe.py, recipemerge.py) and verified hardware out
(`report --recipe-patch`, cli/recipes.py). Every recipe is written here; the model's facts come from the
probe's stand-in (tests/probes/fake_model_facts.py), the server is tests/fake_vllm.py."""

from __future__ import annotations

import functools
import http.server
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.cli.main import main
from orchestrator.core.chattypes import ChatType
from orchestrator.core.options import Options
from orchestrator.gpus.detect import Gpu
from orchestrator.matrix.local import LocalEngine
from orchestrator.matrix.run import run_matrix
from orchestrator.model import recipe as recipes
from orchestrator.model.recipepatch import hardware_patch
from orchestrator.record.report import RunRecord
from tests.conftest import FAKE, FAKE_PROBE
from tests.fake_hub import FakeHub, FakeRepo

MODEL = "acme/vl-2b"
SMALL = "acme/vl-2b-fp8"

# A recipe in the format of vllm-project/recipes: every kind of key mmdemo applies, and a guide whose
# serve line (with a flag no vLLM has) must change nothing.
RECIPE = """\
meta:
  title: "VL 2B"
  tasks:
    - multimodal
    - text
  hardware:
    h200: verified
model:
  model_id: "acme/vl-2b"
  min_vllm_version: "0.10.0"
  architecture: dense
  base_args:
    - "--max-model-len"
    - "8192"
    - "--enable-prefix-caching"
  base_env:
    RECIPE_BASE: "1"
features:
  tool_calling:
    description: "tools"
    args: ["--enable-auto-tool-choice", "--tool-call-parser", "hermes"]
  spec_decoding:
    args: ["--speculative-config", '{"num_speculative_tokens":2}']
opt_in_features:
  - spec_decoding
variants:
  default:
    precision: bf16
    vram_minimum_gb: 40
    description: "full precision"
  fp8:
    model_id: "acme/vl-2b-fp8"
    precision: fp8
    vram_minimum_gb: 16
    extra_args: ["--kv-cache-dtype", "fp8"]
compatible_strategies: [single_node_tp]
hardware_overrides:
  hopper:
    extra_env:
      HOPPER_ONLY: "1"
  ada:
    extra_args: ["--max-num-seqs", "4"]
strategy_overrides:
  single_node_tp:
    tp: 1
  pd_cluster:
    prefill: {tp: 8}
guide: |
  vllm serve acme/vl-2b --no-such-flag-in-any-vllm
"""


@pytest.fixture
def stand_in_probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, session_hub: FakeHub) -> Iterator[Path]:
    """The model probe's stand-in, an isolated cache, the recipe's models on the loopback hub; the fake
    `vllm serve` answers the version (0.32.0)."""
    from orchestrator.launch.checks import VllmInfo
    from orchestrator.vllm import probe

    monkeypatch.setattr(probe, "SCRIPT", FAKE_PROBE)
    info = VllmInfo(str(FAKE), "0.32.0", python=sys.executable)  # the probe's stand-in runs in this Python
    monkeypatch.setattr("orchestrator.vllm.runner.host", lambda *args, **kwargs: info)
    monkeypatch.setattr("orchestrator.launch.checks.vllm_version", lambda *args, **kwargs: info)
    monkeypatch.setenv("MMDEMO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("FAKE_PROBE_RUNS", str(tmp_path / "probe-runs.txt"))
    config = b'{"architectures": ["LlavaForConditionalGeneration"]}'
    for repo in (MODEL, SMALL):
        session_hub.repos[repo] = FakeRepo(
            repo, {"config.json": config}, sizes={"model.safetensors": 4_000_000_000}
        )
    try:
        yield tmp_path
    finally:
        for repo in (MODEL, SMALL):
            session_hub.repos.pop(repo, None)


def write(tmp_path: Path, text: str, name: str = "acme/vl-2b") -> Path:
    path = tmp_path / "recipes" / "models" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(
        [*argv, "--vllm-bin", str(FAKE)]
        if argv[0] in ("plan", "run", "validate", "init", "recipes")
        else list(argv)
    )
    out, err = capsys.readouterr()
    return code, out, err


def serve_line(out: str) -> str:
    return next(line for line in out.splitlines() if " serve " in line and not line.startswith("#"))


# -- a recipe -> the `vllm serve` line ------------------------------------------------------------------


def test_plan_of_a_recipe_applies_base_args_env_features_variant_and_the_platform(
    stand_in_probe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = write(tmp_path, RECIPE)
    code, out, err = cli(capsys, "plan", str(recipe), "--gpu", "H100")
    assert code == 0, err
    line = serve_line(out)
    assert f" serve {MODEL} " in line  # default: 40 GB fits one H100
    assert "--max-model-len 8192" in line  # a named setting: the recipe's, not the derived context
    assert "--enable-prefix-caching" in line
    assert "--enable-auto-tool-choice --tool-call-parser hermes" in line  # not opt-in: on
    assert "--speculative-config" not in line  # opt-in: off unless asked
    assert "--kv-cache-dtype" not in line  # fp8's
    assert "--max-num-seqs" not in line  # ada's
    assert "no-such-flag" not in out  # the guide is text
    assert "export RECIPE_BASE=1" in out
    assert "export HOPPER_ONLY=1" in out
    # Each value says where it came from.
    assert "# serve.max_model_len = 8192  # from recipe: model.base_args" in out
    assert f"({recipe}:12)" in out  # the recipe line of base_args
    assert "# serve.limit_mm_per_prompt = " in out
    assert "# derived: the most of each modality one chosen demo sends" in out
    assert "variant default (40 GB needed, 1 x H100 has 86 GB)" in out

    code, out, err = cli(capsys, "plan", str(recipe), "--gpu", "L4")  # 24 GB: fp8 is the one that fits
    assert code == 0, err
    line = serve_line(out)
    assert f" serve {SMALL} " in line
    assert "--kv-cache-dtype fp8" in line
    assert "--max-num-seqs 4" in line  # L4 is ada
    assert "HOPPER_ONLY" not in out

    code, out, err = cli(
        capsys, "plan", str(recipe), "--gpu", "H100", "--variant", "fp8", "--feature", "spec_decoding",
        "--no-feature", "tool_calling",
    )  # fmt: skip
    assert code == 0, err
    line = serve_line(out)
    assert f" serve {SMALL} " in line
    assert """--speculative-config '{"num_speculative_tokens":2}'""" in line
    assert "--enable-auto-tool-choice" not in line


def test_a_recipe_file_and_a_directory_of_recipes_validate(
    stand_in_probe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = write(tmp_path, RECIPE)
    write(tmp_path, RECIPE.replace("acme/vl-2b-fp8", "acme/vl-2b"), name="acme/other")
    code, out, err = cli(capsys, "validate", str(tmp_path / "recipes"))
    assert code == 0, err
    assert f"ok    {recipe}: recipe acme/vl-2b" in out
    assert "ok    " + str(tmp_path / "recipes" / "models" / "acme" / "other.yaml") in out


def test_init_writes_the_recipes_profile_with_each_values_source(
    stand_in_probe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from orchestrator.profile.schema import parse_profile_text

    recipe = write(tmp_path, RECIPE)
    code, out, err = cli(
        capsys, "init", "--recipe", str(recipe), "--gpu", "L4", "--no-feature", "tool_calling"
    )
    assert code == 0, err
    assert out.startswith("# Made by mmdemo from the vLLM recipe acme/vl-2b (variant fp8)")
    assert "max_model_len: 8192  # from recipe: model.base_args" in out
    assert "limit_mm_per_prompt: {image: 2}  # derived: " in out
    profile = parse_profile_text(out, "init.yaml", default_name="vl-2b-fp8")
    assert profile.model == SMALL
    assert profile.recipe is not None
    assert profile.recipe.features == ()
    assert profile.resolve("L4").serve.extra_args == (
        "--enable-prefix-caching",
        "--kv-cache-dtype",
        "fp8",
        "--max-num-seqs",
        "4",
    )


# -- refusals, one line each ---------------------------------------------------------------------------

REFUSALS = [
    pytest.param(
        RECIPE.replace("    precision: fp8\n", "    precision: fp8\n    quantum_mode: on\n"), (), 2,
        "unknown recipe key 'variants.fp8.quantum_mode'", id="unknown-key",
    ),
    pytest.param(
        RECIPE.replace("    vram_minimum_gb: 16\n", "    vram_minimum_gb: 16\n    extra_argz: [--x]\n"), (), 2,
        "unknown recipe key 'variants.fp8.extra_argz' (did you mean 'extra_args'?)", id="misspelt-key",
    ),
    pytest.param(
        RECIPE + "omni:\n  stages: 2\n", (), 2,
        "recipe key 'omni' changes how vLLM serves and mmdemo does not apply it", id="serving-key-not-applied",
    ),
    pytest.param(
        RECIPE.replace('min_vllm_version: "0.10.0"', 'min_vllm_version: "0.99.0"'), (), 3,
        "the recipe needs vLLM >= 0.99.0, and ", id="min-vllm-version",
    ),
    pytest.param(RECIPE, ("--variant", "default", "--gpu", "L4"), 3,
                 "recipe variant 'default' needs 40 GB (" , id="variant-too-big"),
    pytest.param(RECIPE, ("--gpu", "T4", "--variant", "fp9"), 2, "no variant 'fp9' (did you mean 'fp8'?)",
                 id="unknown-variant"),
    pytest.param(RECIPE.replace('"--enable-prefix-caching"', '"--port"\n    - "9000"'), (), 2,
                 "model.base_args passes --port: the port comes from", id="owned-flag"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "extra", "code", "message"), REFUSALS)
def test_refusals_name_the_recipe_line(
    stand_in_probe: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    *,
    text: str,
    extra: tuple[str, ...],
    code: int,
    message: str,
) -> None:
    recipe = write(tmp_path, text)
    got, out, err = cli(capsys, "plan", str(recipe), *(extra or ("--gpu", "H100")))
    assert got == code, out + err
    assert message in err
    error_lines = [line for line in err.splitlines() if line.startswith("error")]
    assert len(error_lines) == 1, err
    if code == 2 and "key" in message:
        assert f"{recipe}:" in error_lines[0]  # the file and its line


def test_no_variant_fits_the_gpu(
    stand_in_probe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = write(tmp_path, RECIPE)
    code, _, err = cli(
        capsys, "plan", str(recipe), "--gpu", "T4"
    )  # 16 GB: fp8's 16 fits, default's 40 does not
    assert code == 0, err
    code, _, err = cli(
        capsys,
        "plan",
        str(write(tmp_path, RECIPE.replace("vram_minimum_gb: 16", "vram_minimum_gb: 20"))),
        "--gpu",
        "T4",
    )
    assert code == 3
    assert "no variant fits: 1 x T4 has 16 GB; the variants need default 40 GB, fp8 20 GB" in err


def test_recipe_by_name_is_fetched_from_the_raw_files_and_refused_offline(
    stand_in_probe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    served = tmp_path / "mirror" / "acme"
    served.mkdir(parents=True)
    (served / "vl-2b.yaml").write_text(RECIPE)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "mirror"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("MMDEMO_RECIPES_URL", f"http://127.0.0.1:{server.server_address[1]}")
        code, out, err = cli(capsys, "plan", "recipe:acme/vl-2b", "--gpu", "H100")
        assert code == 0, err
        assert "--enable-prefix-caching" in serve_line(out)
        assert (tmp_path / "cache" / "recipes" / "acme" / "vl-2b.yaml").read_text() == RECIPE
        code, _, err = cli(capsys, "plan", "recipe:acme/nothing", "--gpu", "H100")
        assert code == 3
        assert "recipe:acme/nothing: http://127.0.0.1:" in err
        assert "answered 404" in err
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    with pytest.raises(Exception, match=r"recipe:acme/vl-2b: offline, and a recipe is fetched from http"):
        recipes.locate("recipe:acme/vl-2b", offline=True)


# -- verified out -------------------------------------------------------------------------------------

H100_MIB, L4_MIB = 81559, 23034


def two_classes() -> list[Gpu]:
    return [Gpu(0, "NVIDIA H100 80GB HBM3", H100_MIB, H100_MIB - 500, "999.1"),
            Gpu(1, "NVIDIA L4", L4_MIB, L4_MIB - 500, "999.1")]  # fmt: skip


def matrix_options(tmp_path: Path) -> Options:
    return Options(
        vllm_bin=str(FAKE), offline=True, grace_s=2.0, runs_dir=tmp_path / "runs", timeout_s=20.0,
        only=(ChatType.TEXT,), worst_case=False, budget=False, prefetch=False,
    )  # fmt: skip


# The fake answers what a model with real weights would: the expected word of the text demo.
REAL = RECIPE.replace(
    '    RECIPE_BASE: "1"\n', '    RECIPE_BASE: "1"\n    FAKE_VLLM_ANSWER: "Paris, of course."\n'
)


def test_a_passing_matrix_of_two_gpu_classes_marks_both_verified(
    stand_in_probe: Path, tmp_path: Path, mmdemo_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = write(tmp_path, REAL.replace("vram_minimum_gb: 40", "vram_minimum_gb: 16"))
    outcome = run_matrix([str(recipe)], ["H100", "L4"], matrix_options(tmp_path), LocalEngine(two_classes))
    assert outcome.exit_code == 0, outcome.record.model_dump_json(indent=1)
    code, out, err = cli(capsys, "report", "--recipe-patch", str(outcome.matrix_dir))
    assert code == 0, err
    assert out.startswith("--- a/models/acme/vl-2b.yaml\n+++ b/models/acme/vl-2b.yaml\n")
    added = [line for line in out.splitlines() if line.startswith("+") and not line.startswith("+++")]
    assert [line.split("#")[0].rstrip() for line in added] == ["+    h100: verified", "+    l4: verified"]
    assert all("vLLM 0.32.0" in line and "report.json" in line for line in added)
    assert "h200: verified" in out  # the block as it was, kept
    cell = next(outcome.matrix_dir.glob("*H100*"))
    assert str(cell / "report.json") in out  # the run record's link
    record = RunRecord.model_validate_json((cell / "report.json").read_text())
    assert record.recipe is not None
    assert record.recipe.slug == "acme/vl-2b"
    assert record.recipe.variant == "default"


def test_a_failing_cell_marks_nothing(
    stand_in_probe: Path, tmp_path: Path, mmdemo_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    text = REAL.replace("vram_minimum_gb: 40", "vram_minimum_gb: 16").replace(
        '      HOPPER_ONLY: "1"\n', '      HOPPER_ONLY: "1"\n      FAKE_VLLM_CHAT_STATUS: "500"\n'
    )  # every answer on a Hopper GPU fails
    recipe = write(tmp_path, text)
    outcome = run_matrix([str(recipe)], ["H100"], matrix_options(tmp_path), LocalEngine(two_classes))
    assert outcome.record.cells[0].status == "failed"
    code, out, err = cli(capsys, "report", "--recipe-patch", str(outcome.matrix_dir))
    assert code == 1
    assert out == ""
    assert "H100: not verified: the run failed" in err
    assert "nothing to mark verified" in err


TINY = """\
meta:
  tasks: [multimodal]
model:
  model_id: "tiny"
  min_vllm_version: "0.10.0"
  base_args: []
  base_env: {}
variants:
  default:
    precision: fp32
    vram_minimum_gb: 0.1
guide: "a model directory beside the recipe"
"""


def test_a_tiny_model_run_marks_nothing(
    stand_in_probe: Path, tmp_path: Path, mmdemo_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "recipes" / "models" / "acme" / "tiny"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"w" * 4096)
    (model / "mmdemo-model.json").write_text("{}")  # mmdemo's marker: random weights
    recipe = write(tmp_path, TINY)
    code, out, err = cli(
        capsys, "run", str(recipe), "--gpu", "cpu", "--offline", "--no-budget", "--no-worst-case",
        "--only", "text-only", "--runs-dir", str(tmp_path / "runs"), "--timeout", "20", "--grace", "2",
    )  # fmt: skip
    assert code == 0, out + err
    run = next(p for p in (tmp_path / "runs").iterdir() if p.is_dir() and not p.is_symlink())
    code, out, err = cli(capsys, "report", "--recipe-patch", str(run))
    assert code == 1
    assert out == ""
    assert "cpu: not verified: a tiny model with random weights" in err


# -- the patch itself and the listing -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        pytest.param("meta:\n  title: x\n  hardware:\n    h200: verified\n", "    h100: verified  # run A\n", id="block"),
        pytest.param("meta:\n  title: x\n  hardware: {}\n", "  hardware:\n+    h100: verified  # run A\n", id="empty"),
        pytest.param("meta:\n  title: x\n", "  hardware:\n+    h100: verified  # run A\n", id="none"),
        pytest.param("meta:\n  hardware:\n    h100: unsupported\n", "-    h100: unsupported\n+    h100: verified  # run A\n", id="upgrade"),
    ],
)  # fmt: skip
def test_the_patch_sets_the_block_as_the_runs_found_it(tmp_path: Path, block: str, expected: str) -> None:
    path = write(tmp_path, block + 'model:\n  model_id: "acme/vl-2b"\n')
    patch = hardware_patch(recipes.load(path), {"h100": "run A"})
    assert expected in patch
    assert patch.startswith("--- a/models/acme/vl-2b.yaml")
    assert hardware_patch(recipes.load(path), {}) == ""


def test_recipes_lists_what_this_machine_can_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("orchestrator.gpus.detect.detect", lambda: [two_classes()[1]])  # one L4
    monkeypatch.setenv("COLUMNS", "300")
    write(tmp_path, RECIPE)
    write(tmp_path, RECIPE.replace('"0.10.0"', '"0.99.0"'), name="acme/newer")
    write(tmp_path, RECIPE.replace("vram_minimum_gb: 16", "vram_minimum_gb: 30"), name="big/model")
    (tmp_path / "recipes" / "README.yaml").write_text("title: not a recipe\n")
    code, out, err = cli(capsys, "recipes", str(tmp_path / "recipes"))
    assert code == 0, err
    rows = {
        line.split("│")[1].strip(): line for line in out.splitlines() if "acme/" in line or "big/" in line
    }
    assert set(rows) == {"acme/vl-2b", "acme/newer", "big/model"}
    assert "yes: variant fp8" in rows["acme/vl-2b"]
    assert "multimodal, text" in rows["acme/vl-2b"]
    assert "no: needs vLLM >= 0.99.0, this is 0.32.0" in rows["acme/newer"]
    assert "no: no variant fits" in rows["big/model"]
