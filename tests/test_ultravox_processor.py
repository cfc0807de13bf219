"""The project-written Ultravox processor, without a server (marker `vllm`: it needs the numpy and
transformers of the vLLM environment, run as its Python).

It gives vLLM what vllm/model_executor/models/ultravox.py reads, with token counts that fit vLLM's
encoder output. (Builder determinism is tested for every seed in test_vllm_seeds.py.)
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, require_real_vllm

pytestmark = pytest.mark.vllm

TINYMODELS = REPO / "orchestrator" / "tinymodels"


@pytest.fixture(scope="module")
def python() -> Path:
    """The Python next to the vLLM command (it has torch and transformers)."""
    return Path(require_real_vllm()).parent / "python"


def run_python(python: Path, *args: str, timeout: float = 300) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    done = subprocess.run(
        [str(python), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=TINYMODELS,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


PROBE = """
import json, numpy as np, ultravox
processor = ultravox.build_processor(ultravox.build_tokenizer(0))
rate = processor.audio_processor.sampling_rate
audios = [np.zeros(3 * rate, dtype=np.float32), np.random.default_rng(0).standard_normal(40 * rate).astype(np.float32)]
out = processor(
    text="Hi <|audio|> and <|audio|>?", audios=audios, sampling_rate=rate, include_audio_num_chunks=True
)
print(json.dumps({
    "extractor": type(processor.audio_processor).__name__,
    "mel_bins": processor.audio_processor.feature_size,
    "config_mel_bins": ultravox.build_config(600)["audio_config"]["num_mel_bins"],
    "shape": list(out["audio_values"].shape),
    "lens": out["audio_lens"].tolist(),
    "token_len": out["audio_token_len"].tolist(),
    "num_chunks": out["audio_num_chunks"].tolist(),
    "placeholder_id": processor.tokenizer.convert_tokens_to_ids("<|audio|>"),
    "config_audio_token_index": ultravox.build_config(600)["audio_token_index"],
    "input_ids": out["input_ids"][0].tolist(),
    "rate": rate,
}))
"""


def test_the_ultravox_processor_gives_vllm_what_it_reads(python: Path) -> None:
    got = json.loads(run_python(python, "-c", PROBE).strip().splitlines()[-1])
    assert got["extractor"] == "WhisperFeatureExtractor"  # vLLM's get_feature_extractor insists
    assert got["mel_bins"] == got["config_mel_bins"]
    assert got["placeholder_id"] == got["config_audio_token_index"]
    # 3 s is one chunk; 40 s is a 30 s chunk and a 10 s one (Whisper's context is 30 s)
    assert got["num_chunks"] == [1, 2]
    frames_per_s = 100  # 10 ms mel hop
    assert got["lens"] == [3 * frames_per_s, 30 * frames_per_s, 10 * frames_per_s]
    chunks, mel_bins, width = got["shape"]
    assert (chunks, mel_bins, width) == (3, got["mel_bins"], max(got["lens"]))
    # vLLM's encoder: stride-2 conv, then stack_factor (8) frames per LM token; its output for the
    # padded batch must cover every chunk's token count
    for frames, tokens in zip(got["lens"], got["token_len"], strict=True):
        assert tokens == math.ceil(((frames - 1) // 2 + 1) / 8)
        assert tokens <= math.ceil(((width - 1) // 2 + 1) / 8)
    # the text: each placeholder expanded to its audio's tokens, nothing else
    audio_tokens = got["input_ids"].count(got["placeholder_id"])
    assert audio_tokens == sum(got["token_len"])
